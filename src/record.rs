//! [`Record`]: what every stage of the pipeline passes on — the scheduler makes it; the store,
//! the outputs and the rules engine each take it. It lives low, beside nothing but the
//! `probes` crate, so that every stage can use it without using another.

use probes::Observation;
use serde::Serialize;

/// An observation with the tags that say who measured what (the schema's common tags).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub agent: String,
    pub site: String,
    pub probe: String,
    pub target: String,
    pub target_site: String,
    /// The address actually probed, if the target resolved.
    pub address: Option<String>,
    pub observation: Observation,
}
