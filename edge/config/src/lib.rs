//! Configuration of the edge: the edge file (`edge.toml`), the policies files (`policies/*.toml`),
//! and the environment variables that override them.
//!
//! Loading is strict and reports **every** problem at once: a syntax error, each unknown key, each
//! value of the wrong type and each semantic problem becomes one [`ConfigError`] naming the file and
//! the field. Nothing here starts anything; `edge validate` and `edge serve` run the same code.
//!
//! ```
//! use edge_config::{EdgeConfig, MapEnv};
//! let cfg = EdgeConfig::from_toml_str("edge.toml", "[server]\nlisten = [\"127.0.0.1:0\"]\n", &MapEnv::default()).unwrap();
//! assert_eq!(cfg.server.listen[0].port(), 0);
//! let errs = EdgeConfig::from_toml_str("edge.toml", "[server]\nlisen = 1\n[cache]\nmemory = \"lots\"\n", &MapEnv::default()).unwrap_err();
//! assert_eq!(errs.len(), 2);
//! ```

mod canary;
mod delivery;
mod edge;
mod env;
mod error;
mod policies;
mod roles;
mod section;
mod signaling;
mod streaming;

pub use canary::{CanaryMode, CanarySpec, RollbackSpec, Sticky};
pub use delivery::{
    CacheConfig, DiskCacheConfig, OriginConfig, OriginKind, RoutingConfig, S3Config, SeederConfig,
};
pub use edge::{
    EdgeConfig, PoliciesRef, RedisConfig, ServerConfig, SignedUrlConfig, TlsConfig, WasmConfig,
};
pub use env::{Env, MapEnv, ProcessEnv, Vars};
pub use error::{ConfigError, Errors};
pub use policies::{FailMode, Isolation, PolicySet, PolicySpec, RouteSpec, signature_path};
pub use roles::{Role, Roles};
pub use signaling::SignalingConfig;
pub use streaming::{EventsConfig, Fsync, KafkaConfig, ManifestUrls, StreamApiConfig};

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, time::Duration};

    /// `deploy/edge.example.toml` documents every field with its default: it must parse, and
    /// parse to the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/edge.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example =
            EdgeConfig::from_toml_str("edge.example.toml", &text, &MapEnv::default()).unwrap();
        let defaults =
            EdgeConfig::from_toml_str("edge.example.toml", "", &MapEnv::default()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = MapEnv::default()
            .with("SIGNED_URL_EXPIRATION", "60")
            .with("EDGE_LISTEN", "127.0.0.1:1, 127.0.0.1:2");
        let cfg =
            EdgeConfig::from_toml_str("e.toml", "[signed_url]\nexpiration = 5\n", &env).unwrap();
        assert_eq!(cfg.signed_url.expiration, 60);
        assert_eq!(cfg.server.listen.len(), 2);
    }

    #[test]
    fn every_error_at_once() {
        let text = "[server]\nlisen = 1\nthreads = 0\n[cache]\nmemory = \"lots\"\n[wasm]\ndeadline = \"1h\"\n[kafka]\nstall_timeout = \"30s\"\n[nope]\n";
        let errs = EdgeConfig::from_toml_str(
            "e.toml",
            text,
            &MapEnv::default().with("SIGNED_URL_EXPIRATION", "x"),
        )
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "SIGNED_URL_EXPIRATION",
                "server.lisen",
                "cache.memory",
                "nope",
                "server.threads",
                "wasm.deadline",
                "kafka.stall_timeout"
            ]
        );
    }

    #[test]
    fn the_kafka_stall_timeout_must_outlast_the_produce_request_timeout() {
        let none = MapEnv::default();
        let ok = "[kafka]\nstall_timeout = \"30s\"\n[kafka.properties]\n\"request.timeout.ms\" = \"20000\"\n\"socket.timeout.ms\" = \"25000\"\n";
        EdgeConfig::from_toml_str("e.toml", ok, &none).unwrap();
        let bad = "[kafka]\nstall_timeout = \"30s\"\n[kafka.properties]\n\"request.timeout.ms\" = \"45000\"\n";
        let errs = EdgeConfig::from_toml_str("e.toml", bad, &none).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["kafka.stall_timeout"]);
        let nan = "[kafka.properties]\n\"request.timeout.ms\" = \"soon\"\n";
        let errs = EdgeConfig::from_toml_str("e.toml", nan, &none).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["kafka.properties.\"request.timeout.ms\""]);
        assert_eq!(
            EdgeConfig::from_toml_str("e.toml", "", &none)
                .unwrap()
                .kafka
                .stall_timeout,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn signaling_runs_beside_the_edge_role_or_alone_on_a_valid_path() {
        let none = MapEnv::default();
        let cfg = EdgeConfig::from_toml_str("e.toml", "roles = [\"all\"]\n", &none).unwrap();
        assert!(cfg.runs(Role::Signaling));
        assert_eq!(cfg.signaling.tracker_path, "/ws/tracker");
        assert_eq!(cfg.signaling.path, "/ws/signaling");
        let alone =
            EdgeConfig::from_toml_str("e.toml", "roles = [\"signaling\"]\n", &none).unwrap();
        assert!(alone.runs(Role::Signaling) && !alone.runs(Role::Edge));
        // Alone, it needs a listener of its own.
        let text = "roles = [\"signaling\"]\n[server]\nlisten = []\ntls_listen = []\n\
                    [signaling]\ntracker_path = \"/ws/../x\"\n\
                    max_offers = 0\npath = \"/ws/../x\"\ntoken_protocol_prefix = \"a b\"\n\
                    room_grace = \"0s\"\n";
        let errs = EdgeConfig::from_toml_str("e.toml", text, &none).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "roles",
                "signaling.tracker_path",
                "signaling.path",
                "signaling.path",
                "signaling.token_protocol_prefix",
                "signaling.room_grace",
                "signaling.max_offers"
            ]
        );
        let text = "roles = [\"all\"]\n[signaling]\necho_path = \"/ws/signaling\"\n\
                    allowed_origins = [\"https://Player.Example.com:443/\", \"http://[::1]:3000\", \
                    \"player.example.com\", \"https://a.example/app\", \"https://a.example:0\", \
                    \"http://fe80::1:3000\"]\n\
                    subprotocols = [\"signaling\", \"a b\", \"access_token.x\", \"signaling\"]\n";
        let errs = EdgeConfig::from_toml_str("e.toml", text, &none).unwrap_err();
        let problems: Vec<_> = errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert!(problems[0].starts_with("signaling.echo_path: must differ"));
        let origins = ["player.example.com", "/app", ":0", "fe80::1"];
        for (p, what) in problems[1..5].iter().zip(origins) {
            assert!(
                p.starts_with("signaling.allowed_origins") && p.contains(what),
                "{p}"
            );
        }
        for (p, what) in problems[5..]
            .iter()
            .zip(["a b", "access_token.x", "signaling"])
        {
            assert!(
                p.starts_with("signaling.subprotocols") && p.contains(what),
                "{p}"
            );
        }
    }

    #[test]
    fn roles_come_from_the_file_the_environment_and_seeder_enabled() {
        let none = MapEnv::default();
        let cfg = EdgeConfig::from_toml_str("e.toml", "", &none).unwrap();
        assert_eq!(cfg.roles.to_string(), "edge");
        let cfg = EdgeConfig::from_toml_str("e.toml", "roles = [\"all\"]\n", &none).unwrap();
        assert!(cfg.runs(Role::Edge) && cfg.runs(Role::Seeder));
        // A seeder-only process needs no viewer listener.
        let text = "roles = [\"seeder\"]\n[server]\nlisten = []\ntls_listen = []\n";
        let cfg = EdgeConfig::from_toml_str("e.toml", text, &none).unwrap();
        assert_eq!(cfg.roles.to_string(), "seeder");
        let cfg = EdgeConfig::from_toml_str("e.toml", "[seeder]\nenabled = true\n", &none).unwrap();
        assert_eq!(cfg.roles.to_string(), "edge,seeder");
        let env = MapEnv::default().with("EDGE_ROLES", "seeder");
        let cfg = EdgeConfig::from_toml_str("e.toml", "roles = [\"edge\"]\n", &env).unwrap();
        assert_eq!(cfg.roles.to_string(), "seeder");
        // The environment (and `--role`, which goes through it) replaces `seeder.enabled` too.
        let env = MapEnv::default().with("EDGE_ROLES", "edge");
        let text = "[seeder]\nenabled = true\n";
        let cfg = EdgeConfig::from_toml_str("e.toml", text, &env).unwrap();
        assert_eq!(cfg.roles.to_string(), "edge");
    }

    #[test]
    fn bad_roles_name_the_field_with_the_other_errors() {
        let text = "roles = [\"edge\", \"sedeer\", \"edge\"]\n[server]\nthreads = 0\n";
        let errs = EdgeConfig::from_toml_str("e.toml", text, &MapEnv::default()).unwrap_err();
        let got: Vec<_> = errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("roles: ") && got[0].contains("sedeer"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("roles: ") && got[1].contains("twice"),
            "{got:?}"
        );
        assert!(got[2].starts_with("server.threads"), "{got:?}");
        // Only the edge role needs a viewer listener.
        let errs = EdgeConfig::from_toml_str(
            "e.toml",
            "[server]\nlisten = []\ntls_listen = []\n",
            &MapEnv::default(),
        )
        .unwrap_err();
        assert!(
            errs.to_string().contains("the edge role has no listener"),
            "{errs}"
        );
    }
}
