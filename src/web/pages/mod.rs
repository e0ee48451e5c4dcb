//! SmokePing's page for vantage: server-rendered HTML (maud, which escapes every value) with
//! inline SVG charts, no JavaScript, nothing fetched from elsewhere. Everything is read from a data
//! directory, read-only: the store ([`Store::open_read_only`], opened per request), the incident
//! drafts (`incidents/<id>/`) and the spool (`spool.db`).
//!
//! ## Layout
//! - this file: [`PageSource`], [`router`], the security headers and the request limits, [`Auth`]
//! - `layout`: the page frame, the stylesheet, number formats shared by the pages
//! - `overview`, `target`, `incidents`, `agent`: one page each
//! - `series`: chart series thinned to what a chart can show
//!
//! Routes: `/` overview, `/targets/{name}`, `/incidents` (`?page=N`), `/incidents/{id}`,
//! `/incidents/{id}/files/{name}` (a draft's files, as downloads), `/agent`, `/style.css`.
//! Only GET and HEAD, without a body; every response carries a strict Content-Security-Policy.

mod agent;
mod incidents;
mod layout;
mod overview;
mod series;
mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::{Config, SecretSource};
use crate::status::Status;
use crate::store::Store;

/// The Content-Security-Policy of every response: no scripts at all, styles only from
/// `/style.css`, images only inline (the charts are inline SVG), no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the pages read: a data directory (and, when there is one, the config, for the agent
/// page's summary).
#[derive(Debug, Clone)]
pub struct PageSource {
    data_dir: PathBuf,
    config: ConfigSource,
    /// Shared by every request: see [`incidents::SummaryCache`].
    summaries: Arc<incidents::SummaryCache>,
}

/// Where the agent page's config summary comes from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// `vantage serve`: none, or the file given at start.
    Fixed(Option<Arc<Config>>),
    /// The running agent: the configuration running now, reloads included.
    Agent(Status),
}

impl PageSource {
    /// Check that `data_dir` holds a store (a clear error if not) and serve it.
    pub fn new(data_dir: &Path, config: Option<Arc<Config>>) -> anyhow::Result<PageSource> {
        Store::open_read_only(data_dir)?;
        Ok(PageSource {
            data_dir: data_dir.to_path_buf(),
            config: ConfigSource::Fixed(config),
            summaries: Arc::default(),
        })
    }

    /// The running agent's store and configuration (the latest reload's).
    pub fn of_agent(status: Status) -> anyhow::Result<PageSource> {
        Store::open_read_only(status.data_dir())?;
        Ok(PageSource {
            data_dir: status.data_dir().to_path_buf(),
            config: ConfigSource::Agent(status),
            summaries: Arc::default(),
        })
    }

    /// The configuration to summarise, if any.
    fn config(&self) -> Option<Arc<Config>> {
        match &self.config {
            ConfigSource::Fixed(config) => config.clone(),
            ConfigSource::Agent(status) => Some(status.config()),
        }
    }

    fn store(&self) -> anyhow::Result<Store> {
        Store::open_read_only(&self.data_dir)
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
enum PageError {
    NotFound(String),
    /// The request names something the page cannot take (a page number that is not one).
    BadRequest(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(error: anyhow::Error) -> PageError {
        PageError::Failed(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::NotFound(what) => (StatusCode::NOT_FOUND, what),
            PageError::BadRequest(what) => (StatusCode::BAD_REQUEST, what),
            PageError::Failed(error) => {
                tracing::warn!("web page: {error:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
            }
        };
        let page = layout::page(
            status.canonical_reason().unwrap_or("error"),
            layout::Nav::None,
            maud::html! { p.error { (message) } },
        );
        (status, page).into_response()
    }
}

type PageResult<T> = Result<T, PageError>;

/// Run `render` (SQLite and file reads: blocking) off the async workers.
async fn blocking<T: Send + 'static>(
    source: PageSource,
    render: impl FnOnce(&PageSource) -> PageResult<T> + Send + 'static,
) -> PageResult<T> {
    tokio::task::spawn_blocking(move || render(&source))
        .await
        .map_err(|e| PageError::Failed(anyhow::anyhow!("page rendering failed: {e}")))?
}

/// The pages, for `vantage serve` and the agent's listener.
pub fn router(source: PageSource) -> Router {
    pages(source).layer(middleware::from_fn(limits_and_headers))
}

/// [`router`] behind `auth` (a non-loopback address): 401 with a `WWW-Authenticate` challenge
/// without the right secret (the security headers are on that answer too).
pub fn router_with_auth(source: PageSource, auth: Auth) -> Router {
    with_auth(pages(source), auth).layer(middleware::from_fn(limits_and_headers))
}

fn pages(source: PageSource) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(s): State<PageSource>| blocking(s, overview::page)),
        )
        .route(
            "/targets/{name}",
            get(
                |State(s): State<PageSource>, axum::extract::Path(name): axum::extract::Path<String>| {
                    blocking(s, move |s| target::page(s, &name))
                },
            ),
        )
        .route(
            "/incidents",
            get(
                |State(s): State<PageSource>, axum::extract::RawQuery(query): axum::extract::RawQuery| {
                    blocking(s, move |s| {
                        incidents::list(s, incidents::page_number(query.as_deref())?)
                    })
                },
            ),
        )
        .route(
            "/incidents/{id}",
            get(
                |State(s): State<PageSource>, axum::extract::Path(id): axum::extract::Path<String>| {
                    blocking(s, move |s| incidents::draft(s, &id))
                },
            ),
        )
        .route(
            "/incidents/{id}/files/{name}",
            get(
                |State(s): State<PageSource>,
                 axum::extract::Path((id, name)): axum::extract::Path<(String, String)>| {
                    blocking(s, move |s| incidents::file(s, &id, &name))
                },
            ),
        )
        .route(
            "/agent",
            get(|State(s): State<PageSource>| blocking(s, agent::page)),
        )
        .route("/style.css", get(stylesheet))
        .fallback(|| async { PageError::NotFound("no such page".into()) })
        .with_state(source)
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        layout::STYLESHEET,
    )
}

/// GET and HEAD only, without a body (the pages take no input but the path and `?page=`), and the security
/// headers on every response, errors included.
async fn limits_and_headers(request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let mut response = if !matches!(*request.method(), Method::GET | Method::HEAD) {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "read-only pages: GET and HEAD only\n",
        )
            .into_response()
    } else if has_body {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the pages take no request body\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Who may read the pages on a non-loopback address: a bearer token, or basic auth
/// (`user:password`), each from a secret file read on every request (rotation needs no restart).
#[derive(Debug, Clone)]
pub enum Auth {
    Bearer(SecretSource),
    Basic(SecretSource),
}

impl Auth {
    /// Read the secret now: a start that cannot read it fails with the file's error.
    pub fn check_readable(&self) -> anyhow::Result<()> {
        match self {
            Auth::Bearer(source) => {
                source.read()?;
            }
            Auth::Basic(source) => {
                let secret = source.read()?;
                anyhow::ensure!(
                    secret.expose().contains(':'),
                    "the basic-auth file must hold `user:password` on one line"
                );
            }
        }
        Ok(())
    }

    fn allows(&self, request: &Request) -> bool {
        let Some(given) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let expected = match self {
            Auth::Bearer(source) => source.read().map(|s| format!("Bearer {}", s.expose())),
            Auth::Basic(source) => source.read().map(|s| {
                use base64::Engine as _;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(s.expose())
                )
            }),
        };
        match expected {
            Ok(expected) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
            Err(error) => {
                tracing::warn!("web page: cannot read the auth secret: {error}");
                false
            }
        }
    }
}

/// Equal, in a time that does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn with_auth(router: Router, auth: Auth) -> Router {
    let auth = Arc::new(auth);
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let auth = Arc::clone(&auth);
        async move {
            if auth.allows(&request) {
                return next.run(request).await;
            }
            let challenge = match *auth {
                Auth::Bearer(_) => "Bearer realm=\"vantage\"",
                Auth::Basic(_) => "Basic realm=\"vantage\", charset=\"UTF-8\"",
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                "authentication required\n",
            )
                .into_response()
        }
    }))
}
