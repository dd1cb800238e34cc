//! `edge policy ...`: the policy author kit (`edge-policy-kit`). Parses, calls, prints.
//!
//! Exit codes: 0 success, 1 a fixture did not match its golden file, 2 an error.

use clap::Subcommand;
use edge_policy_kit as kit;
use std::{path::PathBuf, process::ExitCode};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Create a policy crate (template with example policy, fixtures, WIT) in DIR/NAME.
    New {
        /// Crate name.
        name: String,
        /// Parent directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the policy crate in DIR for wasm32-wasip2; print the component and its version.
    Build {
        /// Crate directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run MODULE against every fixture (*.toml) and compare with the golden files.
    Test {
        /// The component (.wasm).
        module: PathBuf,
        /// Fixtures directory.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Write the golden files instead of comparing.
        #[arg(long)]
        bless: bool,
    },
    /// Load MODULE as the edge would; print its version and imports.
    Validate {
        /// The component (.wasm).
        module: PathBuf,
        /// Require a signature (MODULE.sig) by this public key (repeatable).
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<PathBuf>,
    },
    /// Write a new ed25519 key pair: PREFIX.pem (private, 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign MODULE with a private key; writes MODULE.sig.
    Sign {
        /// Private key (PEM) from `edge policy keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The component (.wasm).
        module: PathBuf,
    },
}

pub(crate) fn run(command: PolicyCommand) -> ExitCode {
    let result = match command {
        PolicyCommand::New { name, dir } => kit::new_policy(&name, &dir).map(|root| {
            println!("created {}", root.display());
            println!("next: cd {} && edge policy build", root.display());
        }),
        PolicyCommand::Build { dir } => kit::build(&dir).map(|built| {
            for b in built {
                println!("built {}, version sha256:{}", b.path.display(), b.version);
            }
        }),
        PolicyCommand::Test {
            module,
            fixtures,
            bless,
        } => {
            let mode = if bless {
                kit::Mode::Bless
            } else {
                kit::Mode::Check
            };
            match kit::test_module(&module, &fixtures, mode) {
                Ok(run) => {
                    for result in &run.results {
                        println!("{result}");
                    }
                    println!("{}", run.summary());
                    return if run.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    };
                }
                Err(e) => Err(e),
            }
        }
        PolicyCommand::Validate {
            module,
            trusted_keys,
        } => kit::validate(&module, &trusted_keys).map(|v| println!("{v}")),
        PolicyCommand::Keygen { out } => kit::keygen(&out).map(|pair| {
            println!(
                "wrote {} (private: keep it secret) and {} (list it in [wasm] trusted_keys)",
                pair.private.display(),
                pair.public.display()
            );
        }),
        PolicyCommand::Sign { key, module } => kit::sign(&key, &module).map(|signed| {
            println!(
                "wrote {}, version sha256:{}",
                signed.signature.display(),
                signed.version
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge: {e}");
            ExitCode::from(2)
        }
    }
}
