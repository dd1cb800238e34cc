//! One builder per role. Each role binds its own sockets, then is built from what
//! every role shares ([`Shared`]: config, loaded origin, Redis, metrics registry) — everything
//! that can fail happens in these two steps, for every role, before any role serves. Then each
//! is started (its listeners and background tasks) and, after the process's listeners drained,
//! stopped in reverse order. A new role (signaling, transcoder) is one more module here and one
//! more entry in [`edge_config::Role`].

pub(crate) mod edge;
pub(crate) mod seeder;

use edge_config::EdgeConfig;
use edge_http::Listeners;
use edge_kv::RedisStore;
use edge_origin::{Origin, StoreOrigin};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// What every role's builder reads.
pub(crate) struct Shared<'a> {
    pub(crate) cfg: &'a EdgeConfig,
    pub(crate) registry: &'a prometheus::Registry,
    /// The configured origin (no seeders in front).
    pub(crate) origin: Arc<dyn Origin>,
    pub(crate) store_origin: &'a StoreOrigin,
    pub(crate) redis: Option<Arc<RedisStore>>,
}

/// A role once built.
#[async_trait::async_trait]
pub(crate) trait Role: Send {
    /// Serves its listeners on `listeners` and starts its background tasks (returned, aborted
    /// after [`Role::stop`]).
    fn start(&mut self, listeners: &mut Listeners) -> Vec<JoinHandle<()>>;

    /// Finishes what the role owes once no request is in flight any more (caches written,
    /// events synced, directory entries withdrawn).
    async fn stop(self: Box<Self>);
}

/// Binds a plain listener at `addr`, naming it in the error.
pub(crate) fn bind_plain(addr: std::net::SocketAddr) -> anyhow::Result<edge_http::BoundListener> {
    use anyhow::Context as _;
    edge_http::BoundListener::bind(addr, None).with_context(|| format!("cannot listen on {addr}"))
}
