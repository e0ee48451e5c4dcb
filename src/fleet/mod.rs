//! The fleet: every agent writes to one shared time-series store, and cross-site questions ("does
//! sjc1 see it too?") are queries against that store — no protocol between agents.
//!
//! ## Layout
//! - `query`: [`FleetStore`], what every site measured to some targets over a window, asked of
//!   the shared store in InfluxQL (InfluxDB 1.x `/query`) or PromQL (VictoriaMetrics
//!   `/api/v1/query`) within a strict time budget → a [`FleetView`]
//! - `verdict`: [`verdict::verdict`], a pure function from a view to one sentence that localizes the
//!   fault (this site's side, the target, or a shared segment), with its reasoning
//!
//! The fleet evaluator (`vantage fleet`), which composes this view with the rules engine and the
//! incident pipeline, sits above both, in `crate::evaluator`.

pub mod query;
pub mod verdict;

pub use query::{FleetError, FleetRequest, FleetStore, FleetView, PeerHop, PeerTrace, SiteFigures};
