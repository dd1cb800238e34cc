//! One builder per role. Each role binds its own sockets, then is built from what
//! every role shares ([`Shared`]: config, loaded origin, Redis, metrics registry) — everything
//! that can fail happens in these two steps, for every role, before any role serves. Then each
//! is started (its listeners and background tasks) and, after the process's listeners drained,
//! stopped in reverse order. A new role (transcoder) is one more module here and one
//! more entry in [`edge_config::Role`].

pub(crate) mod edge;
pub(crate) mod seeder;
pub(crate) mod signaling;

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

/// Binds the viewer-facing listeners at `plain` and `tls` (TLS ones with the configured or the
/// development certificate, read once), naming the address in an error.
pub(crate) fn bind_viewer(
    cfg: &EdgeConfig,
    plain: &[std::net::SocketAddr],
    tls: &[std::net::SocketAddr],
) -> anyhow::Result<Vec<edge_http::BoundListener>> {
    use anyhow::Context as _;
    let mut bound = Vec::with_capacity(plain.len() + tls.len());
    for addr in plain {
        bound.push(bind_plain(*addr)?);
    }
    if !tls.is_empty() {
        let (cert, key) = crate::secrets::tls_pem(cfg)?;
        for addr in tls {
            let settings = edge_http::tls_settings(&cert, &key)?;
            bound.push(
                edge_http::BoundListener::bind(*addr, Some(settings))
                    .with_context(|| format!("cannot listen on {addr}"))?,
            );
        }
    }
    Ok(bound)
}

/// The addresses of the plain (`tls` false) or TLS listeners among `listeners`.
pub(crate) fn addrs_of(
    listeners: &[edge_http::BoundListener],
    tls: bool,
) -> Vec<std::net::SocketAddr> {
    listeners
        .iter()
        .filter(|l| l.is_tls() == tls)
        .map(edge_http::BoundListener::local_addr)
        .collect()
}
