//! The real `edge` binary, as an operator runs it: validate, sign-url, serve on port 0, SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const SECRET: &str = "cli-test-secret-0123456789abcdef";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `edge` run from the repository root with a private data directory and a known secret.
fn edge(data: &Path) -> Command {
    edge_guest_artifacts::path(edge_guest_artifacts::SIGNED_URL);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.current_dir(root())
        .env("SIGNED_URL_SECRET", SECRET)
        .env("EDGE_DATA_DIR", data)
        .env("RUST_LOG", "info")
        .env_remove("EDGE_CONFIG")
        .env_remove("EDGE_POLICIES");
    cmd
}

#[test]
fn validate_accepts_the_default_config() {
    let data = tempfile::tempdir().unwrap();
    let out = edge(data.path()).arg("validate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 policies, 3 routes"));
}

/// The platform chain validates once its variables are set, and names each one missing.
#[test]
fn validate_the_platform_policies() {
    let data = tempfile::tempdir().unwrap();
    let out = edge(data.path())
        .env("EDGE_POLICIES", "policies/platform.toml")
        .env("JWT_SECRET_KEY", "a-jwt-secret-for-the-test-0123456")
        .env("USER_SERVICE_URL", "http://127.0.0.1:9")
        .env("USER_SERVICE_TIMEOUT", "2")
        .env("REDIS_SUBSCRIPTION_CACHE_TTL", "300")
        .arg("validate")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 policies, 2 routes"));
    let out = edge(data.path())
        .env("EDGE_POLICIES", "policies/platform.toml")
        .env_remove("JWT_SECRET_KEY")
        .env_remove("USER_SERVICE_URL")
        .arg("validate")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Without JWT_SECRET_KEY the edge generates a development secret; the platform file does not
    // mark the user service optional, so its absence is an error there.
    for needle in [
        "platform.toml: `policies.subscription.outbound`: unknown variable ${USER_SERVICE_URL}",
        "platform.toml: `policies.subscription.config.url`: unknown variable ${USER_SERVICE_URL}",
    ] {
        assert!(stderr.contains(needle), "{needle} not in:\n{stderr}");
    }
}

/// Golden files: `policies/tests/invalid/NAME.toml` must fail `edge validate` with exactly
/// `NAME.err` on stderr (every problem, each with file and field).
#[test]
fn invalid_policies_match_their_golden_errors() {
    let data = tempfile::tempdir().unwrap();
    let dir = root().join("policies/tests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let rel = format!("policies/tests/invalid/{name}.toml");
        let out = edge(data.path())
            .env("EDGE_POLICIES", &rel)
            .arg("validate")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{rel} was accepted");
        let want = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{rel}");
        // `serve` refuses the same file before binding anything.
        let out = edge(data.path())
            .env("EDGE_POLICIES", &rel)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-tls",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "serve started with {rel}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("listening on"),
            "{rel}"
        );
        checked += 1;
    }
    assert!(checked >= 4, "golden files missing in {}", dir.display());
}

#[test]
fn every_config_error_is_listed_at_once() {
    let data = tempfile::tempdir().unwrap();
    let cfg = data.path().join("edge.toml");
    std::fs::write(&cfg, "[server]\nlisen = [\"127.0.0.1:1\"]\nthreads = \"many\"\n[cache]\nmemory = \"lots\"\n[nope]\nx = 1\n").unwrap();
    let out = edge(data.path())
        .env("SIGNED_URL_EXPIRATION", "soon")
        .env(
            "EDGE_POLICIES",
            "policies/tests/invalid/unknown-policy.toml",
        )
        .arg("validate")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    for want in [
        "<environment>: `SIGNED_URL_EXPIRATION`: expected an integer".to_string(),
        format!("{file}: `server.lisen`: unknown field"),
        format!("{file}: `server.threads`: invalid type"),
        format!("{file}: `cache.memory`: invalid value"),
        format!("{file}: `nope`: unknown section"),
        // The edge file names its policies file validly, so that is checked too.
        "policies/tests/invalid/unknown-policy.toml: `routes[0].chain`: unknown policy \"signed-url\"".to_string(),
        "edge: 8 error(s)".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
}

struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Served {
    fn start(data: &Path) -> (Self, String) {
        let mut served = Self::spawn(edge(data).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]));
        let http = served
            .wait_for("listening on http://")
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned();
        (served, http)
    }

    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Every listener logged, as `(label, http://addr)`, up to the admin one (logged last).
    fn listeners(&mut self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        loop {
            let line = self.wait_for("listening on ");
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "on").unwrap();
            let label = words[at + 2..].join(" ");
            let label = label.trim_matches(|c| c == '(' || c == ')').to_owned();
            found.push((label.clone(), words[at + 1].to_owned()));
            if label == "admin" {
                return found;
            }
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("edge never logged {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn get(base: &str, target: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

#[test]
fn serve_logs_its_listeners_answers_signed_urls_and_drains_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (mut served, http) = Served::start(data.path());
    let demo = served.wait_for("demo stream: ");
    let demo_url = demo
        .split("demo stream: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(demo_url.starts_with(&http), "{demo_url}");

    let out = edge(data.path())
        .args([
            "sign-url",
            "/vod/movies/demo/v1/index.m3u8",
            "--ttl",
            "60",
            "--base",
            &http,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let signed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, body) = get(&http, signed.trim_start_matches(&http));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("seg_000.ts?token="), "{body}");
    assert_eq!(get(&http, "/vod/movies/demo/v1/index.m3u8").0, 403);
    assert_eq!(get(&http, demo_url.trim_start_matches(&http)).0, 200);

    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    served.wait_for("stopped");
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "edge must exit 0 after draining");
}

/// `--role` picks what one process runs: a seeder-only process has no viewer listener, a bad
/// name is refused before anything starts.
#[test]
fn serve_runs_the_roles_it_is_given() {
    let data = tempfile::tempdir().unwrap();
    let out = edge(data.path())
        .args(["serve", "--role", "edge", "--role", "sedeer"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"--role: unknown role "sedeer""#),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");

    // A file without viewer listeners is invalid for the edge role, valid for a seeder-only one.
    let file = data.path().join("seeder.toml");
    std::fs::write(&file, "[server]\nlisten = []\ntls_listen = []\n").unwrap();
    let file = file.to_str().unwrap();
    let out = edge(data.path())
        .args(["validate", "--config", file])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the edge role has no listener"), "{stderr}");
    let mut served = Served::spawn(
        edge(data.path())
            .env("SEEDER_LISTEN", "127.0.0.1:0")
            .env("EDGE_POLICIES", "policies/default.toml")
            .env("EDGE_ORIGIN_ROOT", "deploy/demo/origin")
            .args(["serve", "--config", file, "--role", "seeder"])
            .args(["--admin-listen", "127.0.0.1:0"]),
    );
    let listeners = served.listeners();
    let labels: Vec<&str> = listeners.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["seeder", "admin"]);
    let (status, body) = get(&listeners[1].1, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""roles":["seeder"]"#), "{body}");
    // The seeder answers edges (a miss for a file it does not hold), not viewers' playlists.
    let (status, body) = get(&listeners[0].1, "/vod/movies/none/seg_000.ts");
    assert_eq!(status, 404, "{body}");
    drop(served);

    let mut served = Served::spawn(edge(data.path()).env("SEEDER_LISTEN", "127.0.0.1:0").args([
        "serve",
        "--role",
        "all",
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    let labels: Vec<String> = served.listeners().into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["http/1.1, h2c", "seeder", "admin"]);
}

/// `edge policy ...` run in `dir`; needs no edge config.
fn policy(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("EDGE_CONFIG")
        .env_remove("EDGE_POLICIES")
        .arg("policy");
    cmd
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_keygen_sign_and_validate_with_a_trusted_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let module = dir.join("p.wasm");
    std::fs::copy(
        edge_guest_artifacts::path(edge_guest_artifacts::SIGNED_URL),
        &module,
    )
    .unwrap();

    let out = policy(dir)
        .args(["keygen", "--out", "release"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let private = std::fs::metadata(dir.join("release.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&private.permissions()) & 0o777,
        0o600
    );
    assert!(dir.join("release.pub").is_file());
    let out = policy(dir)
        .args(["keygen", "--out", "release"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("release.pem already exists"),
        "{:?}",
        text(&out)
    );

    let validate = || {
        policy(dir)
            .args(["validate", "p.wasm", "--trusted-key", "release.pub"])
            .output()
            .unwrap()
    };
    let out = validate();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("unsigned module refused"),
        "{:?}",
        text(&out)
    );

    let out = policy(dir)
        .args(["sign", "--key", "release.pem", "p.wasm"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    let version = stdout.trim().rsplit("version ").next().unwrap().to_owned();
    assert!(
        version.starts_with("sha256:") && version.len() == 71,
        "{stdout}"
    );
    assert!(dir.join("p.wasm.sig").is_file());

    let out = validate();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "p.wasm: ok, version {version}, imports: edge:policy/"
        )),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(", signature ok"), "{stdout}");

    // Still a valid component (a custom section appended), but not the bytes that were signed.
    let mut bytes = std::fs::read(&module).unwrap();
    bytes.extend_from_slice(&[0, 6, 5, b't', b'a', b'm', b'p', b'!']);
    std::fs::write(&module, bytes).unwrap();
    let out = validate();
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("p.wasm: bad signature"), "{stderr}");
    let out = policy(dir).args(["validate", "p.wasm"]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    let out = policy(dir)
        .args(["validate", "release.pub"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("not a WebAssembly file"),
        "{:?}",
        text(&out)
    );
}

/// The template, as an author gets it: created, built for wasm32-wasip2 outside this workspace,
/// and passing its own fixtures. The build reuses one target directory under `target/`, so only
/// the first run compiles wit-bindgen (about a minute on two cores).
#[test]
fn policy_new_build_and_test_the_template() {
    let tmp = tempfile::tempdir().unwrap();
    let out = policy(tmp.path())
        .args(["new", "x", "--dir", "tmp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let krate = tmp.path().join("tmp/x");
    assert!(krate.join("wit/world.wit").is_file());
    let out = policy(tmp.path())
        .args(["new", "x", "--dir", "tmp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("already exists"), "{:?}", text(&out));

    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-kit-template");
    let out = policy(tmp.path())
        .args(["build", "tmp/x"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("built ")).unwrap();
    let (wasm, version) = line["built ".len()..].split_once(", version ").unwrap();
    assert!(wasm.ends_with("wasm32-wasip2/release/x.wasm"), "{line}");
    assert!(version.starts_with("sha256:"), "{line}");

    // From the crate's directory, with its default `fixtures/`.
    let out = policy(&krate).args(["test", wasm]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok allow\n"), "{stdout}");
    assert!(stdout.contains("ok missing-header\n"), "{stdout}");
    assert!(
        stdout.contains("2 fixtures: 2 passed, 0 failed"),
        "{stdout}"
    );
}
