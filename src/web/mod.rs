//! The agent's web page: [`pages`] (overview, target, incidents, agent), read-only and
//! server-rendered, served by `vantage serve` (and by the agent's listener).

pub mod pages;
