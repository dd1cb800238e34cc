//! Real services for tests (`redis-server`, `s3s-fs`, the `tansu` Kafka-protocol broker), each
//! started on a free `127.0.0.1` port and stopped (killed and reaped) when its handle drops.
//! The binaries come from the test command's set-up (`deploy/dev/setup.sh --test` installs
//! them); a missing binary fails the test with that hint.
//!
//! [`UserService`] is different: it stands for an external system the edge does not ship (the
//! user service that knows subscriptions), so it is a small HTTP server of the tests themselves.
//!
//! ```no_run
//! let redis = edge_testinfra::Redis::start();
//! println!("redis on port {}", redis.port());
//! ```

mod kafka;
mod relay;
mod user_service;

pub use kafka::{Consumed, Tansu, consume, produce};
pub use user_service::UserService;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 10 s");
}

/// A `redis-server` process (no persistence) on a free loopback port.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server`. Panics with an install hint when the binary is missing.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts `redis-server` on `port` (to restart one on the port a client already knows).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); deploy/dev/test.sh installs it (apt redis-server)")
            });
        wait_for_port(port, &mut child, "redis-server");
        Self {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server now (the handle stays, e.g. to restart on the same port).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `s3s-fs` S3-compatible server on a free loopback port, over a temporary directory. Buckets
/// are directories of [`S3::root`]; credentials are [`S3::ACCESS_KEY`] / [`S3::SECRET_KEY`] and
/// signatures are checked.
#[derive(Debug)]
pub struct S3 {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl S3 {
    /// Access key the server accepts.
    pub const ACCESS_KEY: &'static str = "AKIAEDGETEST";
    /// Secret key the server accepts.
    pub const SECRET_KEY: &'static str = "edge-test-secret-key";

    /// Starts `s3s-fs` with an empty bucket `bucket`. Panics with an install hint when the binary
    /// is missing.
    pub fn start(bucket: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join(bucket)).expect("bucket dir");
        let mut s3 = Self {
            child: None,
            port: free_port(),
            dir,
        };
        s3.restart();
        s3
    }

    /// Starts the server again on the same port and directory (after [`S3::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run s3s-fs ({e}); deploy/dev/setup.sh --test installs it (cargo install s3s-fs@0.14.1)")
            });
        wait_for_port(self.port, &mut child, "s3s-fs");
        self.child = Some(child);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding the buckets: `root/<bucket>/<key>` is an object.
    pub fn root(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes an object directly into the server's directory.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = self.dir.path().join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("key has a parent")).expect("object dir");
        std::fs::write(path, body).expect("write object");
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Python's `http.server` over a directory on a free loopback port: a plain HTTP origin that
/// ignores `Range` (it answers every GET with 200 and the whole file, as many simple servers do).
#[derive(Debug)]
pub struct PlainHttp {
    child: Child,
    port: u16,
}

impl PlainHttp {
    /// Serves `dir`. Panics with an install hint when `python3` is missing.
    pub fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}); deploy/dev/test.sh installs it (apt python3)")
            });
        wait_for_port(port, &mut child, "python3 -m http.server");
        Self { child, port }
    }

    /// Its base URL (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PlainHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
