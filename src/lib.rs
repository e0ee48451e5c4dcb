//! # vantage — the agent
//!
//! WHEN to measure, WHERE results go, WHAT they mean. How to measure lives in the `probes` crate.
//!
//! ## Layout
//! Dependencies point one way (`tests/architecture.rs` keeps it so):
//! `cli` → [`agent`] → (`scheduler`, `store`, `sinks`, `rules`, `incident`) → `config`, `probe`,
//! `record` → the `probes` crate.
//! - [`cli`]: the `vantage` command line (`run`, `check`, `report`, `incidents`, and the on-call
//!   one-shots `ping`, `trace`, `http`, `dns`, `tcp`); argument handling only
//! - [`agent`]: [`Agent`] — the pipeline in one place: start, snapshot, stop
//! - [`config`]: [`Config`], validated with every error reported at once (outputs and incident
//!   sinks included)
//! - [`record`]: [`record::Record`], an observation with its tags: what every stage passes on
//! - [`probe`]: [`Probe`], the closed set of probe kinds (icmp, tcp, http, dns, trace)
//! - [`scheduler`]: one scheduler for all probe kinds (stagger, jitter, skipped ticks, deadlines)
//! - [`store`]: the embedded SQLite store (default), with retention
//! - [`sinks`]: delivery to InfluxDB-compatible outputs through a durable spool
//! - [`rules`]: the rules engine, a pure state machine from observations to incident transitions
//! - [`fleet`]: the fleet's view over the shared store (what every site measured) and its verdict
//! - [`evaluator`]: `vantage fleet`, fleet-scope rules over that view on the agents' rules engine
//!   and incident pipeline (like [`agent`], a composition above them)
//! - [`incident`]: incidents — state, durable outbox, drafts (Markdown, JSON, SVG), sinks
//!
//! ## Data flow (see [`agent`] for what each fan-out does when its consumer is behind)
//! `Config` → [`scheduler`] runs each [`Probe`] per target → [`Observation`]s (failures included),
//! as [`record::Record`]s → the agent's dispatcher offers each to the [`sinks`] (never blocking)
//! and hands it to the [`store::Store`]'s writer → once stored, the [`rules::Engine`] turns them
//! into transitions → the [`incident::Manager`] opens/updates/resolves incidents (state and a
//! durable outbox event in one transaction) → the outbox delivers them to incident sinks (the
//! [`incident::DirectorySink`] by default).

pub mod agent;
pub mod cli;
pub mod config;
pub mod evaluator;
pub mod fleet;
pub mod incident;
pub mod probe;
pub mod record;
pub mod rules;
pub mod scheduler;
pub mod sinks;
pub mod status;
pub mod store;
pub mod web;

pub use agent::Agent;
pub use config::Config;
pub use probe::Probe;
pub use probes::Observation;
