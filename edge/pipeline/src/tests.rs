use super::*;

/// A response with its body read whole.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

trait Ask {
    async fn ask(&self, req: EdgeRequest) -> Got;
}

impl Ask for Pipeline {
    async fn ask(&self, req: EdgeRequest) -> Got {
        let r = self.handle(req).await;
        Got {
            status: r.status,
            headers: r.headers,
            body: r.body.collect(u64::MAX).await.expect("a complete body"),
        }
    }
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
    async fn open(
        &self,
        path: &str,
        range: Option<std::ops::Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<edge_origin::Opened, OriginError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(OriginError::Unavailable("origin down (test)".into()));
        }
        let read = self.inner.open(path, range, if_match).await;
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

/// One route for `/vod/**` without policies, on a real policy runtime.
fn vod_router(registry: &prometheus::Registry) -> Router {
    let set = PolicySet::from_toml_str(
        "p.toml".as_ref(),
        "[[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\n",
        &Default::default(),
    )
    .unwrap();
    let engine = edge_wasm::Engine::new(&edge_wasm::EngineConfig {
        max_instances: 4,
        max_memory: 1 << 20,
    })
    .unwrap();
    let runtime = edge_policy::PolicyRuntime::new(
        engine,
        WasmConfig::default(),
        edge_policy::PolicyMetrics::new(registry).unwrap(),
        edge_policy::HostServices::local(1000),
        edge_policy::TrustedKeys::default(),
    )
    .unwrap();
    runtime.load(&set).unwrap()
}

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
    let registry = prometheus::Registry::new();
    let router = vod_router(&registry);
    let cfg = PipelineConfig {
        cache: CacheConfig::default(),
        slice: 4 << 20,
        manifest_ttl: Duration::from_secs(2),
        segment_ttl,
        stale_if_error: Duration::from_secs(3600),
        cors_allow_origin: Some(HeaderValue::from_static("*")),
        max_fills: 64,
        fill_timeout: Duration::from_secs(120),
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
        .ask(get("/vod/movies/m1/index.m3u8", headers))
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn serves_objects_with_validators() {
    let f = fixture();
    let r = f.pipeline.ask(get("/vod/movies/m1/index.m3u8", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, MANIFEST);
    assert_eq!(r.headers["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(r.headers["x-cache"], "MISS origin");
    assert_eq!(r.headers["cache-control"], "public, max-age=2");
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let lm = r.headers["last-modified"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'));

    let r = f.pipeline.ask(get("/vod/movies/m1/index.m3u8", &[])).await;
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
        .ask(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=10-19")],
        ))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 10-19/4096");
    assert_eq!(&r.body.clone()[..], &(10..20u8).collect::<Vec<_>>()[..]);
    let r = f
        .pipeline
        .ask(get("/vod/movies/m1/seg_000.ts", &[("range", "bytes=-16")]))
        .await;
    assert_eq!((r.status.as_u16(), r.body.clone().len()), (206, 16));
    // A range covering the whole object is still a range (players take a 200 for "no ranges").
    for whole in ["bytes=0-", "bytes=0-4095", "bytes=-4096", "bytes=-10000"] {
        let r = f
            .pipeline
            .ask(get("/vod/movies/m1/seg_000.ts", &[("range", whole)]))
            .await;
        assert_eq!((r.status.as_u16(), r.body.len()), (206, 4096), "{whole}");
        assert_eq!(r.headers["content-range"], "bytes 0-4095/4096");
    }
    let r = f
        .pipeline
        .ask(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=5000-")],
        ))
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], "bytes */4096");
    let r = f
        .pipeline
        .ask(get(
            "/vod/movies/m1/seg_000.ts",
            &[("range", "bytes=0-1,5-6")],
        ))
        .await;
    assert_eq!((r.status.as_u16(), r.body.clone().len()), (200, 4096));
    let r = f
        .pipeline
        .ask(get(
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
    let r = f.pipeline.ask(post).await;
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
        let r = f.pipeline.ask(get(path, &[])).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.headers["x-edge-reason"], reason, "{path}");
        assert!(
            std::str::from_utf8(&r.body.clone())
                .unwrap()
                .contains(reason)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_read_the_origin_once() {
    let f = Arc::new(fixture());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            f.pipeline.ask(get("/vod/movies/m1/seg_000.ts", &[])).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.clone().len()), (200, 4096));
    }
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cors_for_browser_players() {
    let f = fixture();
    let r = f
        .pipeline
        .ask(get(
            "/vod/movies/m1/index.m3u8",
            &[("origin", "https://player.example")],
        ))
        .await;
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let denied = f.pipeline.ask(get("/vod/movies/m1/missing.ts", &[])).await;
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
    let r = f.pipeline.ask(pre).await;
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
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "MISS origin");
    let body = r.body.clone();
    // A victim cache: nothing on disk while memory holds it, until memory lets go of it (a
    // drain spills it).
    assert!(f.pipeline.slices.tiers.disk.as_ref().unwrap().is_empty());
    assert_eq!(f.pipeline.spill().await, 1);
    assert_eq!(f.pipeline.spill().await, 1, "memory still holds it");
    assert!(f.pipeline.slices.memory.purge(SEGMENT), "memory only");
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "HIT disk");
    assert_eq!(r.body.clone(), body);
    assert_eq!(f.origin.reads.load(Ordering::SeqCst), 1);
    assert_eq!(f.pipeline.spill().await, 0, "from disk: already there");
    let r = f
        .pipeline
        .ask(get(SEGMENT, &[("range", "bytes=10-19")]))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.headers["x-cache"].to_str().unwrap()),
        (206, "HIT memory")
    );
    assert_eq!(r.body.clone(), body.slice(10..20));
}

#[tokio::test]
async fn a_corrupted_disk_copy_is_refetched() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(60));
    let body = f.pipeline.ask(get(SEGMENT, &[])).await.body;
    f.pipeline.spill().await;
    let files: Vec<_> = walk(cache_dir.path())
        .into_iter()
        .filter(|p| !p.ends_with("lock"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut raw = std::fs::read(&files[0]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    std::fs::write(&files[0], raw).unwrap();
    assert!(f.pipeline.slices.memory.purge(SEGMENT));
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(
        r.headers["x-cache"], "MISS origin",
        "the damaged copy is not served"
    );
    assert_eq!(r.body.clone(), body);
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
    let fresh = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(fresh.status, 200);
    f.pipeline.spill().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    f.origin.down.store(true, Ordering::SeqCst);

    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-cache"], "STALE disk");
    assert_eq!(r.headers["warning"], "110 edge \"Response is Stale\"");
    assert!(r.headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.body.clone(), fresh.body.clone());

    let disk = f.pipeline.slices.tiers.disk.as_ref().unwrap();
    assert!(disk.remove(SEGMENT).await);
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-cache"], "STALE memory");
    assert_eq!(r.body.clone(), fresh.body.clone());

    let r = f.pipeline.ask(get("/vod/movies/m1/index.m3u8", &[])).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.headers["x-edge-reason"].to_str().unwrap()
        ),
        (502, "origin_unavailable")
    );

    f.origin.down.store(false, Ordering::SeqCst);
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
    assert_eq!(r.headers["x-cache"], "MISS origin");
    assert!(!r.headers.contains_key("warning"));
}

#[tokio::test]
async fn purges_reach_every_tier_by_path_and_prefix() {
    let cache_dir = tempfile::tempdir().unwrap();
    let f = fixture_with(Some(disk(cache_dir.path()).await), Duration::from_secs(60));
    std::fs::write(f.dir.path().join("vod/movies/m1/seg_001.ts"), "one").unwrap();
    for p in [SEGMENT, "/vod/movies/m1/seg_001.ts"] {
        assert_eq!(f.pipeline.ask(get(p, &[])).await.status, 200);
    }
    assert_eq!(f.pipeline.spill().await, 2);
    assert_eq!(
        f.pipeline.purge(SEGMENT).await,
        Purged { memory: 1, disk: 1 }
    );
    assert_eq!(
        f.pipeline.purge_prefix("/vod/movies/").await,
        Purged { memory: 1, disk: 1 }
    );
    let r = f.pipeline.ask(get(SEGMENT, &[])).await;
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
            async move { f.pipeline.ask(get(SEGMENT, &[])).await }
        });
        while f.origin.held.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...while the object changes (replaced, as object stores do: the read in flight goes
        // on with the old bytes) and is purged.
        std::fs::write(f.dir.path().join("new.ts"), "new").unwrap();
        std::fs::rename(f.dir.path().join("new.ts"), &file).unwrap();
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
        let r = f.pipeline.ask(get(SEGMENT, &[])).await;
        assert_eq!(
            (
                r.body.clone().as_ref(),
                r.headers["x-cache"].to_str().unwrap()
            ),
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

/// A pipeline over any origin, with slices of `slice` bytes and no disk tier.
fn pipeline_over(origin: Arc<dyn Origin>, slice: u64) -> Pipeline {
    pipeline_with(origin, slice, 64, Duration::from_secs(120))
}

/// [`pipeline_over`] with `max_fills` and `fill_timeout`.
fn pipeline_with(
    origin: Arc<dyn Origin>,
    slice: u64,
    max_fills: usize,
    fill_timeout: Duration,
) -> Pipeline {
    let registry = prometheus::Registry::new();
    let cfg = PipelineConfig {
        cache: CacheConfig::default(),
        slice,
        manifest_ttl: Duration::from_secs(2),
        segment_ttl: Duration::from_secs(60),
        stale_if_error: Duration::from_secs(3600),
        cors_allow_origin: None,
        max_fills,
        fill_timeout,
    };
    Pipeline::new(
        vod_router(&registry),
        origin,
        None,
        cfg,
        PipelineMetrics::new(&registry).unwrap(),
    )
}

/// The real filesystem origin, recording every read (range, `If-Match`); a read's body can be
/// made to break off after some bytes, or to stop after its first chunk until released.
/// One read as the origin saw it: the range and the `If-Match` entity tag.
type Read = (Option<std::ops::Range<u64>>, Option<String>);

struct Recording {
    inner: StoreOrigin,
    opens: std::sync::Mutex<Vec<Read>>,
    /// The next body breaks off after this many bytes.
    cut_next: std::sync::Mutex<Option<u64>>,
    /// Bodies stop after their first chunk until this is notified.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Recording {
    fn new(root: &std::path::Path) -> Self {
        Self {
            inner: StoreOrigin::local(root, Duration::from_secs(5)).unwrap(),
            opens: Default::default(),
            cut_next: Default::default(),
            gate: None,
        }
    }

    /// One whose bodies stop after their first chunk until the returned gate gets a permit.
    fn gated(root: &std::path::Path) -> (Arc<Self>, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let origin = Self {
            gate: Some(gate.clone()),
            ..Self::new(root)
        };
        (Arc::new(origin), gate)
    }

    fn opens(&self) -> Vec<Read> {
        self.opens.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Origin for Recording {
    async fn open(
        &self,
        path: &str,
        range: Option<std::ops::Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<edge_origin::Opened, OriginError> {
        use futures::StreamExt;
        self.opens
            .lock()
            .unwrap()
            .push((range.clone(), if_match.map(str::to_owned)));
        let mut opened = self.inner.open(path, range, if_match).await?;
        // Small chunks, so cuts and gates fall inside the body.
        let body = opened
            .body
            .flat_map(|c| {
                let chunks: Vec<Result<Bytes, OriginError>> = match c {
                    Ok(b) => (0..b.len())
                        .step_by(4096)
                        .map(|i| Ok(b.slice(i..(i + 4096).min(b.len()))))
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(chunks)
            })
            .boxed();
        let cut = self.cut_next.lock().unwrap().take();
        let gate = self.gate.clone();
        let body = futures::stream::unfold(
            (body, 0u64, cut, gate, false),
            |(mut body, sent, cut, gate, mut opened_gate)| async move {
                if cut.is_some_and(|c| sent >= c) {
                    return None;
                }
                if sent > 0 && !opened_gate {
                    if let Some(g) = &gate {
                        // Returned at once: only bodies read before the release wait.
                        drop(g.acquire().await.unwrap());
                    }
                    opened_gate = true;
                }
                let item = body.next().await?;
                let n = item.as_ref().map_or(0, |b| b.len() as u64);
                Some((item, (body, sent + n, cut, gate, opened_gate)))
            },
        )
        .chain(futures::stream::iter(cut.map(|_| {
            Err(OriginError::Unavailable("connection reset (test)".into()))
        })))
        .boxed();
        opened.body = body;
        Ok(opened)
    }
    async fn check(&self) -> Result<(), OriginError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

/// `n` bytes of a pattern that differs from slice to slice.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 65_536) as u8).collect()
}

const BIG: &str = "/vod/movies/m1/movie.mp4";

fn movie_dir(len: usize) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vod/movies/m1")).unwrap();
    let body = pattern(len);
    std::fs::write(dir.path().join("vod/movies/m1/movie.mp4"), &body).unwrap();
    (dir, body)
}

/// `first` and the rest of `chunks`, which must not fail.
async fn drain(first: Bytes, mut chunks: edge_contract::BodyStream) -> Vec<u8> {
    use futures::StreamExt;
    let mut all = first.to_vec();
    while let Some(c) = chunks.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    all
}

async fn collect(r: EdgeResponse) -> Result<Bytes, edge_contract::BodyError> {
    r.body.collect(u64::MAX).await
}

#[tokio::test]
async fn objects_larger_than_a_slice_are_cached_and_served_slice_by_slice() {
    const SLICE: u64 = 64 << 10;
    let (dir, body) = movie_dir(1_000_000);
    let origin = Arc::new(Recording::new(dir.path()));
    let p = pipeline_over(origin.clone(), SLICE);

    let r = p.handle(get(BIG, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), Some(1_000_000));
    assert_eq!(r.headers["content-type"], "video/mp4");
    assert_eq!(collect(r).await.unwrap(), body);
    // One read per slice, each a range of one slice.
    let opens = origin.opens();
    assert_eq!(opens.len(), 1_000_000usize.div_ceil(SLICE as usize));
    for (i, (range, _)) in opens.iter().enumerate() {
        let start = i as u64 * SLICE;
        assert!(
            opens.iter().any(|(r, _)| r == &Some(start..start + SLICE)),
            "{i}: {range:?}"
        );
    }

    // A range across three slices, from memory.
    let r = p
        .handle(get(BIG, &[("range", "bytes=100000-299999")]))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 100000-299999/1000000");
    assert_eq!(r.headers["x-cache"], "HIT memory");
    assert_eq!(collect(r).await.unwrap(), &body[100_000..300_000]);
    let r = p.handle(get(BIG, &[("range", "bytes=-10")])).await;
    assert_eq!(collect(r).await.unwrap(), &body[999_990..]);
    let r = p.handle(get(BIG, &[("range", "bytes=1000000-")])).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], "bytes */1000000");
    assert_eq!(origin.opens().len(), opens.len(), "all from memory");
}

#[tokio::test]
async fn a_seek_into_a_cold_object_reads_only_the_slices_it_needs() {
    const SLICE: u64 = 64 << 10;
    let (dir, body) = movie_dir(1_000_000);
    let origin = Arc::new(Recording::new(dir.path()));
    let p = pipeline_over(origin.clone(), SLICE);
    let r = p
        .handle(get(BIG, &[("range", "bytes=700000-700099")]))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["x-cache"], "MISS origin");
    assert_eq!(collect(r).await.unwrap(), &body[700_000..700_100]);
    let start = 700_000 / SLICE * SLICE;
    assert_eq!(origin.opens(), vec![(Some(start..start + SLICE), None)]);
    // If-Range with another validator: the whole object, from the first slice on.
    let r = p
        .handle(get(
            BIG,
            &[("range", "bytes=700000-"), ("if-range", "\"other\"")],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(collect(r).await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_miss_streams_while_it_fills_and_late_viewers_follow_the_same_fill() {
    use futures::StreamExt;
    let (dir, body) = movie_dir(200_000);
    let (origin, gate) = Recording::gated(dir.path());
    let p = pipeline_over(origin.clone(), 4 << 20);

    // The first viewer gets its headers and first bytes while the origin holds the rest back.
    let first = p.handle(get(BIG, &[])).await;
    assert_eq!(
        (first.status.as_u16(), first.body.len()),
        (200, Some(200_000))
    );
    let edge_contract::Body::Stream { mut chunks, .. } = first.body else {
        panic!("a cold miss is streamed");
    };
    let head = tokio::time::timeout(Duration::from_secs(5), chunks.next())
        .await
        .expect("the first bytes before the fill ends")
        .unwrap()
        .unwrap();
    assert_eq!(&head[..], &body[..head.len()]);
    // A second viewer joins the same fill (no second read) and also gets its first bytes.
    let second = p.handle(get(BIG, &[])).await;
    assert_eq!(second.headers["x-cache"], "MISS origin coalesced");
    let edge_contract::Body::Stream {
        chunks: mut late, ..
    } = second.body
    else {
        panic!("the slice is still filling");
    };
    let late_head = late.next().await.unwrap().unwrap();
    assert_eq!(&late_head[..], &body[..late_head.len()]);
    gate.add_permits(1);
    assert_eq!(drain(head, chunks).await, body);
    assert_eq!(drain(late_head, late).await, body);
    assert_eq!(origin.opens().len(), 1, "one fill for both viewers");
    // Complete now: a hit, from memory. (Readers end when they have every byte; the fill task
    // marks the slice complete just after handing the last ones over, on another thread: a
    // request in between still joins the fill, as "coalesced".)
    let mut third = p.handle(get(BIG, &[])).await;
    for _ in 0..200 {
        if third.headers["x-cache"] != "MISS origin coalesced" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        third = p.handle(get(BIG, &[])).await;
    }
    assert_eq!(third.headers["x-cache"], "HIT memory");
    assert_eq!(collect(third).await.unwrap(), body);
    assert_eq!(origin.opens().len(), 1, "still the one fill");
}

#[tokio::test]
async fn a_body_that_breaks_off_is_resumed_with_a_range_for_the_same_version() {
    let (dir, body) = movie_dir(300_000);
    let origin = Arc::new(Recording::new(dir.path()));
    *origin.cut_next.lock().unwrap() = Some(100_000);
    let p = pipeline_over(origin.clone(), 4 << 20);
    let r = p.handle(get(BIG, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        collect(r).await.unwrap(),
        body,
        "one uninterrupted response"
    );
    let opens = origin.opens();
    assert_eq!(opens.len(), 2, "{opens:?}");
    let (range, etag) = &opens[1];
    let from = range.as_ref().unwrap().start;
    assert!(
        (100_000..=104_096).contains(&from),
        "resumed where it broke off: {from}"
    );
    assert_eq!(range.as_ref().unwrap().end, 300_000);
    assert!(etag.is_some(), "the same version (If-Match)");

    // The object changes while a body is broken off: the response is cut, never stitched.
    let (dir, _) = movie_dir(300_000);
    let (origin, gate) = Recording::gated(dir.path());
    *origin.cut_next.lock().unwrap() = Some(100_000);
    let p = pipeline_over(origin.clone(), 4 << 20);
    let r = p.handle(get(BIG, &[])).await;
    // Replaced the way object stores do: the old read goes on with the old bytes.
    let movie = dir.path().join("vod/movies/m1/movie.mp4");
    std::fs::write(dir.path().join("new.mp4"), pattern(300_001)).unwrap();
    std::fs::rename(dir.path().join("new.mp4"), &movie).unwrap();
    gate.add_permits(1);
    assert!(collect(r).await.is_err(), "cut");
    // The broken slice is not kept: the next viewer gets the new version whole.
    let r = p.handle(get(BIG, &[])).await;
    assert_eq!(collect(r).await.unwrap().len(), 300_001);
}

#[tokio::test]
async fn a_sparse_4_gib_object_is_served_by_range_without_reading_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vod/movies/m1")).unwrap();
    let file = std::fs::File::create(dir.path().join("vod/movies/m1/movie.mp4")).unwrap();
    let size: u64 = (4 << 30) + 12_345;
    file.set_len(size).unwrap();
    drop(file);
    let origin = Arc::new(Recording::new(dir.path()));
    let p = pipeline_over(origin.clone(), 4 << 20);
    let from = size - 5_000_000;
    let r = p
        .handle(get(BIG, &[("range", &format!("bytes={from}-"))]))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.headers["content-range"].to_str().unwrap(),
        format!("bytes {from}-{}/{size}", size - 1)
    );
    let got = collect(r).await.unwrap();
    assert_eq!(got.len(), 5_000_000);
    assert!(got.iter().all(|b| *b == 0));
    // Two slices (where the range starts, and the last), nothing before them.
    let opens = origin.opens();
    assert!(opens.len() <= 3, "{opens:?}");
    assert!(
        opens
            .iter()
            .all(|(r, _)| r.as_ref().unwrap().start >= from / (4 << 20) * (4 << 20))
    );
}

#[tokio::test]
async fn a_player_that_probes_and_hangs_up_costs_no_slice_ahead() {
    use futures::StreamExt;
    const SLICE: u64 = 4 << 20;
    let (dir, body) = movie_dir(9_000_000);
    let origin = Arc::new(Recording::new(dir.path()));
    let p = pipeline_over(origin.clone(), SLICE);
    let r = p.handle(get(BIG, &[("range", "bytes=0-")])).await;
    assert_eq!(r.status, 206);
    let edge_contract::Body::Stream { mut chunks, .. } = r.body else {
        panic!("a range across slices is streamed");
    };
    let first = chunks.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &body[..first.len()]);
    assert!((first.len() as u64) < SLICE / 2);
    drop(chunks);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(origin.opens().len(), 1, "only the slice it read");
    // Read on, and the next slice is asked for while the first is sent.
    let r = p.handle(get(BIG, &[("range", "bytes=0-5000000")])).await;
    assert_eq!(collect(r).await.unwrap(), &body[..=5_000_000]);
    assert_eq!(origin.opens().len(), 2);
}

/// With one fill allowed, a second slice waits for the first fill's place instead of reading
/// (and buffering) at the same time; then it is served, exactly.
#[tokio::test]
async fn fills_beyond_max_fills_wait_for_a_place() {
    let (dir, body) = movie_dir(200_000);
    let (origin, gate) = Recording::gated(dir.path());
    let p = Arc::new(pipeline_with(
        origin.clone(),
        64 << 10,
        1,
        Duration::from_secs(120),
    ));
    let first = p.handle(get(BIG, &[])).await;
    assert_eq!(origin.opens().len(), 1);
    let later = {
        let p = p.clone();
        tokio::spawn(async move {
            let r = p.handle(get(BIG, &[("range", "bytes=140000-")])).await;
            (r.status, collect(r).await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        origin.opens().len(),
        1,
        "the second slice waits for a place"
    );
    assert!(!later.is_finished());
    gate.add_permits(100);
    assert_eq!(collect(first).await.unwrap(), body);
    let (status, tail) = tokio::time::timeout(Duration::from_secs(5), later)
        .await
        .expect("served once the first fill is done")
        .unwrap();
    assert_eq!((status.as_u16(), &tail[..]), (206, &body[140_000..]));
}

/// An upstream that stops sending mid-slice is cut at `fill_timeout`: the viewer's body fails
/// (never a short 200), the slice is not kept, and the next viewer gets a new fill.
#[tokio::test]
async fn a_fill_that_outlasts_fill_timeout_is_cut() {
    let (dir, body) = movie_dir(200_000);
    let (origin, gate) = Recording::gated(dir.path());
    let p = pipeline_with(origin.clone(), 4 << 20, 64, Duration::from_secs(1));
    let stuck = p.handle(get(BIG, &[])).await;
    let cut = tokio::time::timeout(Duration::from_secs(5), collect(stuck))
        .await
        .expect("cut by fill_timeout");
    assert!(
        cut.is_err(),
        "a trickling fill ends in an error, not a short body"
    );
    gate.add_permits(100);
    let r = p.handle(get(BIG, &[])).await;
    assert_ne!(r.headers["x-cache"], "HIT memory");
    assert_eq!(collect(r).await.unwrap(), body);
    assert_eq!(origin.opens().len(), 2);
}

#[tokio::test]
async fn an_object_that_changes_mid_response_is_cut_never_stitched_and_then_served_anew() {
    const SLICE: u64 = 64 << 10;
    let (dir, body) = movie_dir(1_000_000);
    let origin = Arc::new(Recording::new(dir.path()));
    let p = pipeline_over(origin.clone(), SLICE);
    // The first slice is cached at the old version.
    let r = p.handle(get(BIG, &[("range", "bytes=0-999")])).await;
    assert_eq!(collect(r).await.unwrap(), &body[..1000]);
    let old = origin.opens()[0].clone();
    assert_eq!(old.1, None);

    // The object changes at the origin (same size, new bytes, new entity tag).
    std::thread::sleep(Duration::from_millis(20));
    let new: Vec<u8> = body.iter().map(|b| b ^ 0xff).collect();
    std::fs::write(dir.path().join("vod/movies/m1/movie.mp4"), &new).unwrap();
    let r = p.handle(get(BIG, &[])).await;
    assert_eq!(r.status, 200);
    let etag = r.headers["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert!(
        collect(r).await.is_err(),
        "a body stitched from two versions is never completed"
    );
    // Slice 1 of the new version, then slice 1 asked for the old version, which is gone.
    let opens = origin.opens();
    assert!(
        opens.contains(&(Some(SLICE..2 * SLICE), Some(etag.clone()))),
        "{opens:?}"
    );

    // Every cached slice of the old version was dropped: the next viewer gets the new one whole.
    let r = p.handle(get(BIG, &[])).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.headers["etag"].to_str().unwrap().trim_matches('"'), etag);
    assert_eq!(collect(r).await.unwrap(), new);
}
