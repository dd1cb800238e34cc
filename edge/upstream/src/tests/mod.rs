//! Routing against a real `redis-server` and seeders on loopback ports.

mod servers;

use super::*;
use crate::{
    metrics::FetchResult,
    ring::{Member, Ring},
};
use bytes::Bytes;
use edge_directory::{Holding, SeederStatus};
use edge_kv::{RedisSettings, RedisStore};
use edge_origin::Tier;
use edge_testinfra::Redis;
use servers::{CountingOrigin, CuttingSeeder, FLOOD, FloodingSeeder, TestSeeder, mib, sha256};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(60);

/// A directory client with the tight timeouts of a production edge (50 ms).
fn directory(port: u16) -> Directory {
    Directory::new(Arc::new(
        RedisStore::new(RedisSettings::loopback(port, Duration::from_millis(50))).unwrap(),
    ))
}

fn config() -> RoutingConfig {
    RoutingConfig {
        probe_interval: Duration::from_millis(100),
        report_interval: Duration::from_millis(100),
        membership_refresh: Duration::from_millis(200),
        ..RoutingConfig::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn body(tag: &str) -> Bytes {
    Bytes::from(format!("segment {tag} ").repeat(1000))
}

/// The seeder ids in ring order for `path`, as every edge computes it.
fn ring_order(ids: &[&str], path: &str) -> Vec<String> {
    let ring = Ring::new(
        ids.iter()
            .map(|id| Member {
                id: (*id).to_owned(),
                address: String::new(),
            })
            .collect(),
    );
    ring.walk(path).map(|m| m.id.clone()).collect()
}

struct Fixture {
    redis: Redis,
    /// What the code under test reads through (production timeouts, 50 ms).
    directory: Directory,
    /// The test's own writes and reads of the directory: a generous timeout, so a busy machine
    /// fails no test in its set-up.
    seed: Directory,
    fallback: Arc<CountingOrigin>,
    upstream: Arc<SeederOrigin>,
}

impl Fixture {
    fn new(cfg: RoutingConfig) -> Self {
        let redis = Redis::start();
        let directory = directory(redis.port());
        let seed = Directory::new(Arc::new(
            RedisStore::new(RedisSettings::loopback(
                redis.port(),
                Duration::from_secs(5),
            ))
            .unwrap(),
        ));
        let fallback = Arc::new(CountingOrigin::default());
        let upstream = SeederOrigin::new(
            cfg,
            directory.clone(),
            fallback.clone(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        Self {
            redis,
            directory,
            seed,
            fallback,
            upstream,
        }
    }

    /// A second router on the same directory and origin, with `cfg`.
    fn another(&self, cfg: RoutingConfig) -> Arc<SeederOrigin> {
        SeederOrigin::new(
            cfg,
            self.directory.clone(),
            self.fallback.clone(),
            &prometheus::Registry::new(),
        )
        .unwrap()
    }

    /// Heartbeat of seeder `id` at `address`, `age` ago.
    async fn heartbeat(&self, id: &str, address: &str, age: Duration) {
        let status = SeederStatus {
            seeder_id: id.into(),
            address: address.into(),
            last_active: now_ms() - age.as_millis() as u64,
            started_at: now_ms() - 60_000,
            ..SeederStatus::default()
        };
        self.seed.heartbeat(&status, TTL).await.unwrap();
    }

    /// Seeder `id` at `address` holds `path` with `body`'s checksum.
    async fn holds(&self, id: &str, address: &str, path: &str, body: &[u8]) {
        self.holds_with_checksum(id, address, path, body.len() as u64, &sha256(body))
            .await;
    }

    async fn holds_with_checksum(
        &self,
        id: &str,
        address: &str,
        path: &str,
        size: u64,
        checksum: &str,
    ) {
        let seg = SegmentRef::from_path("/vod/movies/", path).unwrap();
        let holding = Holding {
            seeder_id: id.into(),
            address: address.into(),
            size,
            checksum: checksum.into(),
            last_access: now_ms(),
        };
        self.seed.publish(&[(seg, holding)], TTL).await.unwrap();
    }

    /// Starts seeders `ids`, each with a fresh heartbeat and holding every path in `files`.
    async fn seeders(&self, ids: &[&str], files: &[(&str, &Bytes)]) -> Vec<TestSeeder> {
        let mut out = Vec::new();
        for id in ids {
            let s = TestSeeder::start(id).await;
            self.heartbeat(id, &s.address(), Duration::ZERO).await;
            for (path, body) in files {
                s.put(path, body);
                self.holds(id, &s.address(), path, body).await;
            }
            out.push(s);
        }
        out
    }

    fn view(&self, id: &str) -> SeederView {
        self.upstream
            .seeders()
            .into_iter()
            .find(|v| v.id == id)
            .unwrap_or_else(|| panic!("{id} not tracked"))
    }
}

/// Polls `cond` every 20 ms for up to `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_segment_comes_from_the_ring_choice_among_its_holders() {
    let f = Fixture::new(config());
    let paths: Vec<String> = (0..8)
        .map(|i| format!("/vod/movies/m1/720p/seg_{i:03}.ts"))
        .collect();
    let bodies: Vec<Bytes> = paths.iter().map(|p| body(p)).collect();
    let files: Vec<(&str, &Bytes)> = paths.iter().map(String::as_str).zip(&bodies).collect();
    let seeders = f.seeders(&["s1", "s2"], &files).await;
    f.upstream.refresh_membership().await;

    let mut owners = std::collections::HashSet::new();
    for (path, body) in paths.iter().zip(&bodies) {
        let owner = &ring_order(&["s1", "s2"], path)[0];
        owners.insert(owner.clone());
        let before: Vec<u64> = seeders.iter().map(TestSeeder::hits).collect();
        for _ in 0..3 {
            let obj = f.upstream.get(path).await.unwrap();
            assert_eq!(&obj.body, body);
            assert_eq!(obj.tier, Tier::Seeder);
            assert_eq!(
                obj.etag.as_deref(),
                Some(&sha256(body)[..32]),
                "the etag of the version the directory lists"
            );
            assert!(obj.last_modified.is_some() && obj.cache_control.is_none());
        }
        for (s, before) in seeders.iter().zip(before) {
            let expected = if &s.id == owner { 3 } else { 0 };
            assert_eq!(
                s.hits() - before,
                expected,
                "{path} from {owner}, not {}",
                s.id
            );
        }
    }
    assert_eq!(owners.len(), 2, "the ring spreads paths over both seeders");
    assert_eq!(f.fallback.hits(), 0);
    assert_eq!(f.upstream.metrics.fallbacks.get(), 0);
    assert_eq!(f.upstream.metrics.hedges.get(), 0);
    let ok: u64 = ["s1", "s2"]
        .iter()
        .map(|id| f.upstream.metrics.fetches(id, FetchResult::Ok))
        .sum();
    assert_eq!(ok, 24);
    let views = f.upstream.seeders();
    assert_eq!(views.len(), 2);
    assert!(views.iter().all(|v| v.healthy && v.failed == 0 && v.ok > 0));
    assert_eq!(views[0].success_rate, Some(1.0));
    assert_eq!(views[0].address, seeders[0].address());
    assert_eq!(
        f.upstream.describe(),
        format!(
            "seeders (redis://127.0.0.1:{}) → test-origin",
            f.redis.port()
        )
    );
}

#[tokio::test]
async fn holders_are_used_before_the_membership_is_known() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m1/a.ts";
    let b = body("a");
    let seeders = f.seeders(&["s1"], &[(path, &b)]).await;
    // No refresh_membership: the ring is empty, the holder's own entry is enough.
    assert_eq!(f.upstream.get(path).await.unwrap().body, b);
    assert_eq!((seeders[0].hits(), f.fallback.hits()), (1, 0));
}

#[tokio::test]
async fn a_seeder_cut_mid_transfer_is_never_returned_and_is_probed_back() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m1/1080p/seg_001.ts";
    let order = ring_order(&["s1", "s2"], path);
    let full = mib();
    let cutter = CuttingSeeder::start().await;
    let good = TestSeeder::start(&order[1]).await;
    good.put(path, &full);
    f.heartbeat(&order[0], &cutter.address(), Duration::ZERO)
        .await;
    f.heartbeat(&order[1], &good.address(), Duration::ZERO)
        .await;
    f.holds(&order[0], &cutter.address(), path, &full).await;
    f.holds(&order[1], &good.address(), path, &full).await;
    f.upstream.refresh_membership().await;
    let _tasks = f.upstream.spawn();

    let obj = f.upstream.get(path).await.unwrap();
    assert_eq!(obj.body.len(), full.len());
    assert_eq!(obj.body, full);
    assert_eq!((cutter.hits(), good.hits(), f.fallback.hits()), (1, 1, 0));
    let view = f.view(&order[0]);
    assert!(!view.healthy, "{view:?}");
    assert_eq!((view.ok, view.failed, view.success_rate), (0, 1, Some(0.0)));
    assert_eq!(f.upstream.metrics.fetches(&order[0], FetchResult::Error), 1);

    // Unhealthy: skipped, and probes answered 503 keep it so.
    assert_eq!(f.upstream.get(path).await.unwrap().body, full);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cutter.hits(), 1);
    assert!(!f.view(&order[0]).healthy);

    cutter.set_healthy(true);
    eventually(
        Duration::from_secs(5),
        "healthy after a 200 probe",
        async || f.view(&order[0]).healthy,
    )
    .await;
    assert!(f.view(&order[1]).healthy);
}

#[tokio::test]
async fn a_checksum_mismatch_moves_to_the_next_candidate() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m2/seg.ts";
    let b = body("m2");
    let order = ring_order(&["s1", "s2"], path);
    let seeders = f.seeders(&["s1", "s2"], &[(path, &b)]).await;
    let (bad, good) = if seeders[0].id == order[0] {
        (&seeders[0], &seeders[1])
    } else {
        (&seeders[1], &seeders[0])
    };
    bad.set_corrupt(true);
    f.upstream.refresh_membership().await;

    let obj = f.upstream.get(path).await.unwrap();
    assert_eq!((obj.body, obj.tier), (b.clone(), Tier::Seeder));
    assert_eq!((bad.hits(), good.hits(), f.fallback.hits()), (1, 1, 0));
    assert!(!f.view(&bad.id).healthy);
    assert!(f.view(&good.id).healthy);

    // The directory's checksum counts too: a body matching its header but not the directory
    // is refused, and with no other holder the origin answers.
    let other = "/vod/movies/m2/other.ts";
    let ob = body("other");
    good.put(other, &ob);
    f.fallback.put(other, &ob);
    f.holds_with_checksum(&good.id, &good.address(), other, 1, &"0".repeat(64))
        .await;
    let obj = f.upstream.get(other).await.unwrap();
    assert_eq!((obj.body, obj.tier), (ob, Tier::Origin));
    assert_eq!(f.fallback.hits(), 1);
    assert!(!f.view(&good.id).healthy);
    assert_eq!(f.upstream.metrics.fallbacks.get(), 1);
}

#[tokio::test]
async fn a_slow_seeder_is_hedged() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m3/seg.ts";
    let b = body("m3");
    let order = ring_order(&["s1", "s2"], path);
    let seeders = f.seeders(&["s1", "s2"], &[(path, &b)]).await;
    let (slow, fast) = if seeders[0].id == order[0] {
        (&seeders[0], &seeders[1])
    } else {
        (&seeders[1], &seeders[0])
    };
    slow.set_delay(Duration::from_secs(2));
    f.upstream.refresh_membership().await;

    let started = Instant::now();
    let obj = f.upstream.get(path).await.unwrap();
    let took = started.elapsed();
    assert_eq!(obj.body, b);
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert!(
        took >= Duration::from_millis(100),
        "hedged too early: {took:?}"
    );
    assert_eq!((slow.hits(), fast.hits(), f.fallback.hits()), (1, 1, 0));
    assert_eq!(f.upstream.metrics.hedges.get(), 1);
    // The slow attempt was dropped, not failed.
    assert!(f.view(&slow.id).healthy);
    assert_eq!(f.view(&slow.id).failed, 0);
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_the_origin_and_recovery_uses_seeders_again() {
    let mut f = Fixture::new(RoutingConfig {
        lookup_cache_ttl: Duration::from_millis(100),
        ..config()
    });
    let path = "/vod/movies/m4/seg.ts";
    let b = body("m4");
    f.fallback.put(path, &b);
    let seeders = f.seeders(&["s1"], &[(path, &b)]).await;
    f.upstream.refresh_membership().await;
    let _tasks = f.upstream.spawn();
    assert_eq!(f.upstream.get(path).await.unwrap().tier, Tier::Seeder);
    assert_eq!(seeders[0].hits(), 1);

    let port = f.redis.port();
    f.redis.stop();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let obj = f.upstream.get(path).await.unwrap();
        let took = started.elapsed();
        assert_eq!((obj.body.clone(), obj.tier), (b.clone(), Tier::Origin));
        assert!(took < Duration::from_millis(400), "took {took:?}");
    }
    assert_eq!(seeders[0].hits(), 1);
    assert_eq!(f.fallback.hits(), 5);
    assert!(f.upstream.metrics.directory_errors.get() >= 1);

    f.redis = Redis::start_on(port);
    let s = &seeders[0];
    eventually(Duration::from_secs(10), "re-announced", async || {
        let status = SeederStatus {
            seeder_id: s.id.clone(),
            address: s.address(),
            last_active: now_ms(),
            ..SeederStatus::default()
        };
        let seg = SegmentRef::from_path("/vod/movies/", path).unwrap();
        let holding = Holding {
            seeder_id: s.id.clone(),
            address: s.address(),
            size: b.len() as u64,
            checksum: sha256(&b),
            last_access: now_ms(),
        };
        f.directory.heartbeat(&status, TTL).await.is_ok()
            && f.directory.publish(&[(seg, holding)], TTL).await.is_ok()
    })
    .await;
    eventually(Duration::from_secs(10), "seeders used again", async || {
        f.upstream
            .get(path)
            .await
            .is_ok_and(|o| o.tier == Tier::Seeder)
    })
    .await;
    assert_eq!(seeders[0].hits(), 2);
}

#[tokio::test]
async fn an_unheld_segment_goes_to_its_ring_owner_with_pull_through_else_to_the_origin() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m5/seg.ts";
    let b = body("m5");
    f.fallback.put(path, &b);
    // Both seeders can produce it (pulling through), neither is listed as a holder.
    let seeders = f.seeders(&["s1", "s2"], &[]).await;
    for s in &seeders {
        s.put(path, &b);
    }
    let owner = &ring_order(&["s1", "s2"], path)[0];
    f.upstream.refresh_membership().await;
    let obj = f.upstream.get(path).await.unwrap();
    assert_eq!((obj.body, obj.tier), (b.clone(), Tier::Seeder));
    for s in &seeders {
        assert_eq!(s.hits(), u64::from(&s.id == owner), "{}", s.id);
    }
    assert_eq!(f.fallback.hits(), 0);

    let direct = f.another(RoutingConfig {
        pull_through_on_miss: false,
        ..config()
    });
    direct.refresh_membership().await;
    let obj = direct.get(path).await.unwrap();
    assert_eq!((obj.body, obj.tier), (b, Tier::Origin));
    assert_eq!(seeders.iter().map(TestSeeder::hits).sum::<u64>(), 1);
    assert_eq!(f.fallback.hits(), 1);
    assert_eq!(direct.metrics.fallbacks.get(), 1);
}

#[tokio::test]
async fn not_found_everywhere_is_not_found_and_a_404_is_no_health_failure() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m6/gone.ts";
    // s1 is listed as holding it but no longer has it; s2 (the ring's other seeder) neither.
    let seeders = f.seeders(&["s1", "s2"], &[]).await;
    f.holds("s1", &seeders[0].address(), path, b"old").await;
    f.upstream.refresh_membership().await;
    assert_eq!(
        f.upstream.get(path).await.unwrap_err(),
        OriginError::NotFound
    );
    assert_eq!(seeders[0].hits(), 1);
    assert_eq!(f.fallback.hits(), 1);
    assert_eq!(f.upstream.metrics.fetches("s1", FetchResult::NotFound), 1);
    assert!(
        f.upstream
            .seeders()
            .iter()
            .all(|v| v.healthy && v.failed == 0)
    );

    // A holder's 404 moves on to the next holder.
    let moved = "/vod/movies/m6/moved.ts";
    let b = body("moved");
    let order = ring_order(&["s1", "s2"], moved);
    let (stale, fresh) = if seeders[0].id == order[0] {
        (&seeders[0], &seeders[1])
    } else {
        (&seeders[1], &seeders[0])
    };
    fresh.put(moved, &b);
    f.holds(&stale.id, &stale.address(), moved, &b).await;
    f.holds(&fresh.id, &fresh.address(), moved, &b).await;
    assert_eq!(f.upstream.get(moved).await.unwrap().body, b);
    assert!(f.view(&stale.id).healthy);
    assert_eq!(f.fallback.hits(), 1);
}

#[tokio::test]
async fn stale_seeders_and_paths_outside_the_prefix_go_to_the_origin() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m7/seg.ts";
    let b = body("m7");
    f.fallback.put(path, &b);
    let s = TestSeeder::start("old").await;
    s.put(path, &b);
    f.heartbeat("old", &s.address(), Duration::from_secs(60))
        .await;
    f.holds("old", &s.address(), path, &b).await;
    f.upstream.refresh_membership().await;
    assert_eq!(f.upstream.get(path).await.unwrap().tier, Tier::Origin);
    assert!(f.upstream.seeders().is_empty());

    for outside in ["/vod/movies/index.json", "/live/m7/seg.ts"] {
        s.put(outside, &b);
        f.fallback.put(outside, &b);
        assert_eq!(f.upstream.get(outside).await.unwrap().tier, Tier::Origin);
    }
    assert_eq!(s.hits(), 0);
    assert_eq!(f.fallback.hits(), 3);
    // Only segment requests count as fallbacks.
    assert_eq!(f.upstream.metrics.fallbacks.get(), 1);
}

#[tokio::test]
async fn success_rates_are_reported_to_the_directory() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m8/seg.ts";
    let b = body("m8");
    let order = ring_order(&["s1", "s2"], path);
    let seeders = f.seeders(&["s1", "s2"], &[(path, &b)]).await;
    let bad = seeders.iter().find(|s| s.id == order[0]).unwrap();
    bad.set_corrupt(true);
    f.upstream.refresh_membership().await;
    let _tasks = f.upstream.spawn();
    assert_eq!(f.upstream.get(path).await.unwrap().body, b);

    eventually(Duration::from_secs(5), "successRate in redis", async || {
        let statuses = f.seed.seeders().await.unwrap();
        let rate = |id: &str| {
            statuses
                .iter()
                .find(|s| s.seeder_id == id)
                .and_then(|s| s.success_rate.map(|r| (s.ok, s.failed, r)))
        };
        rate(&order[0]) == Some((0, 1, 0.0)) && rate(&order[1]) == Some((1, 0, 1.0))
    })
    .await;
    // Reported once: the counts do not grow with later reports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses = f.seed.seeders().await.unwrap();
    let totals = statuses
        .iter()
        .fold((0, 0), |(ok, failed), s| (ok + s.ok, failed + s.failed));
    assert_eq!(totals, (1, 1));
}

#[tokio::test]
async fn the_seeder_is_asked_for_the_path_itself_however_it_is_spelt() {
    let f = Fixture::new(config());
    let seeders = f.seeders(&["s1"], &[]).await;
    let s = &seeders[0];
    f.upstream.refresh_membership().await;
    // Paths are decoded public paths: `%2e%2e` was `%252e%252e` on the wire, which a signed URL
    // scoped to /vod/movies/m1/ admits. Asking the seeder for it unencoded made the URL parser
    // resolve it as `..` and return another stream's segment.
    let other = "/vod/movies/other/seg.ts";
    let b = body("other");
    s.put(other, &b);
    let sneaky = "/vod/movies/m1/%2e%2e/other/seg.ts";
    assert_eq!(
        f.upstream.get(sneaky).await.unwrap_err(),
        OriginError::NotFound
    );
    assert_eq!(s.hits(), 1, "asked, and it has no such file");
    // `?`, `#`, `%`, `\` and spaces are part of the path, not a query, a fragment or a
    // separator. (The test seeder matches the raw, still encoded, request path.)
    let odd = "/vod/movies/m1/a b?c#d%e\\f.ts";
    s.put("/vod/movies/m1/a%20b%3Fc%23d%25e%5Cf.ts", &b);
    let obj = f.upstream.get(odd).await.unwrap();
    assert_eq!((obj.body, obj.tier), (b, Tier::Seeder));
    assert_eq!(f.fallback.hits(), 1);
}

#[tokio::test]
async fn a_seeder_body_larger_than_max_object_is_refused_without_buffering_it() {
    let flood = FloodingSeeder::start().await;
    let client = reqwest::Client::new();
    let max = 1 << 20;
    let get = async |path: &str| {
        let ask = fetch::Ask {
            path,
            range: None,
            timeout: Duration::from_secs(10),
            limit: max,
        };
        fetch::fetch(&client, &flood.address(), &ask, fetch::Expected::default()).await
    };
    // Announced too large: refused before the body is read (not held against the seeder: the
    // object is larger than the slice asked for, the origin serves it).
    let Err(fetch::Failure::CannotServe(why)) = get("/vod/movies/m1/announced.ts").await else {
        panic!("a body of {FLOOD} bytes was accepted");
    };
    assert!(why.contains("bytes or more"), "{why}");
    // Chunked: cut off once past max_object, long before the seeder is done sending.
    let Err(fetch::Failure::CannotServe(why)) = get("/vod/movies/m1/chunked.ts").await else {
        panic!("a body of {FLOOD} bytes was accepted");
    };
    assert!(why.contains("bytes or more"), "{why}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(flood.sent() < FLOOD, "sent {} bytes", flood.sent());
}

#[tokio::test]
async fn a_seeder_whose_origin_pull_failed_stays_healthy() {
    let f = Fixture::new(config());
    let path = "/vod/movies/m9/seg.ts";
    let b = body("m9");
    let seeders = f.seeders(&["s1"], &[]).await;
    seeders[0].set_pull_fails(true);
    f.holds_with_checksum(
        &seeders[0].id,
        &seeders[0].address(),
        path,
        b.len() as u64,
        &sha256(&b),
    )
    .await;
    f.fallback.put(path, &b);
    f.upstream.refresh_membership().await;
    let obj = f.upstream.get(path).await.unwrap();
    assert_eq!((obj.body, obj.tier), (b, Tier::Origin));
    assert_eq!(seeders[0].hits(), 1);
    assert!(
        f.view(&seeders[0].id).healthy,
        "the origin failed, not the seeder"
    );
}
