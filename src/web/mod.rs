//! The agent's HTTP listener (`[agent] listen`, off by default): `/healthz` and `/readyz`
//! ([`health`]), `/metrics` in the Prometheus text format ([`metrics`]) and the web page
//! ([`pages`], also served alone by `vantage serve`). [`router`] composes
//! the endpoints, so other pages can be merged into the same router; [`serve`] runs any router
//! with the listener's bounds. Nothing here changes anything: GET and HEAD only (others: 405).
//!
//! Bounds, so that a scraper gone wrong or a hostile peer costs little:
//! - [`MAX_CONNECTIONS`] connections at once; more wait in the kernel's accept queue;
//! - request headers of at most [`MAX_HEADER_BYTES`] (431 beyond), read within
//!   [`HEADER_READ_TIMEOUT`]; a connection lives at most [`CONNECTION_LIFETIME`];
//! - no request body: a declared body over [`MAX_BODY_BYTES`] or a chunked one gets 413 unread;
//! - with `listen_token_*` or `listen_username` + `listen_password_*`, every request needs the
//!   credentials (401 otherwise); without them a bind beyond loopback is logged as a warning.

pub mod health;
pub mod metrics;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use probes::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{ListenAuth, ListenConfig};
use crate::status::Status;

/// Connections served at once; the next ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Request line and headers together (hyper's smallest buffer); beyond: 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its request headers within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Any connection is closed after this, busy or idle (a scraper just reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// No endpoint takes a body; a small one (some clients send `Content-Length: 0`) is ignored.
pub const MAX_BODY_BYTES: u64 = 1024;

/// What every endpoint reads: the agent, and who may ask.
#[derive(Debug, Clone)]
pub struct AppState {
    pub status: Status,
    pub auth: Option<ListenAuth>,
}

/// The listener's endpoints and, with `pages`, the web page ([`pages`]), all behind the body
/// and auth checks.
pub fn router(state: AppState, pages: Option<pages::PageSource>) -> Router {
    let endpoints = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state.clone());
    let app = match pages {
        Some(source) => endpoints.merge(pages::router(source)),
        None => endpoints,
    };
    app.layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Bind `[agent] listen` and serve [`router`] until the returned token is cancelled.
pub async fn start(
    listen: &ListenConfig,
    status: Status,
) -> anyhow::Result<(SocketAddr, CancellationToken, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen.address).await.with_context(|| {
        format!(
            "cannot listen on {} (`[agent] listen`): is another program using the port? Choose another, or remove `listen`",
            listen.address
        )
    })?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() && listen.auth.is_none() {
        tracing::warn!(%address, "the health and metrics listener is reachable from other hosts without credentials: set `listen_token_file` (or `listen_username` with `listen_password_file`) in [agent], or listen on 127.0.0.1");
    }
    // The web page reads the agent's own store, read-only, beside the writer, and the
    // configuration running now (a reload changes it).
    let pages = pages::PageSource::of_agent(status.clone())?;
    tracing::info!(%address, auth = listen.auth.is_some(), "serving the web page, /healthz, /readyz and /metrics");
    let shutdown = CancellationToken::new();
    let app = router(
        AppState {
            status,
            auth: listen.auth.clone(),
        },
        Some(pages),
    );
    let task = tokio::spawn(serve(listener, app, shutdown.clone()));
    Ok((address, shutdown, task))
}

/// Serve `router` on `listener` with the bounds above until `shutdown`; connections still open
/// then are closed (no endpoint changes anything, so nothing is cut in half).
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    tracing::warn!(%error, "listener: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set stays as small as the permits.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let ended = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            if let Ok(Err(error)) = ended {
                tracing::debug!(%peer, %error, "listener: connection ended");
            }
            drop(permit);
        });
    }
    connections.abort_all();
}

/// Refuse a request body and check credentials, before any endpoint runs.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if headers.contains_key(header::TRANSFER_ENCODING)
        || declared.is_some_and(|n| n > MAX_BODY_BYTES)
    {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "these endpoints take no request body\n",
        )
            .into_response();
    }
    if let Some(auth) = &state.auth {
        if let Err(refused) = authorize(auth.clone(), headers.clone()).await {
            return refused;
        }
    }
    next.run(request).await
}

/// Ok when `headers` carry the configured credentials; else 401 (or 503 if the secret cannot be
/// read: the agent's log says why, the answer does not).
async fn authorize(auth: ListenAuth, headers: HeaderMap) -> Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (scheme, source) = match &auth {
        ListenAuth::Bearer(source) => ("Bearer", source.clone()),
        ListenAuth::Basic { password, .. } => ("Basic", password.clone()),
    };
    // Re-read on every request (rotation needs no restart); a file read blocks.
    let secret = tokio::task::spawn_blocking(move || source.read())
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
    let secret = match secret {
        Ok(secret) => secret,
        Err(error) => {
            tracing::error!(%error, "listener: cannot read its credentials; refusing every request");
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the listener's credentials cannot be read; see the agent's log\n",
            )
                .into_response());
        }
    };
    let expected = match &auth {
        ListenAuth::Bearer(_) => format!("Bearer {}", secret.expose()),
        ListenAuth::Basic { username, .. } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", secret.expose()))
        ),
    };
    if constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
        return Ok(());
    }
    Err((
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!("{scheme} realm=\"vantage\""),
        )],
        "credentials missing or wrong\n",
    )
        .into_response())
}

/// Compare without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_compare_whole() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }
}
