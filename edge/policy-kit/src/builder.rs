//! `edge policy build`: cargo for `wasm32-wasip2`, then the component(s) it produced.

use crate::{Error, Result};
use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The target policies are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// A component cargo produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Its sha256 (hex), the version the edge reports and pins.
    pub version: String,
}

/// Runs `cargo build --release --target wasm32-wasip2` in `dir` (cargo's progress and
/// diagnostics go to this process's stderr) and returns every component it produced.
///
/// Cargo is `$CARGO` when set (as under `cargo run`), else `cargo` from `PATH`; `CARGO_TARGET_DIR`
/// and the crate's own config are honoured.
pub fn build(dir: &Path) -> Result<Vec<Built>> {
    check_target(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let program = cargo.to_string_lossy().into_owned();
    let mut child = Command::new(&cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut wasm = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
            wasm.extend(artifacts(&line));
        }
    }
    let status = child
        .wait()
        .map_err(|source| Error::Spawn { program, source })?;
    if !status.success() {
        return Err(Error::BuildFailed {
            dir: dir.to_owned(),
            status,
        });
    }
    wasm.dedup();
    if wasm.is_empty() {
        return Err(Error::NoComponent(dir.to_owned()));
    }
    wasm.into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            Ok(Built {
                version: edge_policy::signing::sha256_hex(&bytes),
                path,
            })
        })
        .collect()
}

/// The `.wasm` files of one line of cargo's JSON messages (a `compiler-artifact`).
fn artifacts(line: &str) -> Vec<PathBuf> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    if msg["reason"] != "compiler-artifact" {
        return Vec::new();
    }
    msg["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .filter(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}

/// Fails with [`Error::TargetMissing`] when the toolchain `dir` uses (its `rust-toolchain.toml`
/// included) has no standard library for the target. When rustc cannot be asked, cargo will say.
fn check_target(dir: &Path) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
    else {
        return Ok(());
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return Err(Error::TargetMissing);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_components_in_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"]},"filenames":["/t/wasm32-wasip2/release/x.wasm"]}"#;
        assert_eq!(
            artifacts(line),
            [PathBuf::from("/t/wasm32-wasip2/release/x.wasm")]
        );
        let rlib = r#"{"reason":"compiler-artifact","filenames":["/t/libwit_bindgen.rlib"]}"#;
        assert!(artifacts(rlib).is_empty());
        assert!(artifacts(r#"{"reason":"build-finished","success":true}"#).is_empty());
        assert!(artifacts("Compiling x").is_empty());
    }
}
