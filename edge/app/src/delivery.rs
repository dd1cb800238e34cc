//! Building the delivery side from configuration: the origin, the seeder routing in front of it,
//! the disk tier, and the seeder role.

use anyhow::Context as _;
use edge_config::{EdgeConfig, OriginKind};
use edge_directory::Directory;
use edge_disk_cache::{DiskCache, DiskConfig, DiskMetrics};
use edge_kv::{RedisSettings, RedisStore};
use edge_origin::{HttpSettings, KeyMap, Origin, Retry, S3Settings, StoreOrigin};
use edge_seeder::{Seeder, SeederConfig};
use edge_upstream::{RoutingConfig, SeederOrigin};
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// The Redis connection every Redis user of this process shares (policy kv, seeder directory).
pub(crate) fn redis(cfg: &EdgeConfig) -> anyhow::Result<Option<Arc<RedisStore>>> {
    let Some(host) = &cfg.redis.host else {
        return Ok(None);
    };
    let store = RedisStore::new(RedisSettings {
        host: host.clone(),
        port: cfg.redis.port,
        password: cfg.redis.password.clone(),
        db: cfg.redis.db,
        timeout: cfg.redis.timeout,
        connect_timeout: cfg.redis.connect_timeout,
        retry_after: Duration::from_secs(1),
    })
    .with_context(|| format!("{}: `redis`", cfg.source.display()))?;
    Ok(Some(Arc::new(store)))
}

/// The origin store named by `[origin]` (and `[s3]`).
pub(crate) fn origin(cfg: &EdgeConfig) -> anyhow::Result<StoreOrigin> {
    let o = &cfg.origin;
    let retry = Retry {
        retries: o.retries,
        backoff: o.retry_backoff,
    };
    let at = |field: &str| format!("{}: `{field}`", cfg.source.display());
    let (store, default_strip) = match o.resolved_kind(&cfg.s3) {
        OriginKind::S3 => {
            let bucket = cfg.s3.bucket.clone().unwrap_or_default();
            let settings = S3Settings {
                endpoint: cfg.s3.endpoint.clone(),
                bucket: bucket.clone(),
                region: cfg.s3.region.clone(),
                access_key: cfg.s3.access_key.clone(),
                secret_key: cfg.s3.secret_key.clone(),
                virtual_hosted: cfg.s3.virtual_hosted,
            };
            let store = StoreOrigin::s3(&settings, o.timeout, retry).with_context(|| at("s3"))?;
            (store, format!("/{bucket}"))
        }
        OriginKind::Http => {
            let settings = HttpSettings {
                base_url: o.url.clone().unwrap_or_default(),
            };
            let store =
                StoreOrigin::http(&settings, o.timeout, retry).with_context(|| at("origin.url"))?;
            (store, String::new())
        }
        OriginKind::Fs | OriginKind::Auto => (
            StoreOrigin::local(&cfg.resolve(&o.root), o.timeout)
                .with_context(|| at("origin.root"))?,
            String::new(),
        ),
    };
    Ok(store.with_keys(KeyMap {
        strip_prefix: o.strip_prefix.clone().unwrap_or(default_strip),
        key_prefix: o.key_prefix.clone(),
    }))
}

/// What the edge's caches fill from, and the seeder routing when it is part of that.
type Upstream = (Arc<dyn Origin>, Option<Arc<SeederOrigin>>);

/// The upstream of the edge's caches: seeders (when routing to them) in front of `origin`.
pub(crate) fn upstream(
    cfg: &EdgeConfig,
    origin: Arc<dyn Origin>,
    redis: Option<&Arc<RedisStore>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Upstream> {
    let r = &cfg.routing;
    let Some(redis) = redis.filter(|_| r.uses_seeders(cfg)) else {
        return Ok((origin, None));
    };
    let routing = SeederOrigin::new(
        RoutingConfig {
            streams_prefix: r.streams_prefix.clone(),
            lookup_cache_ttl: r.lookup_cache_ttl,
            membership_refresh: Duration::from_secs(2),
            heartbeat_stale: r.heartbeat_stale,
            request_timeout: r.seeder_timeout,
            // Objects of more than one slice are read from seeders slice by slice.
            max_object: cfg.cache.slice.as_u64(),
            slice: cfg.cache.slice.as_u64(),
            hedge_delay: r.hedge_delay,
            max_seeders: r.max_seeders,
            probe_interval: r.probe_interval,
            report_interval: Duration::from_secs(5),
            pull_through_on_miss: r.pull_through_on_miss,
        },
        Directory::new(redis.clone()),
        origin,
        registry,
    )?;
    Ok((routing.clone(), Some(routing)))
}

/// The disk tier, when `[disk_cache] path` is set. Its index is rebuilt from the files.
pub(crate) async fn disk(
    cfg: &EdgeConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<DiskCache>> {
    let Some(path) = &cfg.disk_cache.path else {
        return Ok(None);
    };
    let dir = cfg.resolve(path);
    let disk = DiskCache::open(
        DiskConfig {
            dir: dir.clone(),
            capacity: cfg.disk_cache.capacity.as_u64(),
            max_object: cfg.cache.slice.as_u64(),
            write_suspend: cfg.disk_cache.write_suspend,
        },
        DiskMetrics::register(registry)?,
    )
    .await
    .with_context(|| {
        format!(
            "{}: `disk_cache.path` {}",
            cfg.source.display(),
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), entries = disk.len(), bytes = disk.bytes(), "disk cache ready");
    Ok(Some(disk))
}

/// The seeder role: its handler, for a listener bound at `bound`.
pub(crate) fn seeder(
    cfg: &EdgeConfig,
    bound: SocketAddr,
    origin: Arc<dyn Origin>,
    redis: Option<&Arc<RedisStore>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<Seeder>> {
    let s = &cfg.seeder;
    let advertise = s.advertise.clone().unwrap_or_else(|| bound.to_string());
    if redis.is_none() {
        tracing::warn!("seeder without [redis]: it serves, but no edge can find it");
    }
    let seeder = Seeder::new(
        SeederConfig {
            id: s.id.clone().unwrap_or_else(|| advertise.clone()),
            cache_path: cfg.resolve(&s.cache_path),
            advertise,
            streams_prefix: cfg.routing.streams_prefix.clone(),
            scan_interval: s.scan_interval,
            key_ttl: s.key_ttl,
            heartbeat_interval: s.heartbeat_interval,
            retention: s.retention,
            pull_through: s.pull_through,
            // Edges ask seeders for whole objects of one slice and for slices of larger ones.
            max_object: cfg.cache.slice.as_u64(),
            slice: cfg.cache.slice.as_u64(),
            purge_token: cfg.server.admin_token.clone(),
        },
        redis.map(|r| Directory::new(r.clone())),
        Some(origin),
        registry,
    )
    .with_context(|| format!("{}: `seeder`", cfg.source.display()))?;
    Ok(seeder)
}
