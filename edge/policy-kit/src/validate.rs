//! `edge policy validate`: loads a module exactly as the edge would.

use crate::{
    Error, Result,
    harness::{policy_set, runtime},
    host::{FixedClock, ScriptedOutbound},
};
use edge_policy::{HostServices, Kv, TrustedKeys};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A module that loads as a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The module file.
    pub module: PathBuf,
    /// Its sha256 (hex): pin it with `version = "sha256:<hex>"` in the policies file.
    pub version: String,
    /// The interfaces it imports (`edge:policy/...` first, then WASI).
    pub imports: Vec<String>,
    /// Whether its signature was checked against trusted keys.
    pub signature_checked: bool,
}

impl fmt::Display for Validated {
    /// `MODULE: ok, version sha256:<hex>, imports: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: ok, version sha256:{}, imports: {}",
            self.module.display(),
            self.version,
            self.imports.join(", ")
        )?;
        if self.signature_checked {
            f.write_str(", signature ok")?;
        }
        Ok(())
    }
}

/// Compiles `module`, checks that it fits the `edge:policy` world (instantiate-pre with the edge's
/// own linker) and, when `trusted_keys` are given, that `MODULE.sig` is a signature by one of them.
pub fn validate(module: &Path, trusted_keys: &[PathBuf]) -> Result<Validated> {
    let trusted = TrustedKeys::load(trusted_keys).map_err(|errors| {
        Error::Load(
            errors
                .into_iter()
                .map(edge_policy::Error::Signature)
                .collect(),
        )
    })?;
    let signature_checked = trusted.required();
    let host = HostServices {
        clock: Arc::new(FixedClock::default()),
        kv: Kv::memory(16),
        outbound: Arc::new(ScriptedOutbound::default()),
    };
    let runtime = runtime(host, trusted)?;
    let set = policy_set(module, "policy", "validate", &[], &[])?;
    let router = runtime.load(&set).map_err(Error::Load)?;
    let policy = router
        .deployments()
        .first()
        .ok_or_else(|| Error::Runtime("the policy was not loaded".into()))?
        .baseline();
    let mut imports = policy.imports();
    imports.sort_by_key(|name| (!name.starts_with("edge:"), name.clone()));
    Ok(Validated {
        module: module.to_owned(),
        version: policy.version().to_owned(),
        imports,
        signature_checked,
    })
}
