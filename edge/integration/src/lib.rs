//! Test kit for the edge's integration tests: starts a whole edge in-process on port 0 with the
//! repository's default policies and demo stream, and builds clients for it.

use edge_config::{EdgeConfig, MapEnv};
use std::path::{Path, PathBuf};

/// The signing secret every test edge uses.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A running test edge and the temporary directory holding its state.
pub struct TestEdge {
    /// The edge.
    pub edge: edge_app::Edge,
    /// Its data directory (dev certificate).
    pub data: tempfile::TempDir,
    cfg: EdgeConfig,
}

impl TestEdge {
    /// Starts an edge on 127.0.0.1 port 0 (plain, TLS and admin) with `extra` TOML appended to the
    /// config, right after its `[policies]` table (so bare keys such as `watch_interval = "0s"`
    /// land in it; start `extra` with a table header for anything else). Guests are built first (by `edge-guest-artifacts`). Policy calls get a 100 ms
    /// deadline: the deadline is wall-clock time, and tests share two cores with each other.
    pub async fn start(extra: &str) -> anyhow::Result<Self> {
        Self::start_with_policies(&repo_root().join("policies/default.toml"), extra).await
    }

    /// Like [`TestEdge::start`], with another policies file.
    pub async fn start_with_policies(policies: &Path, extra: &str) -> anyhow::Result<Self> {
        Self::start_with_env(policies, extra, &[]).await
    }

    /// Like [`TestEdge::start_with_policies`], with environment overrides (`EDGE_ADMIN_TOKEN`, ...)
    /// given as a map rather than through the process environment.
    pub async fn start_with_env(
        policies: &Path,
        extra: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        edge_guest_artifacts::path(edge_guest_artifacts::SIGNED_URL);
        let data = tempfile::tempdir()?;
        let root = repo_root();
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
             data_dir = {data:?}\ndrain_timeout = \"5s\"\n\
             [wasm]\ndeadline = \"100ms\"\n[origin]\nroot = {origin:?}\n[policies]\nfile = {policies:?}\n{extra}",
            data = data.path().display().to_string(),
            origin = root.join("deploy/demo/origin").display().to_string(),
            policies = policies.display().to_string(),
        );
        let env = vars.iter().fold(
            MapEnv::default().with("SIGNED_URL_SECRET", SECRET),
            |env, (k, v)| env.with(k, v),
        );
        let cfg = EdgeConfig::from_toml_str("test-edge.toml", &toml, &env)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let edge = edge_app::Edge::start(cfg.clone()).await?;
        Ok(Self { edge, data, cfg })
    }

    /// Drains this edge and starts it again with the same config and data directory (new
    /// ports), as an operator's restart would.
    pub async fn restart(self) -> anyhow::Result<Self> {
        let Self { edge, data, cfg } = self;
        edge.shutdown().await;
        // Connection tasks of clients that kept their connections open still hold the old
        // edge's handles (its event spool stays locked) until those connections close.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match edge_app::Edge::start(cfg.clone()).await {
                Ok(edge) => return Ok(Self { edge, data, cfg }),
                Err(e)
                    if format!("{e:#}").contains("in use")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:PORT` of the plain listener.
    pub fn http(&self) -> String {
        format!("http://{}", self.edge.addrs().http[0])
    }

    /// `https://127.0.0.1:PORT` of the TLS listener.
    pub fn https(&self) -> String {
        format!("https://{}", self.edge.addrs().https[0])
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin(&self) -> String {
        format!("http://{}", self.edge.addrs().admin)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin());
        client()
            .get(url)
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("metrics body")
    }
}

/// A token for `scope` valid for `ttl` seconds (negative: already expired).
pub fn token(scope: &str, ttl: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let grant = edge_urlsig::Grant {
        expires: (now + ttl) as u64,
        scope: scope.into(),
        client_addr: None,
    };
    edge_urlsig::Key::new(SECRET.as_bytes()).sign(&grant)
}

/// An HS256 JWT for `sub` signed with `secret`, valid for `ttl` seconds (negative: expired).
pub fn jwt(secret: &str, sub: &str, ttl: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            exp: now + ttl,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a JWT of a string and a number encodes")
}

impl TestEdge {
    /// A JWT for `sub` valid for 10 minutes, signed with this edge's development secret (no
    /// `JWT_SECRET_KEY` set).
    pub fn dev_jwt(&self, sub: &str) -> String {
        let secret = std::fs::read_to_string(self.data.path().join("dev-jwt-secret"))
            .expect("the development JWT secret");
        jwt(secret.trim(), sub, 600)
    }
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
}

/// The JWT secret of the edges [`clustered`] starts.
pub const CLUSTER_SECRET: &str = "two-edges-share-this-secret-32-bytes!";

/// An edge with the signaling role in the cluster on the redis-server at `redis_port`, as node
/// `node`, once its `/health` says it is clustered.
pub async fn clustered(redis_port: u16, node: &str) -> TestEdge {
    clustered_as(redis_port, node, "edge,signaling").await
}

/// Like [`clustered`], running `roles` (`EDGE_ROLES`: `signaling` alone, for one).
pub async fn clustered_as(redis_port: u16, node: &str, roles: &str) -> TestEdge {
    let port = redis_port.to_string();
    let edge = TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "",
        &[
            ("EDGE_ROLES", roles),
            ("JWT_SECRET_KEY", CLUSTER_SECRET),
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", &port),
            ("NODE_ID", node),
        ],
    )
    .await
    .expect("edge starts");
    // It says who it is and that it is clustered (once subscribed).
    let url = format!("http://{}/health", edge.edge.addrs().http[0]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let body = client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["nodeId"], node, "{health}");
        if health["signaling"] == "clustered" {
            return edge;
        }
        assert!(tokio::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
