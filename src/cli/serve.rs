//! `vantage serve`: the web page of a data directory (e.g. one copied off a machine), read-only.
//! Loopback by default; any other address needs a bearer token or basic-auth file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, SecretSource};
use crate::web::pages::{self, Auth, PageSource};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory to serve (default: the config's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The agent's config file: where the data directory is, and the agent page's config summary
    /// (no secrets are shown).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The address to listen on. Anything but loopback needs --auth-token-file or
    /// --basic-auth-file.
    #[arg(long, default_value = "127.0.0.1:9799")]
    listen: SocketAddr,
    /// A file holding the bearer token clients must send (`Authorization: Bearer TOKEN`); re-read
    /// on every request, at most 64 KiB, a regular file.
    #[arg(long, conflicts_with = "basic_auth_file")]
    auth_token_file: Option<PathBuf>,
    /// A file holding `user:password` for HTTP basic auth; re-read on every request.
    #[arg(long)]
    basic_auth_file: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => Some(Arc::new(config)),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let data_dir = match (&args.data_dir, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.agent.data_dir.clone(),
        (None, None) => anyhow::bail!(
            "which data directory? give --data-dir DIR (or --config FILE to serve the agent's)"
        ),
    };
    let auth = match (&args.auth_token_file, &args.basic_auth_file) {
        (Some(file), _) => Some(Auth::Bearer(SecretSource::File(file.clone()))),
        (None, Some(file)) => Some(Auth::Basic(SecretSource::File(file.clone()))),
        (None, None) => None,
    };
    if auth.is_none() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve {} on the non-loopback address {} without authentication: give \
             --auth-token-file FILE or --basic-auth-file FILE, or listen on 127.0.0.1",
            data_dir.display(),
            args.listen
        );
    }
    if let Some(auth) = &auth {
        auth.check_readable()?;
    }
    let source = PageSource::new(&data_dir, config)?;
    let router = match auth {
        Some(auth) => pages::router_with_auth(source, auth),
        None => pages::router(source),
    };
    super::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        eprintln!(
            "serving {} read-only on http://{}/ (Ctrl-C stops)",
            data_dir.display(),
            listener.local_addr()?
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped())
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGINT or SIGTERM.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
