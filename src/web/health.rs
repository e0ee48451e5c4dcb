//! `/healthz` (liveness: the scheduler still starts runs, the store writer is alive) and
//! `/readyz` (live, not stopping, first round stored). 200 with `ok`, or 503 with the reason in
//! plain text: what a supervisor logs and an operator reads.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn healthz(State(state): State<AppState>) -> Response {
    answer(state.status.liveness())
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    answer(state.status.readiness())
}

fn answer(verdict: Result<(), String>) -> Response {
    match verdict {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
