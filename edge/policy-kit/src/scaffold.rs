//! `edge policy new`: a standalone policy crate from the template in `template/`.
//!
//! The template's `wit/` is this repository's `wit/`, embedded at compile time, so a crate made
//! by an `edge` binary always targets exactly the world that binary hosts.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Every file of the template: (path in the new crate, contents). `{{name}}` is replaced by the
/// crate name and `{{lib_name}}` by its library name (`-` → `_`, the `.wasm` file's name).
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../template/Cargo.toml.in")),
    (".gitignore", include_str!("../template/gitignore")),
    ("README.md", include_str!("../template/README.md")),
    ("src/lib.rs", include_str!("../template/src/lib.rs")),
    (
        "fixtures/allow.toml",
        include_str!("../template/fixtures/allow.toml"),
    ),
    (
        "fixtures/allow.golden.json",
        include_str!("../template/fixtures/allow.golden.json"),
    ),
    (
        "fixtures/missing-header.toml",
        include_str!("../template/fixtures/missing-header.toml"),
    ),
    (
        "fixtures/missing-header.golden.json",
        include_str!("../template/fixtures/missing-header.golden.json"),
    ),
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/decide.wit", include_str!("../../../wit/decide.wit")),
    ("wit/host.wit", include_str!("../../../wit/host.wit")),
    ("wit/world.wit", include_str!("../../../wit/world.wit")),
];

/// Names cargo refuses for a package, beyond the character rules.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "std",
    "test",
    "proc_macro",
    "proc-macro",
    "self",
    "super",
    "crate",
    "Self",
];

/// Rust keywords (2024 edition), which cannot name a library.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false",
    "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "static", "struct", "trait", "true", "type", "unsafe", "use", "where",
    "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv", "try",
    "typeof", "unsized", "virtual", "yield",
];

/// Checks that `name` is a crate name cargo accepts: ASCII letters, digits, `-` and `_`, starting
/// with a letter, at most 64 characters, not a keyword or a reserved name.
pub fn check_crate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("it must start with an ASCII letter")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("only ASCII letters, digits, `-` and `_` are allowed")
    } else if RESERVED.contains(&name) || KEYWORDS.contains(&name.replace('-', "_").as_str()) {
        Some("it is a Rust keyword or a reserved name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::CrateName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates the policy crate `dir/name` from the template and returns its path. Refuses an
/// existing `dir/name`; creates `dir` if needed.
pub fn new_policy(name: &str, dir: &Path) -> Result<PathBuf> {
    check_crate_name(name)?;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let root = dir.join(name);
    std::fs::create_dir(&root).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists(root.clone()),
        _ => Error::Io {
            path: root.clone(),
            source: e,
        },
    })?;
    let lib_name = name.replace('-', "_");
    for (rel, contents) in FILES {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        let text = contents
            .replace("{{name}}", name)
            .replace("{{lib_name}}", &lib_name);
        std::fs::write(&path, text).map_err(Error::io(&path))?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names() {
        for good in ["x", "my-policy", "api_key2"] {
            check_crate_name(good).unwrap();
        }
        for bad in [
            "",
            "2fa",
            "-x",
            "a b",
            "ünï",
            "a.b",
            "test",
            "fn",
            "self",
            &"a".repeat(65),
        ] {
            let err = check_crate_name(bad).unwrap_err();
            assert!(
                err.to_string().contains("is not a valid crate name"),
                "{err}"
            );
        }
    }

    #[test]
    fn creates_the_template_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let root = new_policy("api-key", &tmp.path().join("nested")).unwrap();
        assert_eq!(root, tmp.path().join("nested/api-key"));
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"api-key\""), "{manifest}");
        assert!(manifest.contains("[workspace]"), "{manifest}");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(readme.contains("release/api_key.wasm"));
        assert!(!readme.contains("{{"), "placeholder left in README");
        for f in [
            "src/lib.rs",
            "fixtures/allow.toml",
            "wit/world.wit",
            ".gitignore",
        ] {
            assert!(root.join(f).is_file(), "{f} missing");
        }
        std::fs::write(root.join("src/lib.rs"), "// mine").unwrap();
        let err = new_policy("api-key", &tmp.path().join("nested")).unwrap_err();
        assert!(matches!(err, Error::Exists(_)), "{err}");
        let kept = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert_eq!(kept, "// mine");
    }

    /// The template embeds every WIT file of the repository: a new file in `wit/` must be added
    /// to [`FILES`].
    #[test]
    fn the_template_has_every_wit_file() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
        let mut repo: Vec<String> = std::fs::read_dir(&wit)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let rel = p.strip_prefix(&wit).unwrap().to_string_lossy().into_owned();
                format!("wit/{rel}")
            })
            .collect();
        repo.sort();
        let mut template: Vec<String> = FILES
            .iter()
            .filter(|(p, _)| p.starts_with("wit/"))
            .map(|(p, _)| (*p).to_owned())
            .collect();
        template.sort();
        assert_eq!(template, repo, "wit/ changed: update scaffold::FILES");
    }

    /// The fixtures of the template parse (that they pass is checked by the CLI test, which
    /// builds the template).
    #[test]
    fn the_template_fixtures_parse() {
        for (rel, text) in FILES
            .iter()
            .filter(|(p, _)| p.ends_with(".toml") && p.starts_with("fixtures/"))
        {
            crate::Fixture::parse(Path::new(rel), text).unwrap();
        }
    }
}
