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
    /// `MODULE: ok, version sha256:<hex>, imports: edge:policy/{clock,config}@0.1.0, ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: ok, version sha256:{}, imports: {}",
            self.module.display(),
            self.version,
            grouped(&self.imports)
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

/// `a:b/x@1, a:b/y@1, c:d/z@2` → `a:b/{x,y}@1, c:d/z@2`.
fn grouped(imports: &[String]) -> String {
    let mut groups: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for name in imports {
        let Some((package, rest)) = name.split_once('/') else {
            groups.push((name, "", Vec::new()));
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        match groups
            .iter_mut()
            .find(|(p, v, i)| *p == package && *v == version && !i.is_empty())
        {
            Some((_, _, interfaces)) => interfaces.push(interface),
            None => groups.push((package, version, vec![interface])),
        }
    }
    let at = |v: &str| {
        if v.is_empty() {
            String::new()
        } else {
            format!("@{v}")
        }
    };
    groups
        .iter()
        .map(
            |(package, version, interfaces)| match interfaces.as_slice() {
                [] => (*package).to_owned(),
                [one] => format!("{package}/{one}{}", at(version)),
                many => format!("{package}/{{{}}}{}", many.join(","), at(version)),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn imports_are_grouped_by_package() {
        let imports: Vec<String> = [
            "edge:policy/clock@0.1.0",
            "edge:policy/config@0.1.0",
            "wasi:cli/exit@0.2.6",
            "wasi:io/poll@0.2.6",
            "wasi:io/streams@0.2.6",
            "plain",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            super::grouped(&imports),
            "edge:policy/{clock,config}@0.1.0, wasi:cli/exit@0.2.6, wasi:io/{poll,streams}@0.2.6, plain"
        );
    }
}
