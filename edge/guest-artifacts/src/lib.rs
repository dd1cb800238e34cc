//! Paths of the guest components in `guests/`, built for `wasm32-wasip2` by this crate's build
//! script. For tests and benchmarks only (a dev-dependency).
//!
//! ```no_run
//! let wasm = edge_guest_artifacts::path(edge_guest_artifacts::SIGNED_URL);
//! ```

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// `guest` as a path, after checking it was built. Panics with the guest build's error output
/// otherwise, so a missing wasm target fails the tests that need it, with the reason.
pub fn path(guest: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(guest);
    assert!(
        p.is_file(),
        "guest component {} is missing; the guest build said:\n{BUILD_ERROR}",
        p.display()
    );
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_guest_was_built() {
        for (name, path) in super::ALL {
            assert!(
                std::path::Path::new(path).is_file(),
                "{name}: {path} missing\n{}",
                super::BUILD_ERROR
            );
        }
    }
}
