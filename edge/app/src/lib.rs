//! The composition root of the edge: turns an [`EdgeConfig`] into running listeners.
//!
//! [`Edge::start`] loads and validates everything first (config, policies, modules, certificate)
//! and binds every socket before serving anything, so a bad config never half-starts. The same
//! loading code backs `edge validate` ([`validate`]). Integration tests start a whole edge
//! in-process on port 0 through this crate.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use edge_config::{EdgeConfig, ProcessEnv};
//! let cfg = EdgeConfig::load(None, &ProcessEnv)?;
//! let edge = edge_app::Edge::start(cfg).await?;
//! println!("serving on {:?}", edge.addrs().http);
//! edge.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod delivery;
mod health;
mod policies;
mod roles;
mod secrets;
mod signaling;
mod streaming;

pub use secrets::signing_secret;

use edge_config::{EdgeConfig, Role};
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_origin::Origin;
use edge_policy::Router;
use policies::PolicyControl;
use roles::{edge::EdgeRole, seeder::SeederRole, signaling::SignalingRole};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Where a running edge listens.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// Plain HTTP/1.1 + h2c listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners (HTTP/2 and HTTP/1.1 by ALPN).
    pub https: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The seeder role's listener, when it runs.
    pub seeder: Option<SocketAddr>,
    /// The signaling role's own plain listeners (`signaling.listen`).
    pub signaling_http: Vec<SocketAddr>,
    /// The signaling role's own TLS listeners (`signaling.tls_listen`).
    pub signaling_https: Vec<SocketAddr>,
}

/// A running edge: every role of its config, and the admin listener.
pub struct Edge {
    addrs: Addrs,
    listeners: Listeners,
    ready: Arc<AtomicBool>,
    cfg: EdgeConfig,
    demo_url: Option<String>,
    /// The started roles, in start order (stopped in reverse).
    roles: Vec<Box<dyn roles::Role>>,
    /// The edge role's event spool.
    spool: Option<edge_events::Spool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Every problem found while loading, one per line (file and field first).
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// Everything loaded from configuration, before any socket is bound.
struct Loaded {
    router: Router,
    policies: PolicyControl,
    origin: Arc<dyn Origin>,
    store_origin: edge_origin::StoreOrigin,
    redis: Option<Arc<edge_kv::RedisStore>>,
    secret: String,
    jwt: (String, bool),
}

fn load(cfg: &EdgeConfig, registry: &prometheus::Registry) -> anyhow::Result<Loaded> {
    let redis = delivery::redis(cfg)?;
    let (policies, router, secret, jwt) = load_policies(cfg, registry, redis.clone())?;
    let origin = delivery::origin(cfg)?;
    Ok(Loaded {
        router,
        policies,
        origin: Arc::new(origin.clone()),
        store_origin: origin,
        redis,
        secret,
        jwt,
    })
}

/// The policies file, compiled into a router, the signing secret its placeholders use, and the
/// JWT secret (with whether it was generated).
///
/// `${VAR}` placeholders in the policies file resolve against the process environment
/// captured in `cfg.vars`
/// (`JWT_SECRET_KEY`, `USER_SERVICE_URL`, ...), plus `SIGNED_URL_SECRET` set to the edge's
/// signing secret and `JWT_SECRET_KEY` to a development secret when unset (both generated once
/// into the data directory).
fn load_policies(
    cfg: &EdgeConfig,
    registry: &prometheus::Registry,
    redis: Option<Arc<edge_kv::RedisStore>>,
) -> anyhow::Result<(PolicyControl, Router, String, (String, bool))> {
    let secret = signing_secret(cfg)?;
    let mut vars: HashMap<String, String> = cfg.vars.0.clone();
    vars.insert("SIGNED_URL_SECRET".to_owned(), secret.clone());
    let jwt = secrets::jwt_secret(cfg, &vars)?;
    vars.insert("JWT_SECRET_KEY".to_owned(), jwt.0.clone());
    let (control, router) = PolicyControl::load(cfg, vars, registry, redis)?;
    Ok((control, router, secret, jwt))
}

/// Checks only the policies file and its modules (what `edge validate` still can check when the
/// edge file itself has errors). Returns the number of routes.
pub fn validate_policies(cfg: &EdgeConfig) -> anyhow::Result<usize> {
    let (_, router, _, _) = load_policies(cfg, &prometheus::Registry::new(), None)?;
    Ok(router.routes().len())
}

/// Checks `cfg`, its policies file and every module, as `edge serve` would, without binding or
/// serving anything. Returns a summary line on success.
pub fn validate(cfg: &EdgeConfig) -> anyhow::Result<String> {
    let loaded = load(cfg, &prometheus::Registry::new())?;
    Ok(format!(
        "{}: ok ({} policies, {} routes, origin {})",
        cfg.source.display(),
        loaded.router.deployments().len(),
        loaded.router.routes().len(),
        loaded.origin.describe()
    ))
}

/// A signed URL path (with query) for `path`, valid for `ttl_secs`, covering the directory of
/// `path` (a master playlist's token also covers its variants and segments).
pub fn sign_path(cfg: &EdgeConfig, path: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let secret = signing_secret(cfg)?;
    Ok(sign_with(&secret, &cfg.signed_url.param, path, ttl_secs))
}

fn sign_with(secret: &str, param: &str, path: &str, ttl_secs: u64) -> String {
    // The guest compares the scope with the normalised path; sign that same spelling.
    let normalised = edge_contract::normalize(path).unwrap_or_else(|_| path.to_owned());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let grant = edge_urlsig::Grant {
        expires: now + ttl_secs,
        scope: edge_urlsig::directory_scope(&normalised).to_owned(),
        client_addr: None,
    };
    format!(
        "{path}?{param}={}",
        edge_urlsig::Key::new(secret.as_bytes()).sign(&grant)
    )
}

impl Edge {
    /// Loads everything, binds every listener of every role, builds the roles, then serves on
    /// the current tokio runtime.
    pub async fn start(cfg: EdgeConfig) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let loaded = load(&cfg, &registry)?;
        // Every socket first: a bad address fails before anything is built or serves.
        let admin_socket = roles::bind_plain(cfg.server.admin_listen)?;
        let edge_sockets = cfg
            .runs(Role::Edge)
            .then(|| EdgeRole::bind(&cfg))
            .transpose()?;
        let seeder_socket = cfg
            .runs(Role::Seeder)
            .then(|| SeederRole::bind(&cfg))
            .transpose()?;
        let signaling_sockets = cfg
            .runs(Role::Signaling)
            .then(|| SignalingRole::bind(&cfg))
            .transpose()?;
        let viewer = match (&edge_sockets, &signaling_sockets) {
            (Some(e), _) => (e.http.clone(), e.https.clone()),
            (None, Some(s)) => s.viewer.clone(),
            (None, None) => Default::default(),
        };
        let own = signaling_sockets
            .as_ref()
            .map(|s| s.own.clone())
            .unwrap_or_default();
        let addrs = Addrs {
            http: viewer.0,
            https: viewer.1,
            admin: admin_socket.local_addr(),
            seeder: seeder_socket.as_ref().map(BoundListener::local_addr),
            signaling_http: own.0,
            signaling_https: own.1,
        };

        // Then every role is built: everything that can fail comes before anything serves.
        let shared = roles::Shared {
            cfg: &cfg,
            registry: &registry,
            origin: loaded.origin.clone(),
            store_origin: &loaded.store_origin,
            redis: loaded.redis.clone(),
        };
        // The seeder first: it starts nothing while built, the edge role's event spool does.
        let seeder = seeder_socket
            .map(|s| SeederRole::build(&shared, s))
            .transpose()?;
        let control = Arc::new(loaded.policies);
        let policies = roles::edge::Policies {
            router: loaded.router,
            control: control.clone(),
            secret: loaded.secret.clone(),
            jwt: loaded.jwt,
        };
        let mut signaling = signaling_sockets
            .map(|s| SignalingRole::build(&shared, s))
            .transpose()?;
        // The viewer-facing pipeline is the edge role's when it runs (the signaling endpoints
        // mounted on it), else the signaling role's own.
        let edge = match edge_sockets {
            Some(sockets) => {
                let shared_signaling = signaling.as_mut().map(SignalingRole::share);
                let edge = EdgeRole::build(&shared, sockets, policies, shared_signaling).await?;
                if let Some(s) = &mut signaling {
                    s.attach(&cfg, edge.pipeline.clone(), edge.streaming.analytics(&cfg))?;
                }
                Some(edge)
            }
            None => {
                if let Some(s) = &mut signaling {
                    s.alone(&shared, policies).await?;
                }
                None
            }
        };

        let ready = Arc::new(AtomicBool::new(false));
        let admin = admin::Admin {
            registry: registry.clone(),
            ready: ready.clone(),
            policies: control,
            pipeline: edge.as_ref().map(|e| e.pipeline.clone()),
            seeder: seeder.as_ref().map(|s| s.seeder.clone()),
            routing: edge.as_ref().and_then(|e| e.routing.clone()),
            token: cfg.server.admin_token.clone(),
            roles: cfg.roles.iter().map(Role::name).collect(),
            started: std::time::Instant::now(),
            health: match (&edge, signaling.as_ref().and_then(|s| s.health.clone())) {
                (Some(e), _) => e.health.clone(),
                (None, Some(alone)) => alone,
                (None, None) => Arc::new(health::Monitor::new(
                    Some(loaded.origin.clone()),
                    loaded.redis.clone(),
                    None,
                    None,
                    None,
                )),
            },
        };
        let spool = edge.as_ref().map(|e| e.streaming.spool.clone());
        let demo_url = edge
            .as_ref()
            .and_then(|_| demo_url(&cfg, &addrs, &loaded.secret));

        let mut started: Vec<Box<dyn roles::Role>> = Vec::new();
        if let Some(e) = edge {
            started.push(Box::new(e));
        }
        if let Some(s) = seeder {
            started.push(Box::new(s));
        }
        if let Some(s) = signaling {
            started.push(Box::new(s));
        }
        let mut listeners = Listeners::new(
            limits(&cfg.server),
            edge_http::ConnectionMetrics::new(&registry)?,
        );
        let mut tasks = Vec::new();
        for role in &mut started {
            tasks.extend(role.start(&mut listeners));
        }
        listeners.serve("admin", HttpApp::new(Arc::new(admin)), vec![admin_socket]);
        ready.store(true, Ordering::SeqCst);
        tracing::info!(roles = %cfg.roles, "started");
        Ok(Self {
            addrs,
            listeners,
            ready,
            cfg,
            demo_url,
            roles: started,
            spool,
            tasks,
        })
    }

    /// Where this edge listens.
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// A ready-to-play signed URL of the configured demo stream, if any.
    pub fn demo_url(&self) -> Option<&str> {
        self.demo_url.as_deref()
    }

    /// Waits until every event queued so far (analytics included) is in the spool and synced.
    pub async fn flush_events(&self) {
        if let Some(s) = &self.spool
            && let Err(e) = s.flush().await
        {
            tracing::error!(error = %e, "cannot sync the event spool");
        }
    }

    /// Drains: readiness turns false, listeners stop accepting, in-flight requests finish (up to
    /// `server.drain_timeout`); then each role finishes what it owes (in reverse start order).
    /// Returns how many requests were cut off (0 after a clean drain).
    pub async fn shutdown(self) -> usize {
        self.ready.store(false, Ordering::SeqCst);
        let cut = self.listeners.drain(self.cfg.server.drain_timeout).await;
        for role in self.roles.into_iter().rev() {
            role.stop().await;
        }
        for task in self.tasks {
            task.abort();
        }
        cut
    }
}

/// The connection limits of `[server]`.
fn limits(server: &edge_config::ServerConfig) -> edge_http::Limits {
    edge_http::Limits {
        header_timeout: server.header_timeout,
        keepalive_timeout: server.keepalive_timeout,
        body_timeout: server.body_timeout,
        send_timeout: server.send_timeout,
        max_connections: server.max_connections,
        max_connections_per_client: server.max_connections_per_client,
        max_header_bytes: usize::try_from(server.max_header_bytes.as_u64()).unwrap_or(usize::MAX),
    }
}

/// A ready-to-play signed URL of `server.demo_stream` on this edge's first listener (or its
/// public URL).
fn demo_url(cfg: &EdgeConfig, addrs: &Addrs, secret: &str) -> Option<String> {
    if cfg.server.demo_stream.is_empty() {
        return None;
    }
    let base = match (
        &cfg.server.public_url,
        addrs.http.first(),
        addrs.https.first(),
    ) {
        (Some(url), _, _) => url.clone(),
        (None, Some(a), _) => format!("http://{a}"),
        (None, None, Some(a)) => format!("https://{a}"),
        (None, None, None) => return None,
    };
    Some(format!(
        "{}{}",
        base.trim_end_matches('/'),
        sign_with(
            secret,
            &cfg.signed_url.param,
            &cfg.server.demo_stream,
            cfg.signed_url.expiration
        )
    ))
}

#[cfg(test)]
mod tests {
    /// `[server]`'s connection defaults and `edge_http::Limits::default()` are written twice (the
    /// config crate may not depend on the listener's): they must say the same.
    #[test]
    fn server_defaults_are_the_listener_defaults() {
        assert_eq!(
            super::limits(&edge_config::ServerConfig::default()),
            edge_http::Limits::default()
        );
    }
}
