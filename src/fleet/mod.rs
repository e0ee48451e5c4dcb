//! The fleet: every agent writes to one shared store; cross-site questions are queries against it.
//!
//! ## Layout
//! - `evaluator`: [`evaluator::Evaluator`], fleet-scope rules (`vantage fleet`) on the agents'
//!   own rules engine and incident pipeline

pub mod evaluator;
