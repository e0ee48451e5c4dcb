//! One output's delivery loop: read the oldest spooled points, send them, and act on the answer.
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx | the points leave the spool and count as delivered |
//! | 5xx, 429, network error | same points again after exponential backoff with jitter (`retry_initial` doubling to `retry_max`); `Retry-After` is a floor; no time limit |
//! | 401, 403, unreadable secret | loud error, retry every `auth_retry`, secret re-read each attempt |
//! | other 4xx (404 …) | loud error, retry every `auth_retry` (nothing is lost while a human fixes it) |
//! | 413 | split the batch in halves (and send at most that many points per request from then on); a single line that is still too large is dead-lettered |
//! | 400 | bisect: halves are sent separately until the bad lines are isolated; each goes to the dead-letter table with the server's message, the rest is delivered |
//!
//! Points are always taken oldest first, so delivery is in timestamp order and a backlog drains
//! before newer points — at full batches back to back, while new points keep being spooled.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use probes::CancellationToken;
use tokio::time::Instant;

use super::OutputShared;
use super::influx::{Answer, Writer, backoff};
use super::spool::{Spool, SpooledPoint};

/// How often a repeated, unchanged failure is logged again.
const LOG_REPEAT: Duration = Duration::from_secs(60);
/// Retry delay for local spool errors (e.g. a full disk refusing a delete).
const SPOOL_RETRY: Duration = Duration::from_millis(500);

pub(crate) struct Sender {
    pub shared: Arc<OutputShared>,
    pub spool: Spool,
    pub writer: Writer,
    pub stop: CancellationToken,
    /// Consecutive failed attempts (for the backoff).
    failures: u32,
    last_log: Option<(String, std::time::Instant)>,
}

/// How a delivery attempt ended.
enum Attempt {
    /// Everything in the batch was resolved (delivered or dead-lettered).
    Done,
    /// Wait this long before the next attempt.
    Wait(Duration),
    /// Nothing to read (yet): the counters ran ahead of a commit, or the bound dropped the points.
    Idle,
    /// The shutdown grace ran out.
    GaveUp,
}

impl Sender {
    pub fn new(
        shared: Arc<OutputShared>,
        spool: Spool,
        writer: Writer,
        stop: CancellationToken,
    ) -> Sender {
        Sender {
            shared,
            spool,
            writer,
            stop,
            failures: 0,
            last_log: None,
        }
    }

    /// Deliver until stopped; after the stop, keep delivering until the spool is empty, the
    /// shutdown deadline passes, or an attempt fails. Whatever is left stays in the spool for the
    /// next start.
    pub async fn run(mut self) {
        let config = self.shared.config.clone();
        let mut flush_at: Option<Instant> = None;
        // After a failed attempt the points are overdue: retry without waiting to fill a batch.
        let mut retrying = false;
        loop {
            let stopping = self.stop.is_cancelled();
            let pending = self.shared.spool_points.load(Ordering::Relaxed);
            if stopping && (pending == 0 || self.past_deadline()) {
                break;
            }
            if pending == 0 {
                flush_at = None;
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    () = self.stop.cancelled() => {}
                }
                continue;
            }
            let limit = config
                .batch_size
                .min(self.shared.max_batch.load(Ordering::Relaxed))
                .max(1);
            if !stopping && !retrying && pending < limit as u64 {
                let at = *flush_at.get_or_insert_with(|| Instant::now() + config.flush_interval);
                if Instant::now() < at {
                    tokio::select! {
                        () = self.shared.wake.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                        () = self.stop.cancelled() => {}
                    }
                    continue;
                }
            }
            flush_at = None;
            match self.attempt(limit).await {
                Attempt::Done => retrying = false,
                // Stopping, an output that just failed gets no more tries: its points are safe
                // in the spool, and waiting out the grace for it would only delay the exit.
                Attempt::Wait(_) if self.stop.is_cancelled() => break,
                Attempt::Wait(delay) => {
                    retrying = true;
                    let deadline = Instant::now() + delay;
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.shutdown_deadline() => break,
                    }
                }
                Attempt::Idle => {
                    tokio::select! {
                        () = self.shared.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = self.shutdown_deadline() => break,
                    }
                }
                Attempt::GaveUp => break,
            }
        }
        let left = self.shared.spool_points.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(output = %self.shared.name, points = left, "stopping with points not yet delivered; they stay in the spool for the next start");
        }
    }

    /// Take the oldest `limit` points and resolve them as far as the output lets us.
    async fn attempt(&mut self, limit: usize) -> Attempt {
        let batch = {
            let mut in_flight = self
                .shared
                .in_flight
                .lock()
                .expect("in-flight set lock poisoned");
            match self.spool.oldest(self.shared.id, limit) {
                Ok(batch) => {
                    in_flight.clear();
                    in_flight.extend(batch.iter().map(|p| p.id));
                    batch
                }
                Err(e) => {
                    drop(in_flight);
                    self.log_failure("spool", &format!("cannot read the spool: {e}"), false);
                    return Attempt::Wait(SPOOL_RETRY);
                }
            }
        };
        if batch.is_empty() {
            return Attempt::Idle;
        }
        let result = self.resolve(&batch).await;
        self.shared
            .in_flight
            .lock()
            .expect("in-flight set lock poisoned")
            .clear();
        result
    }

    /// Send `batch`, splitting on 413 and bisecting on 400; delivered parts leave the spool at once.
    async fn resolve(&mut self, batch: &[SpooledPoint]) -> Attempt {
        let config = self.shared.config.clone();
        let mut work = std::collections::VecDeque::new();
        work.push_back(0..batch.len());
        while let Some(range) = work.pop_front() {
            let part = &batch[range.clone()];
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            let answer = tokio::select! {
                answer = self.writer.write(part) => answer,
                () = self.shutdown_deadline() => return Attempt::GaveUp,
            };
            match answer {
                Answer::Delivered => {
                    if self.failures > 0 {
                        tracing::info!(output = %self.shared.name, after_failures = self.failures, "delivering again");
                    }
                    self.failures = 0;
                    self.last_log = None;
                    if !self.remove_delivered(part).await {
                        return Attempt::GaveUp;
                    }
                }
                Answer::TooLarge { message } if part.len() == 1 => {
                    self.dead_letter(&part[0], 413, &message).await;
                }
                Answer::BadRequest { message } if part.len() == 1 => {
                    self.dead_letter(&part[0], 400, &message).await;
                }
                Answer::TooLarge { message } => {
                    let half = part.len() / 2;
                    let before = self.shared.max_batch.fetch_min(half, Ordering::Relaxed);
                    if half < before {
                        tracing::warn!(output = %self.shared.name, points = part.len(), new_batch_size = half, message = %message, "413 payload too large: splitting the batch and sending at most {half} points per request from now on");
                    }
                    work.push_front(range.start + half..range.end);
                    work.push_front(range.start..range.start + half);
                }
                Answer::BadRequest { message } => {
                    let half = part.len() / 2;
                    tracing::debug!(output = %self.shared.name, points = part.len(), message = %message, "400: bisecting to isolate the bad lines");
                    work.push_front(range.start + half..range.end);
                    work.push_front(range.start..range.start + half);
                }
                Answer::Retry {
                    reason,
                    retry_after,
                } => {
                    self.failures += 1;
                    self.shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff(
                        self.failures,
                        config.retry_initial,
                        config.retry_max,
                        rand::random::<f64>(),
                        retry_after,
                    );
                    self.log_failure(
                        "retry",
                        &format!(
                            "{reason}; retrying in {} (attempt {}, {} points waiting)",
                            humantime::format_duration(round_ms(delay)),
                            self.failures,
                            self.shared.spool_points.load(Ordering::Relaxed)
                        ),
                        false,
                    );
                    return Attempt::Wait(delay);
                }
                Answer::Unauthorized { status, message } => {
                    self.failures += 1;
                    self.shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                    self.shared.auth_failures.fetch_add(1, Ordering::Relaxed);
                    let status =
                        status.map_or_else(|| "no credentials".to_string(), |s| s.to_string());
                    self.log_failure(
                        "auth",
                        &format!(
                            "credentials rejected ({status}): {message}; nothing is dropped — fix the token/password (the file or variable is re-read on every attempt); retrying every {}",
                            humantime::format_duration(config.auth_retry)
                        ),
                        true,
                    );
                    return Attempt::Wait(config.auth_retry);
                }
                Answer::NeedsHuman { status, message } => {
                    self.failures += 1;
                    self.shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                    let hint = if status == 404 {
                        " (does the database/bucket exist? is the URL right?)"
                    } else {
                        ""
                    };
                    self.log_failure(
                        "human",
                        &format!(
                            "the output answered {status}{hint}: {message}; nothing is dropped; retrying every {}",
                            humantime::format_duration(config.auth_retry)
                        ),
                        true,
                    );
                    return Attempt::Wait(config.auth_retry);
                }
            }
        }
        Attempt::Done
    }

    /// Remove acknowledged points, retrying a refusing disk rather than sending them twice.
    async fn remove_delivered(&mut self, part: &[SpooledPoint]) -> bool {
        loop {
            match self.spool.remove_delivered(self.shared.id, part) {
                Ok((points, bytes)) => {
                    self.shared
                        .spool_points
                        .fetch_sub(points, Ordering::Relaxed);
                    self.shared.spool_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    self.shared.delivered.fetch_add(points, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.log_failure(
                        "spool",
                        &format!(
                            "delivered, but cannot remove the points from the spool: {e}; retrying"
                        ),
                        false,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(SPOOL_RETRY) => {}
                        () = self.shutdown_deadline() => return false,
                    }
                }
            }
        }
    }

    async fn dead_letter(&mut self, point: &SpooledPoint, status: u16, message: &str) {
        loop {
            match self
                .spool
                .dead_letter(self.shared.id, point, status, message)
            {
                Ok(removed) => {
                    if removed {
                        self.shared.spool_points.fetch_sub(1, Ordering::Relaxed);
                        self.shared
                            .spool_bytes
                            .fetch_sub(point.line.len() as u64, Ordering::Relaxed);
                        self.shared.dead_letter.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::error!(output = %self.shared.name, status, line = %String::from_utf8_lossy(&point.line), server = %message, "the output rejected a point on its own; kept in the spool's dead_letters table");
                    return;
                }
                Err(e) => {
                    self.log_failure("spool", &format!("cannot dead-letter a point: {e}"), false);
                    tokio::select! {
                        () = tokio::time::sleep(SPOOL_RETRY) => {}
                        () = self.shutdown_deadline() => return,
                    }
                }
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.shared
            .deadline
            .lock()
            .expect("deadline lock poisoned")
            .is_some_and(|d| Instant::now() >= d)
    }

    /// Completes once the agent is stopping and the shutdown grace has run out.
    async fn shutdown_deadline(&self) {
        self.stop.cancelled().await;
        let deadline = *self.shared.deadline.lock().expect("deadline lock poisoned");
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Log a failure at once if it is new, else at most every minute; remember it for the report.
    fn log_failure(&mut self, kind: &str, message: &str, loud: bool) {
        *self
            .shared
            .last_error
            .lock()
            .expect("last-error lock poisoned") = Some(message.to_string());
        let now = std::time::Instant::now();
        let repeat = matches!(&self.last_log, Some((k, at)) if k == kind && now.duration_since(*at) < LOG_REPEAT);
        if repeat {
            return;
        }
        self.last_log = Some((kind.to_string(), now));
        let _ = self.spool.record_error(self.shared.id, message);
        if loud {
            tracing::error!(output = %self.shared.name, endpoint = %self.writer.endpoint(), "{message}");
        } else {
            tracing::warn!(output = %self.shared.name, endpoint = %self.writer.endpoint(), "{message}");
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
