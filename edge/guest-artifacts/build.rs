//! Builds the guest workspace (`guests/`) for `wasm32-wasip2` and writes `guests.rs` with one path
//! constant per component. A failed guest build does not fail this build: the error is kept and
//! reported by [`edge_guest_artifacts::path`] when a test asks for a guest.

use std::{fmt::Write as _, path::PathBuf, process::Command};

const GUESTS: &[(&str, &str)] = &[
    ("SIGNED_URL", "signed_url"),
    ("FIXTURE_ALLOW", "fixture_allow"),
    ("FIXTURE_HOSTILE", "fixture_hostile"),
    ("AUTH_JWT", "auth_jwt"),
    ("SUBSCRIPTION", "subscription"),
    ("RATE_LIMIT", "rate_limit"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("repository root");
    let guests = root.join("guests");
    for watched in [
        "guests/Cargo.toml",
        "guests/Cargo.lock",
        "guests/signed-url",
        "guests/auth-jwt",
        "guests/subscription",
        "guests/rate-limit",
        "guests/fixtures",
        "wit",
        "edge/urlsig/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .env("CARGO_TARGET_DIR", guests.join("target"));
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let failure = match cmd.output() {
        Ok(out) if out.status.success() => String::new(),
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => format!("cannot run cargo: {e}"),
    };
    if !failure.is_empty() {
        println!(
            "cargo:warning=building guests/ for wasm32-wasip2 failed; guest tests will fail (run `rustup target add wasm32-wasip2`)"
        );
    }
    let dir = guests.join("target/wasm32-wasip2/release");
    let mut src = String::new();
    for (constant, file) in GUESTS {
        let path = dir.join(format!("{file}.wasm"));
        writeln!(
            src,
            "/// Path of the `{file}` component.\npub const {constant}: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(
        src,
        "/// Every guest component: (constant name, path).\npub const ALL: &[(&str, &str)] = &["
    )
    .unwrap();
    for (constant, _) in GUESTS {
        writeln!(src, "    ({constant:?}, {constant}),").unwrap();
    }
    writeln!(src, "];\n/// The guest build's error output, empty when it succeeded.\npub const BUILD_ERROR: &str = {failure:?};").unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("guests.rs");
    std::fs::write(out, src).expect("write guests.rs");
}
