//! `edge policy test`: every fixture of a directory against its golden file.

use crate::{
    Error, Harness, Result,
    fixture::Fixture,
    golden::{diff, render, same},
    host::{CallAnswer, OutboundCall},
};
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Whether golden files are checked or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compare each decision to its golden file; a missing golden file is a failure.
    Check,
    /// Write each golden file whose content differs (or is missing): `--bless`.
    Bless,
}

/// The verdict on one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The decision matches the golden file.
    Passed,
    /// The golden file was written ([`Mode::Bless`]).
    Blessed(PathBuf),
    /// The decision differs from the golden file.
    Mismatch {
        /// The golden file.
        golden: PathBuf,
        /// Line diff, golden (`-`) to actual (`+`).
        diff: String,
    },
    /// There is no golden file ([`Mode::Check`]).
    MissingGolden(PathBuf),
    /// The fixture or its golden file could not be used (each problem names its file).
    Error(String),
}

/// One fixture's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureResult {
    /// The fixture's name (its file name without `.toml`).
    pub name: String,
    /// The fixture file.
    pub fixture: PathBuf,
    /// The verdict.
    pub verdict: Verdict,
    /// Outbound requests that found no scripted answer (they were answered `failed`).
    pub unscripted: Vec<OutboundCall>,
}

impl FixtureResult {
    /// Passed or blessed.
    pub fn ok(&self) -> bool {
        matches!(self.verdict, Verdict::Passed | Verdict::Blessed(_))
    }
}

impl fmt::Display for FixtureResult {
    /// `ok NAME`, `blessed NAME (...)` or `FAIL NAME: why`, with the diff indented below.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.verdict {
            Verdict::Passed => write!(f, "ok {name}")?,
            Verdict::Blessed(p) => write!(f, "blessed {name} (wrote {})", p.display())?,
            Verdict::Mismatch { golden, diff } => {
                write!(
                    f,
                    "FAIL {name}: the decision differs from {}",
                    golden.display()
                )?;
                write!(f, "\n  --- golden\n  +++ actual")?;
                for line in diff.lines() {
                    write!(f, "\n  {line}")?;
                }
            }
            Verdict::MissingGolden(p) => write!(
                f,
                "FAIL {name}: no golden file {} (run with --bless to write it)",
                p.display()
            )?,
            Verdict::Error(e) => {
                write!(f, "FAIL {name}:")?;
                for line in e.lines() {
                    write!(f, "\n  {line}")?;
                }
            }
        }
        for call in &self.unscripted {
            write!(
                f,
                "\n  note: {} {} has no scripted [[http]] answer (answered failed)",
                call.method, call.url
            )?;
        }
        Ok(())
    }
}

/// The results of a whole directory, in fixture name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// One per fixture.
    pub results: Vec<FixtureResult>,
}

impl TestRun {
    /// Whether every fixture passed (or was blessed).
    pub fn passed(&self) -> bool {
        self.results.iter().all(FixtureResult::ok)
    }

    /// `N fixtures: P passed, F failed` (and how many golden files were written).
    pub fn summary(&self) -> String {
        let failed = self.results.iter().filter(|r| !r.ok()).count();
        let blessed = self
            .results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Blessed(_)))
            .count();
        let mut s = format!(
            "{} fixtures: {} passed, {failed} failed",
            self.results.len(),
            self.results.len() - failed - blessed
        );
        if blessed > 0 {
            s.push_str(&format!(", {blessed} golden files written"));
        }
        s
    }
}

/// Runs `module` against every `*.toml` fixture in `fixtures` (in name order).
///
/// Fails as a whole only when nothing can run: no fixture found, or a module that does not load
/// as a policy. A malformed fixture or golden file is that fixture's failure.
pub fn test_module(module: &Path, fixtures: &Path, mode: Mode) -> Result<TestRun> {
    let files = fixture_files(fixtures)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let _guard = rt.enter();
    let harness = Harness::new(module)?;
    let results = rt.block_on(async {
        let mut results = Vec::new();
        for file in &files {
            results.push(run_one(&harness, file, mode).await);
        }
        results
    });
    Ok(TestRun { results })
}

fn fixture_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::NoFixtures(dir.to_owned()));
    }
    files.sort();
    Ok(files)
}

async fn run_one(harness: &Harness, file: &Path, mode: Mode) -> FixtureResult {
    let mut result = FixtureResult {
        name: file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        fixture: file.to_owned(),
        verdict: Verdict::Passed,
        unscripted: Vec::new(),
    };
    let fixture = match Fixture::load(file) {
        Ok(f) => f,
        Err(e) => {
            result.verdict = Verdict::Error(e.to_string());
            return result;
        }
    };
    let observed = match harness.run(&fixture).await {
        Ok(o) => o,
        Err(e) => {
            result.verdict = Verdict::Error(e.to_string());
            return result;
        }
    };
    result.unscripted = observed
        .calls
        .iter()
        .filter(|c| c.answer == CallAnswer::Unscripted)
        .cloned()
        .collect();
    let actual = render(&observed);
    let golden = fixture.golden_path();
    let old = std::fs::read_to_string(&golden);
    result.verdict = match (mode, old) {
        (Mode::Bless, Ok(old)) if same(&old, &actual) == Ok(true) => Verdict::Passed,
        (Mode::Bless, _) => match std::fs::write(&golden, &actual) {
            Ok(()) => Verdict::Blessed(golden),
            Err(e) => Verdict::Error(format!("{}: cannot write: {e}", golden.display())),
        },
        (Mode::Check, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Verdict::MissingGolden(golden)
        }
        (Mode::Check, Err(e)) => Verdict::Error(format!("{}: cannot read: {e}", golden.display())),
        (Mode::Check, Ok(old)) => match same(&old, &actual) {
            Ok(true) => Verdict::Passed,
            Ok(false) => Verdict::Mismatch {
                diff: diff(&old, &actual),
                golden,
            },
            Err(e) => Verdict::Error(format!("{}: {e}", golden.display())),
        },
    };
    result
}
