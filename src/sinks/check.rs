//! `vantage check` for outputs: is each one configured sensibly, reachable, and does it accept our
//! credentials? Online, each output gets one empty write request — it proves URL, database/bucket and
//! credentials (servers check them before reading the body) without writing a point.

use super::influx::{Answer, Writer};
use crate::config::OutputConfig;

/// The verdict for one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub output: String,
    pub ok: bool,
    /// One line for a human: what was found and, when not ok, what to do.
    pub message: String,
}

/// Check every output; `offline` validates the settings and that secrets can be read, without
/// touching the network.
pub async fn check_outputs(outputs: &[OutputConfig], offline: bool) -> Vec<CheckResult> {
    let mut results = Vec::with_capacity(outputs.len());
    for output in outputs {
        results.push(check_one(output, offline).await);
    }
    results
}

async fn check_one(output: &OutputConfig, offline: bool) -> CheckResult {
    let result = |ok: bool, message: String| CheckResult {
        output: output.name.clone(),
        ok,
        message,
    };
    let problems = output.validate();
    if !problems.is_empty() {
        let text = problems
            .iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        return result(false, text);
    }
    let secret = match &output.kind {
        crate::config::OutputKind::InfluxdbV2 { token, .. } => token.as_ref(),
        crate::config::OutputKind::InfluxdbV1 { password, .. } => password.as_ref(),
    };
    if let Some(Err(e)) = secret.map(|s| s.read()) {
        return result(false, format!("cannot read the credentials: {e}"));
    }
    let writer = match Writer::new(output) {
        Ok(writer) => writer,
        Err(e) => return result(false, format!("{e:#}")),
    };
    if offline {
        return result(
            true,
            format!(
                "settings valid, credentials readable (offline: {} not contacted)",
                writer.endpoint()
            ),
        );
    }
    let endpoint = writer.endpoint().clone();
    match writer.probe().await {
        Answer::Delivered | Answer::BadRequest { .. } | Answer::TooLarge { .. } => {
            result(true, format!("{endpoint}: reachable, credentials accepted"))
        }
        Answer::Unauthorized { status, message } => result(
            false,
            format!(
                "{endpoint}: credentials rejected ({}): {message}",
                status.map_or_else(|| "none sent".to_string(), |s| s.to_string())
            ),
        ),
        Answer::NeedsHuman { status, message } => result(
            false,
            format!(
                "{endpoint}: answered {status}{}: {message}",
                if status == 404 {
                    " (database/bucket not found, or not an InfluxDB write API at this URL)"
                } else {
                    ""
                }
            ),
        ),
        Answer::Retry { reason, .. } => result(false, format!("unreachable: {reason}")),
    }
}
