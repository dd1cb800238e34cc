use super::*;
use edge_config::{PolicySet, WasmConfig};
use edge_origin::StoreOrigin;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The real local-filesystem origin, counting reads. Each read is slowed down (never relied on
/// for correctness) so that concurrent requests really overlap the fill.
struct Counting {
    inner: StoreOrigin,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl Origin for Counting {
    async fn get(&self, path: &str) -> Result<edge_origin::Object, OriginError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.get(path).await
    }
    async fn check(&self) -> Result<(), OriginError> {
        self.inner.check().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    origin: Arc<Counting>,
    pipeline: Pipeline,
}

const MANIFEST: &str =
    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_000.ts\n#EXT-X-ENDLIST\n";

fn fixture() -> Fixture {
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
        segment_ttl: Duration::from_secs(60),
        cors_allow_origin: Some(HeaderValue::from_static("*")),
    };
    let pipeline = Pipeline::new(
        router,
        origin.clone(),
        cfg,
        PipelineMetrics::new(&registry).unwrap(),
    );
    Fixture {
        _dir: dir,
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
        body: Bytes::new(),
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
    assert_eq!(r.headers["x-cache"], "MISS");
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
    assert_eq!(&r.body[..], &(10..20u8).collect::<Vec<_>>()[..]);
    let r = f
        .pipeline
        .handle(get("/vod/movies/m1/seg_000.ts", &[("range", "bytes=-16")]))
        .await;
    assert_eq!((r.status.as_u16(), r.body.len()), (206, 16));
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
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 4096));
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
        assert!(std::str::from_utf8(&r.body).unwrap().contains(reason));
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
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 4096));
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
