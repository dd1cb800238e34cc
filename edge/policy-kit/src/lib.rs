//! The policy author kit: everything `edge policy ...` does, as a library.
//!
//! | command | function | what it does |
//! |---|---|---|
//! | `edge policy new NAME [--dir DIR]` | [`new_policy`] | a standalone guest crate from the template |
//! | `edge policy build [DIR]` | [`build`] | `cargo build --release --target wasm32-wasip2`, then the component's path and version |
//! | `edge policy test MODULE [--fixtures DIR] [--bless]` | [`test_module`] | runs the module on every fixture and compares each decision to its golden file |
//! | `edge policy validate MODULE [--trusted-key PUB]...` | [`validate`] | loads the module as the edge would (world, limits, signature) |
//! | `edge policy keygen --out PREFIX` | [`keygen`] | an ed25519 key pair, `PREFIX.pem` (0600) and `PREFIX.pub` |
//! | `edge policy sign --key PREFIX.pem MODULE` | [`sign`] | `MODULE.sig` beside the module |
//!
//! Nothing here re-implements the edge: modules are loaded and run by the real policy runtime
//! ([`edge_policy::PolicyRuntime`]), with the edge's linker, limits and fail-closed handling. Only
//! the world around the guest is replaced: a fixed clock, an in-memory key-value store filled from
//! the fixture, and outbound HTTP answered from a script.
//!
//! # Fixtures
//!
//! A fixture is a TOML file, `NAME.toml`, describing one request and the world it meets. Its
//! expected decision is `NAME.golden.json` beside it. Every key is optional except
//! `request.path`; unknown keys are errors, and every error names the file and the field.
//!
//! ```toml
//! now_ms = 1700000000000              # what clock.now-millis returns (default: this value)
//!
//! [config]                            # the policy's config (config.get); strings, numbers, booleans
//! header = "x-api-key"
//!
//! [request]
//! method = "GET"                      # default GET
//! path = "/vod/a.m3u8"                # required
//! query = ""                          # without `?`; default empty
//! client_addr = "203.0.113.7"         # default 127.0.0.1
//! route = "vod"                       # default "fixture"
//! headers = { "x-api-key" = "k" }     # the policy sees all of them (names lower-cased);
//!                                     # a list of strings sends a header several times
//! context = { sub = "u1" }            # as left by earlier policies of the chain
//!
//! [kv]                                # initial entries, in both scopes (local and shared)
//! "sub:u1" = '{"active":true,"at_ms":1700000000000}'
//!
//! [[http]]                            # scripted outbound answers, matched by method and URL
//! method = "GET"                      # GET (default) or POST
//! url = "http://users.test/api/v1/users/u1/subscription"
//! status = 200                        # default 200
//! headers = { "content-type" = "application/json" }
//! body = '{"active":true}'            # default empty
//! # or, instead of status/headers/body: error = "timeout" | "failed" | "too_large"
//! ```
//!
//! - Each `[[http]]` entry answers one request; several requests to one URL take the matching
//!   entries in file order. A request without an answer left is answered `failed` and marked
//!   `unscripted` in the output. The policy's outbound allow-list is the set of origins of the
//!   scripted URLs, so a request to any other origin is refused by the host (`denied`), exactly as
//!   the edge refuses an origin missing from `outbound`.
//! - Each fixture runs on fresh instances of the module, with its own key-value namespace: nothing
//!   carries over from one fixture to the next.
//! - A guest gets a generous deadline ([`DEADLINE`]) so results do not depend on the machine's
//!   load. A trap, a timeout or an invalid decision is answered as the edge answers it with
//!   `fail = "closed"`: a 503 deny with reason `policy_trap`, `policy_timeout`, ... That is a
//!   fine golden value for a test of a guest that must fail.
//!
//! # Golden files
//!
//! `NAME.golden.json` holds the decision and the outbound requests the policy made, one pair or
//! request per line so that a diff reads well:
//!
//! ```json
//! {
//!   "decision": "allow",
//!   "response_headers": [],
//!   "context": [
//!     ["sub", "u1"]
//!   ],
//!   "propagate_query": [],
//!   "outbound": [
//!     {"method": "GET", "url": "http://users.test/api/v1/users/u1/subscription", "answer": "200"}
//!   ]
//! }
//! ```
//!
//! An allow's `context` is what later policies of a chain would see: the fixture's
//! `request.context` with the pairs the policy added (a key it sets replaces the fixture's). A
//! deny has `status`, `reason` and `headers`; a redirect has `status` and `location`. The files
//! are compared as JSON values (formatting does not matter); `--bless` ([`Mode::Bless`]) writes
//! them.
//!
//! ```no_run
//! use edge_policy_kit::{Mode, test_module};
//! let run = test_module("target/wasm32-wasip2/release/my_policy.wasm".as_ref(), "fixtures".as_ref(), Mode::Check)?;
//! for result in &run.results {
//!     println!("{result}");
//! }
//! println!("{}", run.summary());
//! assert!(run.passed());
//! # Ok::<(), edge_policy_kit::Error>(())
//! ```

mod builder;
mod fixture;
mod golden;
mod harness;
mod host;
mod keys;
mod runner;
mod scaffold;
mod validate;

pub use builder::{Built, TARGET, build};
pub use fixture::{DEFAULT_NOW_MS, Fixture, FixtureRequest, ScriptedAnswer, ScriptedExchange};
pub use golden::{Observed, render};
pub use harness::{DEADLINE, Harness};
pub use host::{CallAnswer, OutboundCall};
pub use keys::{KeyPair, Signed, keygen, sign};
pub use runner::{FixtureResult, Mode, TestRun, Verdict, test_module};
pub use scaffold::{check_crate_name, new_policy};
pub use validate::{Validated, validate};

use std::path::PathBuf;

/// Everything that can go wrong in the kit. Each variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `edge policy new` was given a name cargo would not accept.
    #[error("{name:?} is not a valid crate name: {reason}")]
    CrateName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file or directory the kit would create already exists.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// The Rust toolchain has no `wasm32-wasip2` standard library.
    #[error(
        "the wasm32-wasip2 target is not installed for this toolchain; run `rustup target add wasm32-wasip2`"
    )]
    TargetMissing,
    /// A tool (cargo, rustc) could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// `cargo build` failed (its diagnostics were printed as it ran).
    #[error("cargo build failed in {} ({status})", dir.display())]
    BuildFailed {
        /// The crate directory.
        dir: PathBuf,
        /// Cargo's exit status.
        status: std::process::ExitStatus,
    },
    /// `cargo build` succeeded but produced no `.wasm`.
    #[error(
        "{}: cargo built no WebAssembly component (is `crate-type = [\"cdylib\"]` set?)",
        .0.display()
    )]
    NoComponent(PathBuf),
    /// A fixture is malformed: every problem, each with its file and field.
    #[error("{0}")]
    Fixture(edge_config::Errors),
    /// The fixtures directory holds no `*.toml` file.
    #[error("{}: no fixtures (*.toml) found", .0.display())]
    NoFixtures(PathBuf),
    /// The module could not be loaded as a policy (not a component, wrong world, bad signature...).
    #[error("{}", join(.0))]
    Load(Vec<edge_policy::Error>),
    /// A key could not be made, read or used.
    #[error(transparent)]
    Signing(#[from] edge_policy::signing::SigningError),
    /// The policy runtime could not be set up.
    #[error("cannot start the policy runtime: {0}")]
    Runtime(String),
}

/// `Result` with the kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

fn join(errors: &[edge_policy::Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
