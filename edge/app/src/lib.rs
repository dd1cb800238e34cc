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
mod policies;
mod secrets;
mod streaming;

pub use secrets::signing_secret;

use anyhow::Context as _;
use edge_config::EdgeConfig;
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_origin::Origin;
use edge_pipeline::{Pipeline, PipelineConfig, PipelineMetrics};
use edge_policy::Router;
use policies::PolicyControl;
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
}

/// A running edge.
pub struct Edge {
    addrs: Addrs,
    listeners: Listeners,
    ready: Arc<AtomicBool>,
    cfg: EdgeConfig,
    demo_url: Option<String>,
    seeder: Option<Arc<edge_seeder::Seeder>>,
    streaming: Option<streaming::Streaming>,
    /// The viewer pipeline, when this process is an edge (its memory tier is spilled to disk at
    /// shutdown).
    pipeline: Option<Arc<Pipeline>>,
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
    /// Loads everything, binds every listener, then serves on the current tokio runtime.
    pub async fn start(cfg: EdgeConfig) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let loaded = load(&cfg, &registry)?;
        let tls_pem = if cfg.server.tls_listen.is_empty() {
            None
        } else {
            Some(secrets::tls_pem(&cfg)?)
        };
        let bind = |addr: &SocketAddr, tls: bool| -> anyhow::Result<BoundListener> {
            let settings = match (&tls_pem, tls) {
                (Some((cert, key)), true) => Some(edge_http::tls_settings(cert, key)?),
                _ => None,
            };
            BoundListener::bind(*addr, settings).with_context(|| format!("cannot listen on {addr}"))
        };
        let plain: Vec<_> = cfg
            .server
            .listen
            .iter()
            .map(|a| bind(a, false))
            .collect::<anyhow::Result<_>>()?;
        let secure: Vec<_> = cfg
            .server
            .tls_listen
            .iter()
            .map(|a| bind(a, true))
            .collect::<anyhow::Result<_>>()?;
        let admin = BoundListener::bind(cfg.server.admin_listen, None)
            .with_context(|| format!("cannot listen on {}", cfg.server.admin_listen))?;
        let seeder_listener = cfg
            .seeder
            .enabled
            .then(|| {
                BoundListener::bind(cfg.seeder.listen, None)
                    .with_context(|| format!("cannot listen on {}", cfg.seeder.listen))
            })
            .transpose()?;
        let addrs = Addrs {
            http: plain.iter().map(BoundListener::local_addr).collect(),
            https: secure.iter().map(BoundListener::local_addr).collect(),
            admin: admin.local_addr(),
            seeder: seeder_listener.as_ref().map(BoundListener::local_addr),
        };

        // Everything that can fail comes before anything starts serving or running.
        let edge_role = !(plain.is_empty() && secure.is_empty());
        let disk = if edge_role {
            delivery::disk(&cfg, &registry).await?
        } else {
            None
        };
        let (upstream, routing) = if edge_role {
            delivery::upstream(
                &cfg,
                loaded.origin.clone(),
                loaded.redis.as_ref(),
                &registry,
            )?
        } else {
            (loaded.origin.clone(), None)
        };
        let seeder = match &seeder_listener {
            Some(l) => Some(delivery::seeder(
                &cfg,
                l.local_addr(),
                loaded.origin.clone(),
                loaded.redis.as_ref(),
                &registry,
            )?),
            None => None,
        };
        let pipeline_cfg = PipelineConfig {
            cache: edge_cache::CacheConfig {
                capacity: usize::try_from(cfg.cache.memory.as_u64()).unwrap_or(usize::MAX),
                max_object: usize::try_from(cfg.cache.slice.as_u64()).unwrap_or(usize::MAX),
                estimated_entries: 16_384,
                stale_if_error: cfg.cache.stale_if_error,
            },
            slice: cfg.cache.slice.as_u64(),
            manifest_ttl: cfg.cache.manifest_ttl,
            segment_ttl: cfg.cache.segment_ttl,
            stale_if_error: cfg.cache.stale_if_error,
            cors_allow_origin: Some(cfg.server.cors_allow_origin.as_str())
                .filter(|o| !o.is_empty())
                .and_then(|o| http::HeaderValue::from_str(o).ok()),
        };
        let streaming = if edge_role {
            Some(
                streaming::Streaming::start(
                    &cfg,
                    &loaded.store_origin,
                    loaded.redis.as_ref(),
                    &loaded.jwt,
                    &loaded.secret,
                    &registry,
                )
                .await?,
            )
        } else {
            None
        };
        let mut pipeline = Pipeline::new(
            loaded.router,
            upstream.clone(),
            disk,
            pipeline_cfg,
            PipelineMetrics::new(&registry)?,
        );
        if let Some(sink) = streaming.as_ref().and_then(|s| s.analytics(&cfg)) {
            pipeline = pipeline.with_events(sink);
        }
        let pipeline = Arc::new(pipeline);
        let deps = Arc::new(streaming::Health {
            origin: upstream.clone(),
            redis: loaded.redis.clone(),
            kafka: streaming.as_ref().and_then(|s| s.kafka.clone()),
            spool: streaming.as_ref().map(|s| s.spool.clone()),
        });
        let mut mounts = streaming
            .as_ref()
            .map(|s| s.mounts.clone())
            .unwrap_or_default();
        mounts.push(edge_pipeline::Mount {
            path: "/health".into(),
            subtree: false,
            open: true,
            service: deps.clone(),
        });
        pipeline.mount(mounts);
        let mut listeners = Listeners::default();
        let mut tasks = Vec::new();
        if let (Some(seeder), Some(l)) = (&seeder, seeder_listener) {
            tasks.push(seeder.spawn());
            listeners.serve("seeder", HttpApp::new(seeder.clone()), vec![l]);
        }
        if let Some(r) = &routing {
            tasks.extend(r.spawn());
        }
        let ready = Arc::new(AtomicBool::new(false));
        let policies = Arc::new(loaded.policies);
        if edge_role {
            policies.attach(pipeline.clone());
            if !cfg.policies.watch_interval.is_zero() {
                tasks.push(policies.clone().watch(cfg.policies.watch_interval));
            }
        }
        let admin_handler = Arc::new(admin::Admin {
            registry,
            ready: ready.clone(),
            origin: upstream,
            policies,
            pipeline: edge_role.then(|| pipeline.clone()),
            seeder: seeder.clone(),
            routing,
            token: cfg.server.admin_token.clone(),
            deps,
        });

        if edge_role {
            listeners.serve(
                "edge",
                HttpApp::new(pipeline.clone()),
                plain.into_iter().chain(secure).collect(),
            );
        }
        listeners.serve("admin", HttpApp::new(admin_handler), vec![admin]);
        ready.store(true, Ordering::SeqCst);

        let demo_url = (edge_role && !cfg.server.demo_stream.is_empty()).then(|| {
            let base = cfg
                .server
                .public_url
                .clone()
                .unwrap_or_else(|| match addrs.http.first() {
                    Some(a) => format!("http://{a}"),
                    None => format!("https://{}", addrs.https[0]),
                });
            format!(
                "{}{}",
                base.trim_end_matches('/'),
                sign_with(
                    &loaded.secret,
                    &cfg.signed_url.param,
                    &cfg.server.demo_stream,
                    cfg.signed_url.expiration
                )
            )
        });
        Ok(Self {
            addrs,
            listeners,
            ready,
            cfg,
            demo_url,
            seeder,
            streaming,
            pipeline: edge_role.then_some(pipeline),
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
        if let Some(s) = &self.streaming
            && let Err(e) = s.spool.flush().await
        {
            tracing::error!(error = %e, "cannot sync the event spool");
        }
    }

    /// Drains: readiness turns false, listeners stop accepting, in-flight requests finish (up to
    /// `server.drain_timeout`). Returns how many requests were cut off (0 after a clean drain).
    pub async fn shutdown(self) -> usize {
        self.ready.store(false, Ordering::SeqCst);
        let cut = self.listeners.drain(self.cfg.server.drain_timeout).await;
        if let Some(p) = &self.pipeline {
            let started = std::time::Instant::now();
            let spilled = tokio::time::timeout(self.cfg.server.drain_timeout, p.spill()).await;
            match spilled {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(slices = n, took = ?started.elapsed(), "memory tier written to the disk tier")
                }
                Err(_) => {
                    tracing::warn!("memory tier not fully written to disk within drain_timeout")
                }
            }
        }
        if let Some(seeder) = &self.seeder {
            seeder.shutdown().await;
        }
        if let Some(s) = self.streaming {
            s.shutdown().await;
        }
        for task in self.tasks {
            task.abort();
        }
        cut
    }
}
