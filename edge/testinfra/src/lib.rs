//! Real services for tests, each started on a free `127.0.0.1` port and stopped (killed and
//! reaped) when its handle drops. The binaries come from the test command's set-up
//! (`deploy/dev/test.sh` installs them); a missing binary fails the test with that hint.
//!
//! [`UserService`] is different: it stands for an external system the edge does not ship (the
//! user service that knows subscriptions), so it is a small HTTP server of the tests themselves.
//!
//! ```no_run
//! let redis = edge_testinfra::Redis::start();
//! println!("redis on port {}", redis.port());
//! ```

mod user_service;

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
