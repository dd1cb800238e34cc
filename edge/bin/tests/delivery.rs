//! Segment delivery across processes, as deployed: one edge and two seeders (`edge seeder`), all
//! real binaries, with a real `redis-server` holding the seeder directory and a real S3-compatible
//! server (`s3s-fs`) as the origin. ffmpeg plays through the edge while a seeder is killed.

use edge_testinfra::{Redis, S3};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn demo() -> PathBuf {
    root().join("deploy/demo/origin/vod/movies/demo")
}

/// Every file of the demo stream: (path below the stream directory, bytes).
fn demo_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in ["index.m3u8", "v0", "v1"] {
        let p = demo().join(entry);
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap();
                let name = format!("{entry}/{}", f.file_name().to_string_lossy());
                files.push((name, std::fs::read(f.path()).unwrap()));
            }
        } else {
            files.push((entry.to_owned(), std::fs::read(&p).unwrap()));
        }
    }
    files.sort();
    files
}

/// One running `edge` process, its stderr lines collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines already received, searched first: log lines of concurrent tasks come in any order.
    seen: std::cell::RefCell<Vec<String>>,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], config: &Path, env: &[(&str, String)]) -> Self {
        edge_guest_artifacts::path(edge_guest_artifacts::SIGNED_URL);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.current_dir(root())
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("EDGE_CONFIG")
            .env_remove("EDGE_POLICIES")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("EDGE_TEST_LOGS").is_some() {
                    eprintln!("[{name}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Default::default(),
            name,
        }
    }

    fn wait_for(&self, needle: &str) -> String {
        if let Some(line) = self.seen.borrow().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line.contains(needle) => {
                    self.seen.borrow_mut().push(line.clone());
                    return line;
                }
                Ok(line) => self.seen.borrow_mut().push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("{} exited before logging {needle:?}: {e}", self.name),
            }
        }
        panic!("{} never logged {needle:?}", self.name)
    }

    /// The address of the listener logged as `listening on http://ADDR (<label>)`.
    fn listener(&self, label: &str) -> String {
        let line = self.wait_for(&format!("({label})"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap();
        url.trim_start_matches("http://").to_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

fn request(addr: &str, method: &str, target: &str, extra: &str, body: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(addr: &str, target: &str) -> Response {
    request(addr, "GET", target, "", "")
}

const TOKEN: &str = "delivery-test-admin-token";

fn purge_all(admin: &str) -> String {
    let r = request(
        admin,
        "POST",
        "/admin/purge",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        r#"{"prefix":"/vod/"}"#,
    );
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}");
    body
}

/// A deployment: Redis, S3 with the demo stream, config files; processes are started by the test.
struct Cluster {
    redis: Redis,
    s3: S3,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cluster {
    fn new(extra: &str) -> Self {
        let redis = Redis::start();
        let s3 = S3::start("vod");
        for (name, bytes) in demo_files() {
            s3.put("vod", &format!("movies/demo/{name}"), &bytes);
        }
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies.toml");
        std::fs::write(
            &policies,
            "[[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\n",
        )
        .unwrap();
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
admin_token = "{TOKEN}"
demo_stream = ""
[policies]
file = "{}"
watch_interval = "0s"
[origin]
timeout = "1s"
retries = 1
retry_backoff = "50ms"
[seeder]
scan_interval = "1s"
key_ttl = "3s"
heartbeat_interval = "500ms"
[routing]
hedge_delay = "100ms"
probe_interval = "200ms"
heartbeat_stale = "3s"
{extra}
"#,
                policies.display()
            ),
        )
        .unwrap();
        Self {
            redis,
            s3,
            dir,
            config,
        }
    }

    fn env(&self, data: &str) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", self.redis.port().to_string()),
            ("S3_ENDPOINT_URL", self.s3.endpoint()),
            ("S3_BUCKET_NAME", "vod".into()),
            ("S3_ACCESS_KEY", S3::ACCESS_KEY.into()),
            ("S3_SECRET_KEY", S3::SECRET_KEY.into()),
            (
                "EDGE_DATA_DIR",
                self.dir.path().join(data).display().to_string(),
            ),
        ]
    }

    /// A seeder whose cache already holds the whole demo stream.
    fn seeder(&self, id: &'static str) -> (Proc, String) {
        self.seeder_with(id, &[])
    }

    /// A seeder whose cache holds the demo stream and `more` (paths below `/vod/movies/`).
    fn seeder_with(&self, id: &'static str, more: &[(String, Vec<u8>)]) -> (Proc, String) {
        let cache = self.dir.path().join(id);
        for (name, bytes) in more {
            let p = cache.join("vod/movies").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        for (name, bytes) in demo_files() {
            let p = cache.join("vod/movies/demo").join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let mut env = self.env(id);
        env.push(("SEEDER_CACHE_PATH", cache.display().to_string()));
        env.push(("SEEDER_ID", id.to_owned()));
        let p = Proc::spawn(
            id,
            &[
                "seeder",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &self.config,
            &env,
        );
        let addr = p.listener("seeder");
        p.wait_for("Seeder ready to serve peers");
        (p, addr)
    }

    /// The edge: (process, viewer address, admin address).
    fn edge(&self) -> (Proc, String, String) {
        let mut env = self.env("edge");
        env.push((
            "EDGE_DISK_CACHE_PATH",
            self.dir.path().join("edge-disk").display().to_string(),
        ));
        let p = Proc::spawn(
            "edge",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-tls",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &self.config,
            &env,
        );
        let http = p.listener("http/1.1, h2c");
        let admin = p.listener("admin");
        (p, http, admin)
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.redis.port()))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within 20 s");
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn an_edge_serves_from_seeders_found_in_redis_and_survives_a_seeder_killed_during_playback() {
    let cluster = Cluster::new("");
    let (mut seeder_a, _) = cluster.seeder("seeder-a");
    let (_seeder_b, addr_b) = cluster.seeder("seeder-b");

    // The directory as the replaced seeder wrote it.
    let mut conn = cluster.redis();
    let holders: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("stream:demo:segment:v0/seg_000.ts")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        holders
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["seeder-a", "seeder-b"].into()
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("stream:demo:segment:v0/seg_000.ts")
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 0, "segment keys carry a TTL: {ttl}");
    let seeders: Vec<String> = redis::cmd("SMEMBERS")
        .arg("stream:demo:seeders")
        .query(&mut conn)
        .unwrap();
    assert_eq!(seeders.len(), 2);
    let last_active: u64 = redis::cmd("HGET")
        .arg("seeder:seeder-a")
        .arg("lastActive")
        .query(&mut conn)
        .unwrap();
    assert!(last_active > 0);

    let (_edge, http, admin) = cluster.edge();
    let files = demo_files();
    let (name, bytes) = files.iter().find(|(n, _)| n.ends_with(".ts")).unwrap();
    let r = get(&http, &format!("/vod/movies/demo/{name}"));
    assert_eq!((r.status, r.header("x-cache")), (200, "MISS seeder"));
    assert_eq!(sha(&r.body), sha(bytes));
    let r = get(&http, &format!("/vod/movies/demo/{name}"));
    assert_eq!(r.header("x-cache"), "HIT memory");

    // ffmpeg plays in real time (-re) while seeder A is killed (SIGKILL) a moment in.
    purge_all(&admin);
    let out = cluster.dir.path().join("played.ts");
    let ffmpeg = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-re", "-i"])
        .arg(format!("http://{http}/vod/movies/demo/index.m3u8"))
        .args(["-map", "0", "-c", "copy", "-y"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg must be installed (deploy/dev/setup.sh --test installs it)");
    std::thread::sleep(Duration::from_millis(700));
    seeder_a.kill();
    let played = ffmpeg.wait_with_output_timeout();
    assert!(played.0, "ffmpeg failed: {}", played.1);
    assert!(std::fs::metadata(&out).unwrap().len() > 100_000);

    // Every file, fetched again from scratch, is complete and correct without seeder A. The purge
    // reaches seeder B too (a corrected object must not come back from a seeder's old copy).
    let purged: serde_json::Value = serde_json::from_str(&purge_all(&admin)).unwrap();
    assert!(
        purged["seeders"]["seeder-b"]["deleted"].as_u64().unwrap() > 0,
        "{purged}"
    );
    for (name, bytes) in &files {
        let r = get(&http, &format!("/vod/movies/demo/{name}"));
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(sha(&r.body), sha(bytes), "{name} arrived whole");
        assert!(
            r.header("x-cache").starts_with("MISS"),
            "{name}: {}",
            r.header("x-cache")
        );
    }
    let metrics = String::from_utf8(get(&admin, "/metrics").body).unwrap();
    assert!(
        metrics.contains(r#"edge_upstream_fills_total{result="ok",source="seeder"}"#),
        "{metrics}"
    );

    // Seeder B answers edges directly too, with the checksum edges verify.
    let r = get(&addr_b, &format!("/vod/movies/demo/{name}"));
    assert_eq!(
        (r.status, r.header("x-content-sha256")),
        (200, sha(bytes).as_str())
    );
}

/// `n` bytes that differ from slice to slice (an LCG).
fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// The value of the counter `name{labels}` in a Prometheus text page (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Flips a byte of `file` at `at`, keeping its size and mtime: rot the seeder's scan cannot see.
fn rot(file: &Path, at: usize) {
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(file, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn objects_of_many_slices_come_from_seeders_by_slice_verified_and_go_on_from_the_origin() {
    // 256 KiB slices: an object of 6 MiB + 1234 bytes is 25 of them.
    let cluster = Cluster::new("[cache]\nslice = \"256 KiB\"\n");
    let big = pseudo_random((6 << 20) + 1234);
    let names = ["whole.mp4", "range.mp4", "rotten.mp4", "killed.mp4"];
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (format!("big/{n}"), big.clone()))
        .collect();
    for (name, bytes) in &files {
        cluster.s3.put("vod", &format!("movies/{name}"), bytes);
    }
    // Seeder A's copy of rotten.mp4 rots in slice 5, B's in slice 9, after their scans.
    let (mut seeder_a, _) = cluster.seeder_with("seeder-a", &files);
    let (mut seeder_b, _) = cluster.seeder_with("seeder-b", &files);
    let cache = |id: &str| {
        cluster
            .dir
            .path()
            .join(id)
            .join("vod/movies/big/rotten.mp4")
    };
    rot(&cache("seeder-a"), 5 * (256 << 10) + 77);
    rot(&cache("seeder-b"), 9 * (256 << 10) + 77);

    // What the seeders published: the slice checksums of the content, 32 bytes a slice.
    let mut conn = cluster.redis();
    let list: Vec<u8> = redis::cmd("GET")
        .arg(format!("slices:{}:{}", sha(&big), 256 << 10))
        .query(&mut conn)
        .unwrap();
    assert_eq!(list.len(), 25 * 32);
    assert_eq!(
        &list[32..64],
        Sha256::digest(&big[256 << 10..512 << 10]).as_slice()
    );

    let (_edge, http, admin) = cluster.edge();
    let metrics = || String::from_utf8(get(&admin, "/metrics").body).unwrap();
    let seeder_fills = r#"edge_upstream_fills_total{result="ok",source="seeder"}"#;
    let origin_fills = r#"edge_upstream_fills_total{result="ok",source="origin"}"#;

    // Whole: every slice from the seeders, none from the origin.
    let r = get(&http, "/vod/movies/big/whole.mp4");
    assert_eq!((r.status, r.header("x-cache")), (200, "MISS seeder"));
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "whole object byte-exact");
    let m = metrics();
    assert_eq!(
        (counter(&m, seeder_fills), counter(&m, origin_fills)),
        (25, 0),
        "{m}"
    );

    // A range in the middle costs the slices it touches.
    let r = request(
        &http,
        "GET",
        "/vod/movies/big/range.mp4",
        "Range: bytes=1000000-3000000\r\n",
        "",
    );
    assert_eq!(r.status, 206);
    assert!(r.body == big[1_000_000..=3_000_000], "range byte-exact");
    let m = metrics();
    assert_eq!(counter(&m, seeder_fills), 25 + 9, "slices 3..=11: {m}");

    // Rotten slices are refused (checksum) and read from the other seeder or the origin.
    let r = get(&http, "/vod/movies/big/rotten.mp4");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "rotten copies never reach the viewer");
    let m = metrics();
    let errors: u64 = ["seeder-a", "seeder-b"]
        .iter()
        .map(|id| {
            counter(
                &m,
                &format!(r#"edge_upstream_fetches_total{{result="error",seeder="{id}"}}"#),
            )
        })
        .sum();
    assert!(errors >= 1, "the corrupt slice was caught: {m}");

    // Both seeders killed while a viewer reads: the rest comes from the origin, verified
    // against the seeders' slice checksums, in the same uninterrupted response.
    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /vod/movies/big/killed.mp4 HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![0; 600 << 10];
    s.read_exact(&mut raw).unwrap();
    seeder_a.kill();
    seeder_b.kill();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert_eq!(raw.len() - split - 4, big.len(), "no byte missing");
    assert!(
        raw[split + 4..] == big[..],
        "byte-identical across the kill"
    );
    let m = metrics();
    assert!(counter(&m, origin_fills) > 0, "{m}");
}

#[test]
fn redis_down_sends_edges_to_the_origin_and_both_recover_when_it_returns() {
    let mut cluster = Cluster::new("");
    let (_seeder, seeder_addr) = cluster.seeder("seeder-a");
    let (_edge, http, admin) = cluster.edge();
    let files = demo_files();
    let segments: Vec<_> = files.iter().filter(|(n, _)| n.ends_with(".ts")).collect();
    let r = get(&http, &format!("/vod/movies/demo/{}", segments[0].0));
    assert_eq!(r.header("x-cache"), "MISS seeder");

    let port = cluster.redis.port();
    cluster.redis.stop();
    purge_all(&admin);
    std::thread::sleep(Duration::from_millis(1100)); // the edge's directory cache lapses
    for (name, bytes) in &segments {
        let started = Instant::now();
        let r = get(&http, &format!("/vod/movies/demo/{name}"));
        assert_eq!(r.status, 200, "{name} without Redis");
        assert_eq!(sha(&r.body), sha(bytes));
        assert_eq!(r.header("x-cache"), "MISS origin");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let r = get(&seeder_addr, &format!("/vod/movies/demo/{}", segments[1].0));
    assert_eq!(r.status, 200, "the seeder serves without Redis");

    cluster.redis = Redis::start_on(port);
    eventually("the seeder republishes into the empty Redis", || {
        let mut conn = cluster.redis();
        let n: usize = redis::cmd("HLEN")
            .arg(format!("stream:demo:segment:{}", segments[1].0))
            .query(&mut conn)
            .unwrap_or(0);
        n == 1
    });
    eventually("the edge uses the seeder again", || {
        purge_all(&admin);
        get(&http, &format!("/vod/movies/demo/{}", segments[1].0)).header("x-cache")
            == "MISS seeder"
    });
}

#[test]
fn an_s3_outage_is_answered_with_stale_copies_and_502_for_what_was_never_cached() {
    let mut cluster = Cluster::new("[cache]\nsegment_ttl = \"1s\"\nmanifest_ttl = \"1s\"\n");
    let (_edge, http, _admin) = cluster.edge();
    let r = get(&http, "/vod/movies/demo/v0/seg_000.ts");
    assert_eq!((r.status, r.header("x-cache")), (200, "MISS origin"));
    let fresh = r.body;
    cluster.s3.stop();
    std::thread::sleep(Duration::from_millis(1200));
    let r = get(&http, "/vod/movies/demo/v0/seg_000.ts");
    // The disk tier is a victim cache: memory, which still holds the copy, answers.
    assert_eq!((r.status, r.header("x-cache")), (200, "STALE memory"));
    assert_eq!(r.header("warning"), "110 edge \"Response is Stale\"");
    assert!(r.header("age").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.body, fresh);
    let r = get(&http, "/vod/movies/demo/v0/seg_001.ts");
    assert!(
        r.status == 502 || r.status == 504,
        "never cached: {}",
        r.status
    );
    cluster.s3.restart();
    eventually("fresh copies once S3 is back", || {
        get(&http, "/vod/movies/demo/v0/seg_000.ts").header("x-cache") == "MISS origin"
    });
}

trait WaitTimeout {
    fn wait_with_output_timeout(self) -> (bool, String);
}

impl WaitTimeout for Child {
    fn wait_with_output_timeout(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status.success(), err);
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return (false, "ffmpeg timed out".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
