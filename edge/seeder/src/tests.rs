use super::*;
use bytes::Bytes;
use edge_contract::{EdgeRequest, EdgeResponse, Handler, Protocol};
use edge_kv::{RedisSettings, RedisStore};
use edge_origin::{Opened, OriginError, StoreOrigin};
use edge_testinfra::Redis;
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};
use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

fn directory(port: u16) -> Directory {
    Directory::new(Arc::new(
        RedisStore::new(RedisSettings::loopback(port, Duration::from_secs(1))).unwrap(),
    ))
}

fn config(cache: &Path) -> SeederConfig {
    SeederConfig {
        scan_interval: Duration::from_secs(3600),
        key_ttl: Duration::from_secs(60),
        heartbeat_interval: Duration::from_millis(100),
        ..SeederConfig::new("s1", cache, "127.0.0.1:7000")
    }
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn sha(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn seg(path: &str) -> SegmentRef {
    SegmentRef::from_path("/vod/movies/", path).unwrap()
}

fn request(method: Method, path: &str) -> EdgeRequest {
    EdgeRequest {
        method,
        path: path.into(),
        query: String::new(),
        headers: HeaderMap::new(),
        client_addr: IpAddr::from([127, 0, 0, 1]),
        protocol: Protocol::Http1,
        tls: false,
        body: edge_contract::RequestBody::empty(),
    }
}

async fn get(seeder: &Seeder, path: &str) -> EdgeResponse {
    seeder.handle(request(Method::GET, path)).await
}

fn header<'a>(r: &'a EdgeResponse, name: &str) -> &'a str {
    r.headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

async fn redis_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scan_publishes_renews_and_withdraws() {
    let redis = Redis::start();
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    write(root, "vod/movies/m1/720p/seg_001.ts", b"one");
    write(root, "vod/movies/m1/720p/seg_002.ts", b"two!");
    write(root, "vod/movies/m2/index.m3u8", b"#EXTM3U");
    write(root, "other/x.ts", b"outside the prefix");
    write(root, "vod/movies/m1/.hidden.ts", b"dotfile");
    let dir = directory(redis.port());
    let seeder = Seeder::new(
        config(root),
        Some(dir.clone()),
        None,
        &prometheus::Registry::new(),
    )
    .unwrap();
    assert!(!seeder.ready());

    let r = seeder.scan_once().await;
    assert_eq!(
        r,
        ScanReport {
            files: 4,
            bytes: 3 + 4 + 7 + 18,
            published: 3,
            withdrawn: 0,
            deleted: 0,
            directory_error: None,
        }
    );
    assert!(seeder.ready());
    let one = seg("/vod/movies/m1/720p/seg_001.ts");
    let holders = dir.holders(&one).await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].seeder_id, "s1");
    assert_eq!(holders[0].address, "127.0.0.1:7000");
    assert_eq!(holders[0].size, 3);
    assert_eq!(holders[0].checksum, sha(b"one"));
    assert!(holders[0].last_access > 0);
    let mut conn = redis_conn(redis.port()).await;
    assert_eq!(one.key(), "stream:m1:segment:720p/seg_001.ts");
    let ttl = pttl(&mut conn, &one.key()).await;
    assert!(ttl > 0 && ttl <= 60_000, "segment ttl {ttl}");
    let ttl = pttl(&mut conn, "stream:m1:seeders").await;
    assert!(ttl > 0, "seeders ttl {ttl}");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("stream:m1:seeders")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, vec!["s1".to_owned()]);
    let hidden: i64 = redis::cmd("EXISTS")
        .arg("stream:m1:segment:.hidden.ts")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(hidden, 0);

    // Checksums are remembered by size and mtime: a same-size rewrite with the old mtime is not
    // rehashed, a changed file is.
    let two = root.join("vod/movies/m1/720p/seg_002.ts");
    let mtime = std::fs::metadata(&two).unwrap().modified().unwrap();
    std::fs::write(&two, b"TWO!").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&two)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    seeder.scan_once().await;
    let two_seg = seg("/vod/movies/m1/720p/seg_002.ts");
    assert_eq!(
        dir.holders(&two_seg).await.unwrap()[0].checksum,
        sha(b"two!")
    );
    std::fs::write(&two, b"2").unwrap();
    seeder.scan_once().await;
    assert_eq!(dir.holders(&two_seg).await.unwrap()[0].checksum, sha(b"2"));

    // A file gone from disk is withdrawn by the next scan.
    redis::cmd("PEXPIRE")
        .arg(one.key())
        .arg(1000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    std::fs::remove_file(root.join("vod/movies/m1/720p/seg_001.ts")).unwrap();
    let r = seeder.scan_once().await;
    assert_eq!((r.files, r.published, r.withdrawn), (3, 2, 1));
    assert!(dir.holders(&one).await.unwrap().is_empty());
    assert_eq!(dir.holders(&two_seg).await.unwrap().len(), 1);
    // Republishing renewed the TTL of the remaining segment.
    assert!(pttl(&mut conn, &two_seg.key()).await > 30_000);
}

#[tokio::test]
async fn retention_deletes_old_files_and_withdraws_them() {
    let redis = Redis::start();
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    write(root, "vod/movies/old/a.ts", b"old");
    write(root, "vod/movies/new/a.ts", b"new");
    write(root, "vod/movies/served/a.ts", b"served");
    let dir = directory(redis.port());
    let registry = prometheus::Registry::new();
    let seeder = Seeder::new(
        SeederConfig {
            retention: Duration::from_secs(3600),
            ..config(root)
        },
        Some(dir.clone()),
        None,
        &registry,
    )
    .unwrap();
    assert_eq!(seeder.scan_once().await.published, 3);

    let past = SystemTime::now() - Duration::from_secs(2 * 3600);
    for old in ["vod/movies/old/a.ts", "vod/movies/served/a.ts"] {
        std::fs::File::options()
            .write(true)
            .open(root.join(old))
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
    // Serving a file counts as an access.
    assert_eq!(get(&seeder, "/vod/movies/served/a.ts").await.status, 200);

    let r = seeder.scan_once().await;
    assert_eq!((r.files, r.deleted, r.withdrawn, r.published), (2, 1, 1, 2));
    assert!(!root.join("vod/movies/old/a.ts").exists());
    assert!(
        !root.join("vod/movies/old").exists(),
        "empty directory left"
    );
    assert!(root.join("vod/movies/served/a.ts").exists());
    assert!(
        dir.holders(&seg("/vod/movies/old/a.ts"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        dir.holders(&seg("/vod/movies/new/a.ts"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get(&seeder, "/vod/movies/old/a.ts").await.status, 404);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(text.contains("edge_seeder_deleted_total 1"), "{text}");
}

#[tokio::test]
async fn handler_serves_files_with_checksums() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    let body = b"\x47segment bytes".repeat(100);
    write(root, "vod/movies/m1/720p/seg_001.ts", &body);
    write(root, "vod/movies/m1/notes.bin", b"x");
    write(root, "vod/movies/m1/.secret.ts", b"hidden");
    write(root, ".tmp/partial.ts", b"torn");
    let registry = prometheus::Registry::new();
    let seeder = Seeder::new(config(root), None, None, &registry).unwrap();

    let r = get(&seeder, "/vod/movies/m1/720p/seg_001.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, Bytes::from(body.clone()));
    assert_eq!(header(&r, "x-content-sha256"), sha(&body));
    assert_eq!(header(&r, "etag"), format!("\"{}\"", &sha(&body)[..32]));
    assert_eq!(header(&r, "content-type"), "video/mp2t");
    assert_eq!(header(&r, "x-seeder-id"), "s1");
    assert_eq!(header(&r, "x-cache"), "HIT seeder");
    // Percent-encoding and repeated slashes normalise to the same file.
    let r = get(&seeder, "//vod/movies/m1/720p/seg%5F001.ts").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&seeder, "/vod/movies/m1/notes.bin").await;
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    // A symbolic link could lead out of the cache directory: it is not served.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.ts", b"outside");
    std::os::unix::fs::symlink(
        outside.path().join("secret.ts"),
        root.join("vod/movies/m1/link.ts"),
    )
    .unwrap();
    let r = get(&seeder, "/vod/movies/m1/link.ts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        header(&r, "x-seeder-id"),
        "s1",
        "errors name the seeder too"
    );

    let r = seeder
        .handle(request(Method::HEAD, "/vod/movies/m1/720p/seg_001.ts"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "x-content-sha256"), sha(&body));

    let r = seeder
        .handle(request(Method::POST, "/vod/movies/m1/720p/seg_001.ts"))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    for bad in ["/vod/../etc/passwd", "/vod/%2e%2e/x", "/vod/a%2fb", "vod"] {
        assert_eq!(
            get(&seeder, bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    for missing in [
        "/vod/movies/m1/720p/seg_999.ts",
        "/vod/movies/m1/.secret.ts",
        "/.tmp/partial.ts",
        "/vod/movies/m1/",
        "/vod/movies/m1/720p/seg_001.ts/x.ts",
        "/",
        "/_seeder/other",
    ] {
        let r = get(&seeder, missing).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(
            r.body,
            Bytes::from_static(br#"{"error":"not_found","reason":"not_found"}"#),
            "{missing}"
        );
    }

    // Health: 503 until the first scan, then the counts.
    let r = get(&seeder, HEALTH_PATH).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    seeder.scan_once().await;
    let r = get(&seeder, HEALTH_PATH).await;
    assert_eq!(r.status, StatusCode::OK);
    let health: serde_json::Value = serde_json::from_slice(r.body_bytes().unwrap()).unwrap();
    assert_eq!(
        health,
        serde_json::json!({"seederId": "s1", "ready": true, "segments": 2, "bytes": body.len() + 1, "slice": 4 << 20})
    );

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"edge_seeder_requests_total{result="hit"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"edge_seeder_requests_total{result="not_found"} 8"#),
        "{text}"
    );
    assert!(
        text.contains(r#"edge_seeder_requests_total{result="error"} 5"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "edge_seeder_bytes_served_total {}",
            2 * body.len() + 1
        )),
        "{text}"
    );
    assert!(text.contains("edge_seeder_segments 2"), "{text}");
    assert!(text.contains("edge_seeder_ready 1"), "{text}");
}

/// An origin that counts reads and takes its time, so concurrent requests overlap.
struct Counting {
    inner: StoreOrigin,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl Origin for Counting {
    async fn open(
        &self,
        path: &str,
        range: Option<std::ops::Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<Opened, OriginError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.inner.open(path, range, if_match).await
    }

    async fn check(&self) -> Result<(), OriginError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "counting".into()
    }
}

struct Broken;

#[async_trait::async_trait]
impl Origin for Broken {
    async fn open(
        &self,
        _: &str,
        _: Option<std::ops::Range<u64>>,
        _: Option<&str>,
    ) -> Result<Opened, OriginError> {
        Err(OriginError::Unavailable("down".into()))
    }

    async fn check(&self) -> Result<(), OriginError> {
        Err(OriginError::Unavailable("down".into()))
    }

    fn describe(&self) -> String {
        "broken".into()
    }
}

async fn get_range(seeder: &Seeder, path: &str, range: &str) -> EdgeResponse {
    let mut req = request(Method::GET, path);
    req.headers
        .insert(http::header::RANGE, range.parse().unwrap());
    seeder.handle(req).await
}

#[tokio::test]
async fn slices_of_a_file_are_served_with_the_checksums_of_the_scan() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    // 3.5 slices of 1000 bytes; whole reads up to 1500 bytes.
    let body: Vec<u8> = (0..3500u32).map(|i| (i * 7 % 251) as u8).collect();
    write(root, "vod/movies/big/movie.mp4", &body);
    write(root, "vod/movies/big/small.ts", &body[..800]);
    let registry = prometheus::Registry::new();
    let cfg = SeederConfig {
        slice: 1000,
        max_object: 1500,
        ..config(root)
    };
    let seeder = Seeder::new(cfg, None, None, &registry).unwrap();
    let path = "/vod/movies/big/movie.mp4";
    // Not checksummed yet (no scan): not served by slice.
    let r = get_range(&seeder, path, "bytes=0-999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let report = seeder.scan_once().await;
    assert_eq!(report.files, 2);

    let whole = sha(&body);
    for (range, want) in [
        ("bytes=0-999", 0..1000),
        ("bytes=1000-1999", 1000..2000),
        ("bytes=3000-3499", 3000..3500),
        ("bytes=3000-", 3000..3500),
    ] {
        let r = get_range(&seeder, path, range).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        let part = &body[want.start..want.end];
        assert_eq!(r.body, Bytes::copy_from_slice(part), "{range}");
        assert_eq!(header(&r, "x-content-sha256"), sha(part), "{range}");
        assert_eq!(header(&r, "x-object-sha256"), whole);
        assert_eq!(header(&r, "etag"), format!("\"{}\"", &whole[..32]));
        assert_eq!(
            header(&r, "content-range"),
            format!("bytes {}-{}/3500", want.start, want.end - 1)
        );
        assert_eq!(header(&r, "x-cache"), "HIT seeder");
    }
    // Anything but one slice: 416 naming the size and the seeder's slice.
    for range in [
        "bytes=500-1499",
        "bytes=0-1999",
        "bytes=0-99",
        "bytes=0-0,2000-2999",
        "bytes=4000-4999",
        "pages=1",
    ] {
        let r = get_range(&seeder, path, range).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(header(&r, "content-range"), "bytes */3500", "{range}");
        assert_eq!(header(&r, "x-seeder-slice"), "1000", "{range}");
    }
    // Too large to be read whole; a file of one slice is its own only slice.
    assert_eq!(get(&seeder, path).await.status, StatusCode::BAD_GATEWAY);
    let r = get_range(&seeder, "/vod/movies/big/small.ts", "bytes=0-799").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "x-content-sha256"), sha(&body[..800]));
    assert_eq!(header(&r, "x-object-sha256"), sha(&body[..800]));
    // No pull for a slice of a file that is not here.
    let r = get_range(&seeder, "/vod/movies/big/other.mp4", "bytes=0-999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bytes that rot on disk after the scan (same size and mtime) are served with the checksum
    // of the scan, so the edge verifying them refuses them.
    let file = root.join("vod/movies/big/movie.mp4");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut rotten = body.clone();
    rotten[1500] ^= 0xff;
    std::fs::write(&file, &rotten).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = get_range(&seeder, path, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, Bytes::copy_from_slice(&rotten[1000..2000]));
    assert_eq!(header(&r, "x-content-sha256"), sha(&body[1000..2000]));
    assert_ne!(sha(&rotten[1000..2000]), sha(&body[1000..2000]));

    // A file replaced since the scan is not served by slice until a scan checksummed it.
    std::thread::sleep(Duration::from_millis(20));
    write(root, "vod/movies/big/movie.mp4", &rotten);
    let r = get_range(&seeder, path, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    seeder.scan_once().await;
    let r = get_range(&seeder, path, "bytes=1000-1999").await;
    assert_eq!(header(&r, "x-content-sha256"), sha(&rotten[1000..2000]));
    assert_eq!(header(&r, "x-object-sha256"), sha(&rotten));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_reads_the_origin_once_and_publishes() {
    let redis = Redis::start();
    let origin_dir = tempfile::tempdir().unwrap();
    let body = b"segment from the origin".repeat(1000);
    write(origin_dir.path(), "vod/movies/m9/1080p/seg_042.ts", &body);
    let counting = Arc::new(Counting {
        inner: StoreOrigin::local(origin_dir.path(), Duration::from_secs(5)).unwrap(),
        reads: AtomicUsize::new(0),
    });
    let cache = tempfile::tempdir().unwrap();
    let dir = directory(redis.port());
    let seeder = Seeder::new(
        SeederConfig {
            pull_through: true,
            ..config(cache.path())
        },
        Some(dir.clone()),
        Some(counting.clone()),
        &prometheus::Registry::new(),
    )
    .unwrap();

    let path = "/vod/movies/m9/1080p/seg_042.ts";
    let responses = futures::future::join_all((0..20).map(|_| {
        let seeder = seeder.clone();
        tokio::spawn(async move { get(&seeder, path).await })
    }))
    .await;
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, Bytes::from(body.clone()));
        assert_eq!(header(&r, "x-cache"), "MISS seeder-pull");
        assert_eq!(header(&r, "x-content-sha256"), sha(&body));
    }
    let stored = cache.path().join("vod/movies/m9/1080p/seg_042.ts");
    assert_eq!(std::fs::read(&stored).unwrap(), body);
    let tmp: Vec<_> = std::fs::read_dir(cache.path().join(files::TMP_DIR))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let segment = seg(path);
    eventually("the pulled segment's holding", async || {
        dir.holders(&segment).await.is_ok_and(|h| h.len() == 1)
    })
    .await;
    let holding = &dir.holders(&segment).await.unwrap()[0];
    assert_eq!(
        (holding.size, holding.checksum.as_str()),
        (body.len() as u64, sha(&body).as_str())
    );

    // Now a hit; a segment missing at the origin is 404 without being stored.
    let r = get(&seeder, path).await;
    assert_eq!(header(&r, "x-cache"), "HIT seeder");
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
    assert_eq!(
        get(&seeder, "/vod/movies/m9/1080p/nope.ts").await.status,
        404
    );
    assert!(!cache.path().join("vod/movies/m9/1080p/nope.ts").exists());
    // Outside the streams prefix nothing is pulled.
    assert_eq!(get(&seeder, "/elsewhere/a.ts").await.status, 404);
    assert_eq!(counting.reads.load(Ordering::SeqCst), 2);
    // The next scan keeps publishing it.
    let r = seeder.scan_once().await;
    assert_eq!((r.files, r.published, r.withdrawn), (1, 1, 0));
}

#[tokio::test]
async fn pull_through_failures_and_no_pull_through() {
    let cache = tempfile::tempdir().unwrap();
    let broken = Seeder::new(
        SeederConfig {
            pull_through: true,
            ..config(cache.path())
        },
        None,
        Some(Arc::new(Broken)),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let r = get(&broken, "/vod/movies/m1/a.ts").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(!cache.path().join("vod/movies/m1/a.ts").exists());

    let origin_dir = tempfile::tempdir().unwrap();
    write(origin_dir.path(), "vod/movies/m1/a.ts", b"a");
    let plain = Seeder::new(
        config(cache.path()),
        None,
        Some(Arc::new(
            StoreOrigin::local(origin_dir.path(), Duration::from_secs(5)).unwrap(),
        )),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let r = get(&plain, "/vod/movies/m1/a.ts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.body,
        Bytes::from_static(br#"{"error":"not_found","reason":"not_found"}"#)
    );
}

#[tokio::test]
async fn redis_down_then_back() {
    let mut redis = Redis::start();
    let port = redis.port();
    let cache = tempfile::tempdir().unwrap();
    write(cache.path(), "vod/movies/m1/a.ts", b"a");
    let dir = directory(port);
    let registry = prometheus::Registry::new();
    let seeder = Seeder::new(config(cache.path()), Some(dir.clone()), None, &registry).unwrap();
    assert_eq!(seeder.scan_once().await.published, 1);

    redis.stop();
    write(cache.path(), "vod/movies/m1/b.ts", b"b");
    let started = Instant::now();
    let r = seeder.scan_once().await;
    assert!(r.directory_error.is_some(), "{r:?}");
    assert_eq!((r.files, r.published), (2, 0));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(seeder.ready());
    let r = get(&seeder, "/vod/movies/m1/b.ts").await;
    assert_eq!(
        (r.status, &r.body_bytes().unwrap()[..]),
        (StatusCode::OK, &b"b"[..])
    );

    // A restarted Redis is empty: the next successful scan publishes everything again.
    let _redis = Redis::start_on(port);
    eventually("a scan reaching the restarted redis", async || {
        seeder.scan_once().await.directory_error.is_none()
    })
    .await;
    for p in ["/vod/movies/m1/a.ts", "/vod/movies/m1/b.ts"] {
        assert_eq!(dir.holders(&seg(p)).await.unwrap().len(), 1, "{p}");
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        !text.contains("edge_seeder_directory_errors_total 0"),
        "{text}"
    );
}

#[tokio::test]
async fn heartbeat_republishes_after_an_outage_and_shutdown_deregisters() {
    let mut redis = Redis::start();
    let port = redis.port();
    let cache = tempfile::tempdir().unwrap();
    write(cache.path(), "vod/movies/m1/a.ts", b"a");
    write(cache.path(), "vod/movies/m2/b.ts", b"bb");
    let dir = directory(port);
    let seeder = Seeder::new(
        config(cache.path()),
        Some(dir.clone()),
        None,
        &prometheus::Registry::new(),
    )
    .unwrap();
    let task = seeder.spawn();
    eventually("ready", async || seeder.ready()).await;

    let mut conn = redis_conn(port).await;
    let status: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("seeder:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let last_active: u64 = status["lastActive"].parse().unwrap();
    assert!(last_active >= seeder.started_at, "{status:?}");
    assert_eq!(status["address"], "127.0.0.1:7000");
    assert_eq!(status["segments"], "2");
    assert_eq!(status["bytes"], "3");
    let ttl = pttl(&mut conn, "seeder:s1").await;
    assert!(ttl > 0 && ttl <= 300, "heartbeat ttl {ttl}");
    let seeders = dir.seeders().await.unwrap();
    assert_eq!(seeders.len(), 1);
    assert_eq!(get(&seeder, HEALTH_PATH).await.status, StatusCode::OK);

    // Scans are hourly here: after Redis restarts, the heartbeat republishes the holdings.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis = Redis::start_on(port);
    eventually("holdings republished by the heartbeat", async || {
        dir.holders(&seg("/vod/movies/m1/a.ts"))
            .await
            .is_ok_and(|h| h.len() == 1)
            && dir
                .holders(&seg("/vod/movies/m2/b.ts"))
                .await
                .is_ok_and(|h| h.len() == 1)
    })
    .await;

    seeder.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops")
        .unwrap();
    assert!(!seeder.ready());
    assert_eq!(
        get(&seeder, HEALTH_PATH).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        dir.holders(&seg("/vod/movies/m1/a.ts"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        dir.holders(&seg("/vod/movies/m2/b.ts"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(dir.seeders().await.unwrap().is_empty());
    let mut conn = redis_conn(port).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("seeder:s1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // Nothing comes back after shutdown; files are still served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        exists,
        redis::cmd("EXISTS")
            .arg("seeder:s1")
            .query_async::<i64>(&mut conn)
            .await
            .unwrap()
    );
    assert_eq!(
        get(&seeder, "/vod/movies/m1/a.ts").await.status,
        StatusCode::OK
    );
}

#[test]
fn settings_are_checked() {
    let cache = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    for bad in [
        SeederConfig {
            streams_prefix: "vod/".into(),
            ..config(cache.path())
        },
        SeederConfig {
            id: String::new(),
            ..config(cache.path())
        },
        SeederConfig {
            scan_interval: Duration::ZERO,
            ..config(cache.path())
        },
    ] {
        assert!(matches!(
            Seeder::new(bad, None, None, &registry),
            Err(SeederError::Config(_))
        ));
    }
    // The cache directory is created, leftovers of interrupted pulls removed.
    let nested = cache.path().join("a/b");
    write(&nested, ".tmp/leftover", b"x");
    Seeder::new(config(&nested), None, None, &registry).unwrap();
    assert!(!nested.join(".tmp").exists());
    // Metrics register once per registry.
    assert!(matches!(
        Seeder::new(config(&nested), None, None, &registry),
        Err(SeederError::Metrics(_))
    ));
}

#[tokio::test]
async fn purges_need_the_token_and_delete_files() {
    let cache = tempfile::tempdir().unwrap();
    let root = cache.path();
    write(root, "vod/movies/m1/a.ts", b"a");
    write(root, "vod/movies/m1/b.ts", b"b");
    write(root, "vod/movies/m2/a.ts", b"c");
    let registry = prometheus::Registry::new();
    let cfg = SeederConfig {
        purge_token: Some("seeder-purge-token-0123".into()),
        ..config(root)
    };
    let seeder = Seeder::new(cfg, None, None, &registry).unwrap();
    let purge = |auth: &'static str, body: &'static str| {
        let mut req = request(Method::POST, PURGE_PATH);
        req.headers
            .insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        req.body = edge_contract::RequestBody::full(Bytes::from_static(body.as_bytes()));
        seeder.handle(req)
    };
    let r = purge("Bearer wrong", r#"{"prefix":"/vod/"}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = purge(
        "Bearer seeder-purge-token-0123",
        r#"{"path":"/vod/movies/m2/a.ts"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.body_bytes().unwrap().as_ref()),
        (StatusCode::OK, &br#"{"deleted":1}"#[..])
    );
    let r = purge(
        "Bearer seeder-purge-token-0123",
        r#"{"prefix":"/vod/movies/m1/"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.body_bytes().unwrap().as_ref()),
        (StatusCode::OK, &br#"{"deleted":2}"#[..])
    );
    assert_eq!(
        get(&seeder, "/vod/movies/m1/a.ts").await.status,
        StatusCode::NOT_FOUND
    );
    let r = purge("Bearer seeder-purge-token-0123", r#"{"prefix":"/"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let open = Seeder::new(config(root), None, None, &prometheus::Registry::new()).unwrap();
    let mut req = request(Method::POST, PURGE_PATH);
    req.body = edge_contract::RequestBody::full(Bytes::from_static(br#"{"prefix":"/vod/"}"#));
    assert_eq!(
        open.handle(req).await.status,
        StatusCode::FORBIDDEN,
        "no token, no purge"
    );
}
