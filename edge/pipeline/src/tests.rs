use super::*;

/// The whole body of a response the pipeline answered from cache (never a stream yet).
fn whole(r: &EdgeResponse) -> Bytes {
    r.body_bytes().cloned().expect("a whole body")
}
use edge_config::{PolicySet, WasmConfig};
use edge_contract::Protocol;
use edge_origin::StoreOrigin;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The real local-filesystem origin, counting reads. Each read is slowed down (never relied on
/// for correctness) so that concurrent requests really overlap the fill. While `hold` is set, a
/// read answers only once `release` is notified (counted in `held` while it waits).
struct Counting {
    inner: StoreOrigin,
    reads: AtomicUsize,
    down: AtomicBool,
    hold: AtomicBool,
    held: AtomicUsize,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Origin for Counting {
    async fn get(&self, path: &str) -> Result<edge_origin::Object, OriginError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(OriginError::Unavailable("origin down (test)".into()));
        }
        let read = self.inner.get(path).await;
        if self.hold.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
        }
        read
    }
    async fn check(&self) -> Result<(), OriginError> {
        self.inner.check().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    origin: Arc<Counting>,
    pipeline: Pipeline,
}

const MANIFEST: &str =
    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_000.ts\n#EXT-X-ENDLIST\n";

fn fixture() -> Fixture {
    fixture_with(None, Duration::from_secs(60))
}

async fn disk(dir: &std::path::Path) -> DiskCache {
    DiskCache::open(
        edge_disk_cache::DiskConfig {
            dir: dir.to_path_buf(),
            capacity: 1 << 20,
            max_object: 1 << 20,
            write_suspend: Duration::from_secs(1),
        },
        edge_disk_cache::DiskMetrics::default(),
    )
    .await
    .unwrap()
}

fn fixture_with(disk: Option<DiskCache>, segment_ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let movie = dir.path().join("vod/movies/m1");
    std::fs::create_dir_all(&movie).unwrap();
    std::fs::write(movie.join("index.m3u8"), MANIFEST).unwrap();
    std::fs::write(
        movie.join("seg_000.ts"),
        (0..=255u8).cycle().take(4096).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(movie.join("notes.txt"), "x").unwrap();
    let origin = Arc::new(Counting {
        inner: StoreOrigin::local(dir.path(), Duration::from_secs(5)).unwrap(),
        reads: AtomicUsize::new(0),
        down: AtomicBool::new(false),
        hold: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        release: tokio::sync::Notify::new(),
    });
    let set = PolicySet::from_toml_str(
        "p.toml".as_ref(),
        "[[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\n",
        &Default::default(),
    )
    .unwrap();
    let registry = prometheus::Registry::new();
    let engine = edge_wasm::Engine::new(&edge_wasm::EngineConfig {
        max_instances: 4,
        max_memory: 1 << 20,
    })
    .unwrap();
    let runtime = edge_policy::PolicyRuntime::new(
        engine,
        WasmConfig::default(),
        edge_policy::PolicyMetrics::new(&registry).unwrap(),
        edge_policy::HostServices::local(1000),
        edge_policy::TrustedKeys::default(),
    )
    .unwrap();
    let router = runtime.load(&set).unwrap();
    let cfg = PipelineConfig {
        cache: CacheConfig::default(),
        manifest_ttl: Duration::from_secs(2),
        segment_ttl,
        stale_if_error: Duration::from_secs(3600),
        cors_allow_origin: Some(HeaderValue::from_static("*")),
    };
    let pipeline = Pipeline::new(
        router,
        origin.clone(),
        disk,
        cfg,
        PipelineMetrics::new(&registry).unwrap(),
    );
    Fixture {
        dir,
        origin,
        pipeline,
    }
}

fn get(path: &str, headers: &[(&'static str, &str)]) -> EdgeRequest {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    EdgeRequest {
        method: Method::GET,
        path: path.into(),
        query: query.into(),
        headers: h,
        client_addr: IpAddr::from([127, 0, 0, 1]),
        protocol: Protocol::Http1,
        tls: false,
        body: edge_contract::RequestBody::empty(),
    }
}

async fn status(f: &Fixture, headers: &[(&'static str, &str)]) -> u16 {
    f.pipeline
        .handle(get("/vod/movies/m1/index.m3u8", headers))
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn serves_objects_with_validators() {
    let f = fixture();
    let r = f
        .pipeline
        .handle(get("/vod/movies/m1/index.m3u8", &[]))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, MANIFEST);
    assert_eq!(r.headers["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(r.headers["x-cache"], "MISS origin");
    assert_eq!(r.headers["cache-control"], "public, max-age=2");
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let lm = r.headers["last-modified"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'));

    let r = f
        .pipeline
        .handle(get("/vod/movies/m1/index.m3u8", &[]))
        .await;
    assert_eq!(r.headers["x-cache"], "HIT memory");
    assert_eq!(status(&f, &[("if-none-match", &etag)]).await, 304);
    assert_eq!(status(&f, &[("if-none-match", "\"other\"")]).await, 200);
    assert_eq!(status(&f, &[("if-modified-since", &lm)]).await, 304);
    assert_eq!(
        status(
            &f,
            &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")]
        )
        .await,
        200
    );
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn single_ranges() {
    let f = fixture();
    let r = f
        .pipeline
        .handle(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=10-19")],
        ))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 10-19/4096");
    assert_eq!(&whole(&r)[..], &(10..20u8).collect::<Vec<_>>()[..]);
    let r = f
        .pipeline
        .handle(get("/vod/movies/m1/seg_000.ts", &[("range", "bytes=-16")]))
        .await;
    assert_eq!((r.status.as_u16(), whole(&r).len()), (206, 16));
    let r = f
        .pipeline
        .handle(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=5000-")],
        ))
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], "bytes */4096");
    let r = f
        .pipeline
        .handle(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=0-1,5-6")],
        ))
        .await;
    assert_eq!((r.status.as_u16(), whole(&r).len()), (200, 4096));
    let r = f
        .pipeline
        .handle(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
        ))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn refuses_what_it_does_not_serve() {
    let f = fixture();
    let mut post = get("/vod/movies/m1/index.m3u8", &[]);
    post.method = Method::POST;
    let r = f.pipeline.handle(post).await;
    assert_eq!(
        (r.status.as_u16(), r.headers["allow"].to_str().unwrap()),
        (405, "GET, HEAD")
    );
    for (path, status, reason) in [
        ("/vod/movies/m1/missing.ts", 404, "not_found"),
        ("/vod/movies/m1/notes.txt", 404, "unsupported_media_type"),
        ("/elsewhere/x.ts", 404, "no_route"),
        ("/vod/movies/../../etc/passwd.ts", 400, "path_traversal"),
        ("/vod/movies/%2e%2e/%2e%2e/x.ts", 400, "path_traversal"),
        ("/vod/movies/m1%2f..%2fx.ts", 400, "encoded_separator"),
        ("/vod/movies/m1/a%00.ts", 400, "control_character"),
    ] {
        let r = f.pipeline.handle(get(path, &[])).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.headers["x-edge-reason"], reason, "{path}");
        assert!(std::str::from_utf8(&whole(&r)).unwrap().contains(reason));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_read_the_origin_once() {
    let f = Arc::new(fixture());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            f.pipeline
                .handle(get("/vod/movies/m1/seg_000.ts", &[]))
                .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status.as_u16(), whole(&r).len()), (200, 4096));
    }
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cors_for_browser_players() {
    let f = fixture();
    let r = f
        .pipeline
        .handle(get(
            "/vod/movies/m1/index.m3u8",
            &[("origin", "https://player.example")],
        ))
        .await;
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let denied = f
        .pipeline
        .handle(get("/vod/movies/m1/missing.ts", &[]))
        .await;
    assert!(
        denied.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-edge-reason")
    );
    let mut pre = get(
        "/vod/movies/m1/seg_000.ts",
        &[("access-control-request-headers", "range")],
    );
    pre.method = Method::OPTIONS;
    let r = f.pipeline.handle(pre).await;
    assert_eq!(r.status, 204);
    assert!(
        r.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("range")
    );
}

const SEGMENT: &str = "/vod/movies/m1/seg_000.ts";

#[tokio::test]
async fn the_disk_tier_answers_after_memory_is_gone() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(60));
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "MISS origin");
    let body = whole(&r);
    // The disk write happens behind the response.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.pipeline.cache.purge(SEGMENT), "memory only");
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "HIT disk");
    assert_eq!(whole(&r), body);
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 1);
    let r = f
        .pipeline
        .handle(get(SEGMENT, &[("range", "bytes=10-19")]))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.headers["x-cache"].to_str().unwrap()),
        (206, "HIT memory")
    );
    assert_eq!(whole(&r), body.slice(10..20));
}

#[tokio::test]
async fn a_corrupted_disk_copy_is_refetched() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(60));
    let body = whole(&f.pipeline.handle(get(SEGMENT, &[])).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let files: Vec<_> = walk(cache_dir.path())
        .into_iter()
        .filter(|p| !p.ends_with("lock"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut raw = std::fs::read(&files[0]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    std::fs::write(&files[0], raw).unwrap();
    assert!(f.pipeline.cache.purge(SEGMENT));
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(
        r.headers["x-cache"], "MISS origin",
        "the damaged copy is not served"
    );
    assert_eq!(whole(&r), body);
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 2);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn stale_copies_answer_while_the_origin_is_down() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(1));
    let fresh = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    f.origin.down.store(true, Ordering::SeqCst);

    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-cache"], "STALE disk");
    assert_eq!(r.headers["warning"], "110 edge \"Response is Stale\"");
    assert!(r.headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(whole(&r), whole(&fresh));

    let disk = f.pipeline.tiers.disk.as_ref().unwrap();
    assert!(disk.remove(SEGMENT).await);
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-cache"], "STALE memory");
    assert_eq!(whole(&r), whole(&fresh));

    let r = f
        .pipeline
        .handle(get("/vod/movies/m1/index.m3u8", &[]))
        .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.headers["x-edge-reason"].to_str().unwrap()
        ),
        (502, "origin_unavailable")
    );

    f.origin.down.store(false, Ordering::SeqCst);
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "MISS origin");
    assert!(!r.headers.contains_key("warning"));
}

#[tokio::test]
async fn purges_reach_every_tier_by_path_and_prefix() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(60));
    std::fs::write(f.dir.path().join("vod/movies/m1/seg_001.ts"), "one").unwrap();
    for p in [SEGMENT, "/vod/movies/m1/seg_001.ts"] {
        assert_eq!(f.pipeline.handle(get(p, &[])).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        f.pipeline.purge(SEGMENT).await,
        Purged { memory: 1, disk: 1 }
    );
    assert_eq!(
        f.pipeline.purge_prefix("/vod/movies/").await,
        Purged { memory: 1, disk: 1 }
    );
    let r = f.pipeline.handle(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "MISS origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_flight_does_not_undo_a_purge() {
    for by_prefix in [false, true] {
        let cache_dir = tempfile::tempdir().unwrap();
        let f = Arc::new(fixture_with(
            Some(disk(cache_dir.path()).await),
            Duration::from_secs(60),
        ));
        let file = f.dir.path().join("vod/movies/m1/seg_000.ts");
        std::fs::write(&file, "old").unwrap();
        // A fill reads the old object, and is slow to come back...
        f.origin.hold.store(true, Ordering::SeqCst);
        let slow = tokio::spawn({
            let f = f.clone();
            async move { f.pipeline.handle(get(SEGMENT, &[])).await }
        });
        while f.origin.held.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...while the object changes and is purged.
        std::fs::write(&file, "new").unwrap();
        if by_prefix {
            f.pipeline.purge_prefix("/vod/movies/m1/").await;
        } else {
            f.pipeline.purge(SEGMENT).await;
        }
        f.origin.hold.store(false, Ordering::SeqCst);
        f.origin.release.notify_one();
        assert_eq!(slow.await.unwrap().body, "old", "asked before the purge");
        // Its disk write would happen behind the response.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = f.pipeline.handle(get(SEGMENT, &[])).await;
        assert_eq!(
            (whole(&r).as_ref(), r.headers["x-cache"].to_str().unwrap()),
            (&b"new"[..], "MISS origin"),
            "by_prefix: {by_prefix}"
        );
    }
}

#[test]
fn origin_cache_control_overrides_the_configured_ttl() {
    let f = tiers::Freshness {
        manifest_ttl: Duration::from_secs(2),
        segment_ttl: Duration::from_secs(3600),
        stale_if_error: Duration::ZERO,
    };
    let seg = MediaKind::Segment;
    assert_eq!(f.ttl(seg, None), Duration::from_secs(3600));
    assert_eq!(
        f.ttl(seg, Some("public, max-age=60")),
        Duration::from_secs(60)
    );
    assert_eq!(
        f.ttl(seg, Some("max-age=60, s-maxage=30")),
        Duration::from_secs(30)
    );
    assert_eq!(f.ttl(MediaKind::Manifest, Some("no-store")), Duration::ZERO);
    assert_eq!(f.ttl(seg, Some("private, max-age=60")), Duration::ZERO);
    assert_eq!(
        f.ttl(MediaKind::Manifest, Some("garbage")),
        Duration::from_secs(2)
    );
}
