//! The seeder role: `seeder.cache_path` served on `seeder.listen` to edges, published in the
//! Redis directory, expired past its retention.

use super::{Role, Shared};
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_seeder::Seeder;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub(crate) struct SeederRole {
    listener: Option<BoundListener>,
    pub(crate) seeder: Arc<Seeder>,
}

impl SeederRole {
    /// Binds `seeder.listen`.
    pub(crate) fn bind(cfg: &edge_config::EdgeConfig) -> anyhow::Result<BoundListener> {
        super::bind_plain(cfg.seeder.listen)
    }

    pub(crate) fn build(shared: &Shared<'_>, listener: BoundListener) -> anyhow::Result<Self> {
        let seeder = crate::delivery::seeder(
            shared.cfg,
            listener.local_addr(),
            shared.origin.clone(),
            shared.redis.as_ref(),
            shared.registry,
        )?;
        Ok(Self {
            listener: Some(listener),
            seeder,
        })
    }
}

#[async_trait::async_trait]
impl Role for SeederRole {
    fn start(&mut self, listeners: &mut Listeners) -> Vec<JoinHandle<()>> {
        if let Some(l) = self.listener.take() {
            listeners.serve("seeder", HttpApp::new(self.seeder.clone()), vec![l]);
        }
        vec![self.seeder.spawn()]
    }

    async fn stop(self: Box<Self>) {
        self.seeder.shutdown().await;
    }
}
