//! # vantage — the agent
//!
//! WHEN to measure, WHERE results go, WHAT they mean. How to measure lives in the `probes` crate.
//!
//! ## Layout
//! - [`cli`]: the `vantage` command line (`run`, `check`, `report`, `incidents`, and the on-call
//!   one-shots `ping`, `trace`, `http`, `dns`, `tcp`)
//! - [`probe`]: [`Probe`], the closed set of probe kinds (icmp, tcp, http, dns, trace)
//! - [`config`]: [`Config`], validated with every error reported at once
//! - [`scheduler`]: one scheduler for all probe kinds (stagger, jitter, skipped ticks, deadlines)
//! - [`store`]: the embedded SQLite store (default), with retention
//! - [`incident`]: incidents — state, durable outbox, drafts (Markdown, JSON, SVG), sinks
//! - [`rules`]: the rules engine, a pure state machine from observations to incident transitions
//! - [`sinks`]: delivery to InfluxDB-compatible outputs through a durable spool
//!
//! ## Data flow
//! `Config` → [`scheduler`] runs each [`Probe`] per target → [`Observation`]s (failures included) →
//! offered to the [`sinks`] (never blocking) and persisted in the [`store::Store`] → once stored,
//! the [`rules::Engine`] turns them into transitions → the [`incident::Manager`] opens/updates/
//! resolves incidents (state and a durable outbox event in one transaction) → the outbox delivers
//! them to incident sinks (the [`incident::DirectorySink`] by default).

pub mod cli;
pub mod config;
pub mod incident;
pub mod probe;
pub mod rules;
pub mod scheduler;
pub mod sinks;
pub mod store;

pub use config::Config;
pub use probe::Probe;
pub use probes::Observation;
