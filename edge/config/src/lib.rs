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

mod edge;
mod env;
mod error;
mod policies;
mod section;

pub use edge::{
    CacheConfig, EdgeConfig, OriginConfig, PoliciesRef, ServerConfig, SignedUrlConfig, TlsConfig,
    WasmConfig,
};
pub use env::{Env, MapEnv, ProcessEnv};
pub use error::{ConfigError, Errors};
pub use policies::{FailMode, Isolation, PolicySet, PolicySpec, RouteSpec};
