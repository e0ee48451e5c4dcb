//! # vantage — the agent
//!
//! WHEN to measure, WHERE results go, WHAT they mean. How to measure lives in the `probes` crate.
//!
//! ## Layout
//! - [`cli`]: the `vantage` command line (`run`, `check`, `report`, `ping`)
//! - [`config`]: [`Config`], validated with every error reported at once
//! - [`scheduler`]: one scheduler for all probe kinds (stagger, jitter, skipped ticks, deadlines)
//! - [`store`]: the embedded SQLite store (default), with retention
//! - [`sinks`]: delivery to InfluxDB-compatible outputs through a durable spool
//!
//! ## Data flow
//! `Config` → [`scheduler`] runs each [`Probe`] per target → [`Observation`]s (failures included) →
//! the dispatcher persists them in the [`store::Store`] and offers them to the [`sinks`].

pub mod cli;
pub mod config;
pub mod probe;
pub mod scheduler;
pub mod sinks;
pub mod store;

pub use config::Config;
pub use probe::Probe;
pub use probes::Observation;
