//! The HTTP side of the Alertmanager and webhook sinks: one JSON POST, 2xx or an error that names
//! the sink, the URL and the answer (with the token redacted, should the answer echo it). The deliverer runs on its own std thread, so each sink owns a
//! small current-thread tokio runtime for the (async) reqwest client — the binary's one HTTP stack.

use anyhow::Context;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use crate::config::{IncidentSinkConfig, SecretSource};
use crate::sinks::influx::{describe_reqwest_error, error_body, truncate};
use crate::sinks::redact::Redactor;

#[derive(Debug)]
pub struct Poster {
    sink: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    token: Option<SecretSource>,
}

impl Poster {
    pub fn new(config: &IncidentSinkConfig) -> anyhow::Result<Poster> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("vantage/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        Ok(Poster {
            sink: config.name.clone(),
            client,
            runtime,
            token: config.token.clone(),
        })
    }

    /// POST `body` as JSON with `headers`; Ok on 2xx.
    pub fn post(
        &self,
        url: &Url,
        body: &serde_json::Value,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<()> {
        let failed =
            |what: String| anyhow::anyhow!("incident sink {:?}: POST {url}: {what}", self.sink);
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        let mut redactor = Redactor::default();
        if let Some(source) = &self.token {
            let token = source.read().map_err(|e| failed(e.to_string()))?;
            let header = format!("Bearer {}", token.expose());
            let mut value = HeaderValue::from_str(&header).map_err(|_| {
                failed("the token contains characters an HTTP header cannot carry".into())
            })?;
            redactor = redactor.with(token.expose()).with(header);
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .map_err(|e| failed(redactor.redact(&describe_reqwest_error(&e))))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let text = redactor.redact(&error_body(response).await);
            Err(failed(format!("{status}: {}", truncate(text.trim()))))
        })
    }
}
