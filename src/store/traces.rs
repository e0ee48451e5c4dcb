//! Path traces for the web page's target page: the latest trace with every hop, and the traces
//! that found a new path.

use anyhow::Context;

use super::Store;

/// One stored trace: when, whether it ran, and its fields as stored (`hops`, `path_changed`,
/// `verdict_text`, ...; see [`super::trace_fields`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TracePoint {
    pub timestamp_ns: i64,
    pub failure: Option<String>,
    pub fields: serde_json::Value,
}

impl Store {
    /// The latest trace of one (probe, target), if any.
    pub fn latest_trace(&self, probe: &str, target: &str) -> anyhow::Result<Option<TracePoint>> {
        let mut traces = self.traces(
            "SELECT ts_ns, failure, fields FROM observations
             WHERE measurement = 'trace' AND probe = ?1 AND target = ?2 AND ts_ns >= ?3
                   AND ts_ns <= ?4
             ORDER BY ts_ns DESC LIMIT 1",
            probe,
            target,
            i64::MIN,
            i64::MAX,
        )?;
        Ok(traces.pop())
    }

    /// The traces of one (probe, target) from `from_ns` to `to_ns` that found a new path, oldest
    /// first, at most `limit` (the newest ones).
    pub fn path_changes(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<TracePoint>> {
        let sql = format!(
            "SELECT ts_ns, failure, fields FROM observations
             WHERE measurement = 'trace' AND probe = ?1 AND target = ?2 AND ts_ns BETWEEN ?3 AND ?4
                   AND json_extract(fields, '$.path_changed') = 1
             ORDER BY ts_ns DESC LIMIT {limit}"
        );
        let mut traces = self.traces(&sql, probe, target, from_ns, to_ns)?;
        traces.reverse();
        Ok(traces)
    }

    fn traces(
        &self,
        sql: &str,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<TracePoint>> {
        let mut query = self.conn.prepare_cached(sql)?;
        let rows = query.query_map(rusqlite::params![probe, target, from_ns, to_ns], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut traces = Vec::new();
        for row in rows {
            let (timestamp_ns, failure, fields) = row?;
            traces.push(TracePoint {
                timestamp_ns,
                failure,
                fields: serde_json::from_str(&fields)
                    .with_context(|| format!("corrupt trace fields for {probe}/{target}"))?,
            });
        }
        Ok(traces)
    }
}
