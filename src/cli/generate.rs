//! `vantage generate man|completions --out DIR` (hidden): the man pages and shell completions,
//! written from the same clap definitions that parse the command line, so they never drift from
//! it. `scripts/build-deb` runs it before `cargo deb` packs the files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Man pages: vantage.1 and one page per subcommand (vantage-run.1, ...).
    Man {
        /// The directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Completion scripts for bash (vantage), zsh (_vantage) and fish (vantage.fish).
    Completions {
        /// The directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (What::Man { out } | What::Completions { out }) = &args.what;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let command = super::Cli::command();
    match &args.what {
        What::Man { .. } => clap_mangen::generate_to(command, out)
            .with_context(|| format!("cannot write the man pages into {}", out.display()))?,
        What::Completions { .. } => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                completions(shell, out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn completions(shell: Shell, out: &Path) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    let path =
        clap_complete::generate_to(shell, &mut command, "vantage", out).with_context(|| {
            format!(
                "cannot write the {shell} completions into {}",
                out.display()
            )
        })?;
    println!("{}", path.display());
    Ok(())
}
