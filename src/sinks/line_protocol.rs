//! The measurement schema as InfluxDB line protocol: a pure function from a [`Record`] to
//! [`Point`]s ([`encode`]), and from a `Point` to one line ([`Point::line`]), written with InfluxData's
//! own builder (`influxdb_line_protocol::LineProtocolBuilder`) and tested against InfluxData's own
//! parser (`influxdb_line_protocol::parse_lines`, the parser of InfluxDB 3).
//!
//! Each measurement kind is one match arm in [`encode`]; the self-metrics (`agent`) point is built by
//! [`agent_point`].
//!
//! ## What line protocol cannot carry, and what we do instead
//! String fields round-trip exactly, whatever they contain (quotes, backslashes — a trailing one too —
//! newlines, any Unicode): the builder escapes `"` and `\`. Tag values round-trip exactly too, with
//! three exceptions that *no* line protocol parser can read back — InfluxData's Rust parser (InfluxDB 3)
//! nor the Go parser of InfluxDB 1.x/2.x — so the builder alone would emit a corrupt line or, worse,
//! let a tag value with a newline inject a second line into the batch:
//! - **control characters** (`\n`, `\r`, `\t`, …) end a line or a token in every parser and cannot be
//!   escaped: each becomes a space (`U+0020`);
//! - **a trailing backslash** is rejected by every parser (even escaped as `\\`): the last character
//!   becomes `⧵` (`U+29F5 REVERSE SOLIDUS OPERATOR`, which looks the same);
//! - **an empty value** is not allowed: the tag is left out, which InfluxDB's data model treats as
//!   the same series.
//!
//! [`stored_tag_value`] is that mapping; it is the identity for every other value, and the property
//! test in this module checks both halves. Non-finite floats (NaN, ±inf) are not valid line protocol
//! either and are left out like `None` fields.
//!
//! Server differences worth knowing (measured against the Debian packages used by the tests):
//! InfluxDB 1.x keeps `\\` in a tag value as two backslashes (its Go parser unescapes only `\,`, `\=`
//! and `\ ` in tags), while VictoriaMetrics and InfluxDB 3 store one; and VictoriaMetrics splits lines on
//! every newline, so it skips a point whose *string field* holds a raw newline (it keeps no string
//! fields anyway). The schema's string fields today are failure kinds — fixed snake_case words.

use std::net::IpAddr;

use influxdb_line_protocol::LineProtocolBuilder;
use influxdb_line_protocol::builder::{AfterField, AfterMeasurement};
use probes::{Measurement, Outcome, PingStats};

use crate::record::Record;

/// One point of the measurement schema, before it is written as a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: &'static str,
    /// In order; empty values are allowed here and left out when written.
    pub tags: Vec<(&'static str, String)>,
    /// In order; a point needs at least one field to be written.
    pub fields: Vec<(&'static str, FieldValue)>,
    /// Nanoseconds since the Unix epoch: when the measurement was made.
    pub timestamp_ns: i64,
}

/// A field value of one of line protocol's types.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Integer(i64),
    Float(f64),
    Boolean(bool),
    String(String),
}

/// The schema's points for one record: one arm per measurement kind. Pure: same record, same
/// points.
pub fn encode(record: &Record) -> Vec<Point> {
    let observation = &record.observation;
    let timestamp_ns = observation.timestamp_ns();
    match &observation.measurement {
        Measurement::Ping(stats) => {
            let mut tags = common_tags(record);
            if let Some(family) = family(record.address.as_deref()) {
                tags.push(("family", family.to_string()));
            }
            let mut fields = ping_fields(stats);
            if let Some(kind) = failure_kind(&observation.outcome) {
                fields.push(("failure", FieldValue::String(kind.to_string())));
            }
            vec![Point {
                measurement: "ping",
                tags,
                fields,
                timestamp_ns,
            }]
        }
        Measurement::Tcp(stats) => {
            let mut fields = outcome_fields(&observation.outcome);
            push_ms(&mut fields, "connect_ms", stats.connect_ms);
            push_ms(&mut fields, "resolve_ms", stats.resolve_ms);
            vec![Point {
                measurement: "tcp",
                tags: common_tags(record),
                fields,
                timestamp_ns,
            }]
        }
        Measurement::Http(stats) => {
            let mut tags = common_tags(record);
            tags.push(("method", stats.method.clone()));
            let mut fields = outcome_fields(&observation.outcome);
            if let Some(code) = stats.status_code {
                fields.push(("status_code", FieldValue::Integer(i64::from(code))));
            }
            for (name, value) in [
                ("resolve_ms", stats.resolve_ms),
                ("connect_ms", stats.connect_ms),
                ("tls_ms", stats.tls_ms),
                ("processing_ms", stats.processing_ms),
                ("transfer_ms", stats.transfer_ms),
                ("total_ms", Some(stats.total_ms)),
                ("cert_expiry_days", stats.cert_expiry_days),
            ] {
                push_ms(&mut fields, name, value);
            }
            let bytes = i64::try_from(stats.body_bytes).unwrap_or(i64::MAX);
            fields.push(("body_bytes", FieldValue::Integer(bytes)));
            fields.push(("redirects", FieldValue::Integer(i64::from(stats.redirects))));
            vec![Point {
                measurement: "http",
                tags,
                fields,
                timestamp_ns,
            }]
        }
        Measurement::Dns(stats) => {
            let mut tags = common_tags(record);
            tags.push(("server", stats.server.clone()));
            tags.push(("record_type", stats.record_type.clone()));
            let mut fields = outcome_fields(&observation.outcome);
            if let Some(rcode) = &stats.rcode {
                fields.push(("rcode", FieldValue::String(rcode.clone())));
            }
            push_ms(&mut fields, "latency_ms", stats.latency_ms);
            fields.push(("answers", FieldValue::Integer(i64::from(stats.answers))));
            vec![Point {
                measurement: "dns",
                tags,
                fields,
                timestamp_ns,
            }]
        }
        // One `trace` point, and one `trace_hop` point per TTL (hop addresses are fields: tags
        // stay low-cardinality).
        Measurement::Trace(report) => {
            let mut fields = outcome_fields(&observation.outcome);
            fields.extend([
                ("hops", FieldValue::Integer(report.hops.len() as i64)),
                ("reached", FieldValue::Boolean(report.reached)),
                ("path_hash", FieldValue::String(report.path_hash.clone())),
                ("path_changed", FieldValue::Boolean(report.path_changed)),
            ]);
            let mut points = vec![Point {
                measurement: "trace",
                tags: common_tags(record),
                fields,
                timestamp_ns,
            }];
            for hop in &report.hops {
                let mut tags = common_tags(record);
                tags.push(("hop", hop.ttl.to_string()));
                let mut fields = vec![
                    ("sent", FieldValue::Integer(i64::from(hop.sent))),
                    ("received", FieldValue::Integer(i64::from(hop.received))),
                    ("loss_pct", FieldValue::Float(hop.loss_pct)),
                ];
                if let Some(address) = hop.addresses.first() {
                    fields.push(("address", FieldValue::String(address.to_string())));
                    // Stores that drop string fields (VictoriaMetrics) keep this one: the fleet
                    // view reads other sites' hops from it.
                    if let IpAddr::V4(v4) = address {
                        fields.push(("address_v4", FieldValue::Integer(i64::from(u32::from(*v4)))));
                    }
                }
                for (name, value) in [
                    ("rtt_last_ms", hop.rtt_last_ms),
                    ("rtt_avg_ms", hop.rtt_avg_ms),
                    ("rtt_best_ms", hop.rtt_best_ms),
                    ("rtt_worst_ms", hop.rtt_worst_ms),
                    ("rtt_stddev_ms", hop.rtt_stddev_ms),
                ] {
                    push_ms(&mut fields, name, value);
                }
                points.push(Point {
                    measurement: "trace_hop",
                    tags,
                    fields,
                    timestamp_ns,
                });
            }
            points
        }
    }
}

/// `success`, and `failure` (the failure kind) when the run failed: every service check has both.
fn outcome_fields(outcome: &Outcome) -> Vec<(&'static str, FieldValue)> {
    let mut fields = vec![("success", FieldValue::Boolean(*outcome == Outcome::Success))];
    if let Some(kind) = failure_kind(outcome) {
        fields.push(("failure", FieldValue::String(kind.to_string())));
    }
    fields
}

fn push_ms(fields: &mut Vec<(&'static str, FieldValue)>, name: &'static str, value: Option<f64>) {
    if let Some(value) = value {
        fields.push((name, FieldValue::Float(value)));
    }
}

/// What one output's delivery looked like at one moment: the `agent` measurement's fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSample {
    /// Observations made since the agent started.
    pub observations: u64,
    /// Points waiting in this output's spool, and their size in bytes of line protocol.
    pub spool_points: u64,
    pub spool_bytes: u64,
    /// Since the spool was created (kept across restarts).
    pub delivered_points: u64,
    pub dropped_points: u64,
    pub dead_letter_points: u64,
    /// Worst lateness of a probe run against its schedule, recently.
    pub probe_lag_ms: f64,
    /// Age of the oldest point not yet delivered; None when the spool is empty.
    pub oldest_undelivered_age_s: Option<f64>,
    /// Echo replies the ICMP client rejected since the agent started: a tag that does not verify
    /// (forged, or another process's by coincidence). 0 without ICMP probes.
    pub icmp_rejected_replies: u64,
}

/// The `agent` self-metrics point for one output (tag `output`).
pub fn agent_point(
    agent: &str,
    site: &str,
    output: &str,
    sample: &AgentSample,
    timestamp_ns: i64,
) -> Point {
    let int = |v: u64| FieldValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let mut fields = vec![
        ("observations", int(sample.observations)),
        ("spool_points", int(sample.spool_points)),
        ("spool_bytes", int(sample.spool_bytes)),
        ("delivered_points", int(sample.delivered_points)),
        ("dropped_points", int(sample.dropped_points)),
        ("dead_letter_points", int(sample.dead_letter_points)),
        ("probe_lag_ms", FieldValue::Float(sample.probe_lag_ms)),
        ("icmp_rejected_replies", int(sample.icmp_rejected_replies)),
    ];
    if let Some(age) = sample.oldest_undelivered_age_s {
        fields.push(("oldest_undelivered_age_s", FieldValue::Float(age)));
    }
    Point {
        measurement: "agent",
        tags: vec![
            ("agent", agent.to_string()),
            ("site", site.to_string()),
            ("output", output.to_string()),
        ],
        fields,
        timestamp_ns,
    }
}

fn common_tags(record: &Record) -> Vec<(&'static str, String)> {
    vec![
        ("agent", record.agent.clone()),
        ("site", record.site.clone()),
        ("probe", record.probe.clone()),
        ("target", record.target.clone()),
        ("target_site", record.target_site.clone()),
    ]
}

/// `ipv4`/`ipv6` from the probed address; None when the target never resolved.
fn family(address: Option<&str>) -> Option<&'static str> {
    match address?.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("ipv4"),
        IpAddr::V6(_) => Some("ipv6"),
    }
}

fn failure_kind(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Success => None,
        Outcome::Failure { kind, .. } => Some(kind.as_str()),
    }
}

fn ping_fields(stats: &PingStats) -> Vec<(&'static str, FieldValue)> {
    let mut fields = vec![
        ("sent", FieldValue::Integer(i64::from(stats.sent))),
        ("received", FieldValue::Integer(i64::from(stats.received))),
        ("loss_pct", FieldValue::Float(stats.loss_pct)),
    ];
    for (name, value) in [
        ("rtt_min_ms", stats.rtt_min_ms),
        ("rtt_p10_ms", stats.rtt_p10_ms),
        ("rtt_p25_ms", stats.rtt_p25_ms),
        ("rtt_median_ms", stats.rtt_median_ms),
        ("rtt_p75_ms", stats.rtt_p75_ms),
        ("rtt_p90_ms", stats.rtt_p90_ms),
        ("rtt_max_ms", stats.rtt_max_ms),
        ("rtt_avg_ms", stats.rtt_avg_ms),
        ("rtt_stddev_ms", stats.rtt_stddev_ms),
        ("jitter_ms", stats.jitter_ms),
    ] {
        if let Some(value) = value {
            fields.push((name, FieldValue::Float(value)));
        }
    }
    fields
}

/// The tag value a line protocol parser reads back for `value` (see the module docs): the identity
/// unless `value` holds a control character or ends in a backslash. Empty stays empty (the tag is
/// left out).
pub fn stored_tag_value(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.ends_with('\\') {
        out.pop();
        out.push('\u{29F5}');
    }
    out
}

impl Point {
    /// The point as one line of line protocol, without the trailing newline; None when it has no
    /// field that can be written (a point needs at least one).
    pub fn line(&self) -> Option<String> {
        let mut fields = self.fields.iter().filter(|(_, v)| match v {
            FieldValue::Float(f) => f.is_finite(),
            _ => true,
        });
        let (first_key, first_value) = fields.next()?;
        let mut builder = LineProtocolBuilder::new().measurement(self.measurement);
        for (key, value) in &self.tags {
            if !value.is_empty() {
                builder = builder.tag(key, &stored_tag_value(value));
            }
        }
        let mut builder = first_field(builder, first_key, first_value);
        for (key, value) in fields {
            builder = next_field(builder, key, value);
        }
        let mut bytes = builder.timestamp(self.timestamp_ns).close_line().build();
        bytes.pop(); // the builder's '\n'; the spool keeps one line per row
        // The builder only ever writes the &str pieces it was given plus ASCII.
        Some(String::from_utf8(bytes).expect("line protocol built from UTF-8 strings is UTF-8"))
    }
}

fn first_field(
    builder: LineProtocolBuilder<Vec<u8>, AfterMeasurement>,
    key: &str,
    value: &FieldValue,
) -> LineProtocolBuilder<Vec<u8>, AfterField> {
    match value {
        FieldValue::Integer(v) => builder.field(key, *v),
        FieldValue::Float(v) => builder.field(key, *v),
        FieldValue::Boolean(v) => builder.field(key, *v),
        FieldValue::String(v) => builder.field(key, v.as_str()),
    }
}

fn next_field(
    builder: LineProtocolBuilder<Vec<u8>, AfterField>,
    key: &str,
    value: &FieldValue,
) -> LineProtocolBuilder<Vec<u8>, AfterField> {
    match value {
        FieldValue::Integer(v) => builder.field(key, *v),
        FieldValue::Float(v) => builder.field(key, *v),
        FieldValue::Boolean(v) => builder.field(key, *v),
        FieldValue::String(v) => builder.field(key, v.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use influxdb_line_protocol::{FieldValue as Parsed, parse_lines};
    use probes::{FailureKind, Observation};
    use proptest::prelude::*;

    use super::*;

    fn record(rtts: Vec<Option<f64>>, address: Option<&str>) -> Record {
        let stats = PingStats::from_rtts(rtts);
        let outcome = if stats.received == 0 {
            Outcome::failure(FailureKind::Timeout, "no reply to 3 echoes")
        } else {
            Outcome::Success
        };
        Record {
            agent: "a1".into(),
            site: "scl3".into(),
            probe: "icmp".into(),
            target: "sjc1-core".into(),
            target_site: "sjc1".into(),
            address: address.map(String::from),
            observation: Observation {
                started_at: SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(1_800_000_000_123_456_789),
                duration: Duration::from_millis(2000),
                outcome,
                measurement: Measurement::Ping(stats),
            },
        }
    }

    fn lines(record: &Record) -> Vec<String> {
        encode(record).iter().filter_map(Point::line).collect()
    }

    #[test]
    fn a_trace_is_one_trace_point_and_one_trace_hop_point_per_ttl() {
        let hop = |ttl: u8, address: Option<&str>, received: u32| probes::trace::Hop {
            ttl,
            addresses: address
                .into_iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
            sent: 10,
            received,
            loss_pct: 100.0 * f64::from(10 - received) / 10.0,
            rtt_last_ms: (received > 0).then_some(1.5),
            rtt_avg_ms: (received > 0).then_some(1.25),
            rtt_best_ms: (received > 0).then_some(1.0),
            rtt_worst_ms: (received > 0).then_some(2.0),
            rtt_stddev_ms: (received > 0).then_some(0.25),
        };
        let mut r = record(vec![Some(1.0)], Some("198.18.2.2"));
        let mut report = probes::trace::TraceReport::new(
            "198.18.2.2".parse().expect("address"),
            vec![
                hop(1, Some("198.18.0.1"), 10),
                hop(2, None, 0),
                hop(3, Some("198.18.2.2"), 7),
            ],
        );
        report.path_changed = true;
        r.observation.measurement = Measurement::Trace(report);
        let lines = lines(&r);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let parsed: Vec<_> = lines
            .iter()
            .map(|l| parse_lines(l).next().expect("a line").expect("parses"))
            .collect();
        assert_eq!(parsed[0].series.measurement.as_str(), "trace");
        let field = |i: usize, name: &str| {
            parsed[i]
                .field_set
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.clone())
        };
        let tag = |i: usize, name: &str| {
            parsed[i].series.tag_set.as_ref().and_then(|tags| {
                tags.iter()
                    .find(|(k, _)| k.as_str() == name)
                    .map(|(_, v)| v.to_string())
            })
        };
        assert_eq!(field(0, "hops"), Some(Parsed::I64(3)));
        assert_eq!(field(0, "path_changed"), Some(Parsed::Boolean(true)));
        for (i, ttl) in [(1, "1"), (2, "2"), (3, "3")] {
            assert_eq!(parsed[i].series.measurement.as_str(), "trace_hop");
            assert_eq!(tag(i, "hop").as_deref(), Some(ttl));
            assert_eq!(tag(i, "target").as_deref(), Some("sjc1-core"));
        }
        assert!(
            matches!(field(1, "address"), Some(Parsed::String(a)) if a.as_str() == "198.18.0.1")
        );
        assert!(
            field(1, "address_v4") == Some(Parsed::I64(3_323_068_417)),
            "198.18.0.1 as an integer"
        );
        assert_eq!(field(2, "address"), None, "a silent hop has no address");
        assert_eq!(field(2, "rtt_avg_ms"), None);
        assert_eq!(field(3, "received"), Some(Parsed::I64(7)));
    }

    #[test]
    fn ping_line_follows_the_schema() {
        let r = record(
            vec![Some(1.0), Some(3.0), None, Some(2.0)],
            Some("198.18.2.2"),
        );
        assert_eq!(
            lines(&r),
            [
                "ping,agent=a1,site=scl3,probe=icmp,target=sjc1-core,target_site=sjc1,family=ipv4 \
              sent=4i,received=3i,loss_pct=25,rtt_min_ms=1,rtt_p10_ms=1.2,rtt_p25_ms=1.5,\
              rtt_median_ms=2,rtt_p75_ms=2.5,rtt_p90_ms=2.8,rtt_max_ms=3,rtt_avg_ms=2,\
              rtt_stddev_ms=0.816496580927726,jitter_ms=1.5 1800000000123456789"
            ]
        );
    }

    #[test]
    fn failed_round_omits_none_fields_and_carries_the_failure_kind() {
        let r = record(vec![None, None, None], Some("2001:db8::2"));
        assert_eq!(
            lines(&r),
            [
                "ping,agent=a1,site=scl3,probe=icmp,target=sjc1-core,target_site=sjc1,family=ipv6 \
              sent=3i,received=0i,loss_pct=100,failure=\"timeout\" 1800000000123456789"
            ]
        );
        let unresolved = record(vec![], None);
        assert_eq!(
            lines(&unresolved),
            [
                "ping,agent=a1,site=scl3,probe=icmp,target=sjc1-core,target_site=sjc1 \
              sent=0i,received=0i,loss_pct=100,failure=\"timeout\" 1800000000123456789"
            ]
        );
    }

    #[test]
    fn agent_point_has_the_self_metrics_fields() {
        let sample = AgentSample {
            observations: 10,
            spool_points: 2,
            spool_bytes: 300,
            delivered_points: 8,
            dropped_points: 1,
            dead_letter_points: 0,
            probe_lag_ms: 1.5,
            oldest_undelivered_age_s: Some(4.25),
            icmp_rejected_replies: 3,
        };
        assert_eq!(
            agent_point("a1", "scl3", "vm", &sample, 7)
                .line()
                .expect("line"),
            "agent,agent=a1,site=scl3,output=vm observations=10i,spool_points=2i,spool_bytes=300i,\
             delivered_points=8i,dropped_points=1i,dead_letter_points=0i,probe_lag_ms=1.5,\
             icmp_rejected_replies=3i,oldest_undelivered_age_s=4.25 7"
        );
    }

    #[test]
    fn tags_that_line_protocol_cannot_carry_are_mapped_not_corrupted() {
        assert_eq!(stored_tag_value("a\nb\tc\rd"), "a b c d");
        assert_eq!(stored_tag_value(r"C:\"), "C:\u{29F5}");
        assert_eq!(stored_tag_value(r"a\\"), "a\\\u{29F5}");
        assert_eq!(stored_tag_value("a,b c=d\\e\"f ü"), "a,b c=d\\e\"f ü");
        let point = Point {
            measurement: "ping",
            tags: vec![("target", "x\ny=1 2".into()), ("site", String::new())],
            fields: vec![
                ("nan", FieldValue::Float(f64::NAN)),
                ("ok", FieldValue::Boolean(true)),
            ],
            timestamp_ns: 1,
        };
        assert_eq!(
            point.line().expect("line"),
            r"ping,target=x\ y\=1\ 2 ok=true 1"
        );
        let no_fields = Point {
            fields: vec![("inf", FieldValue::Float(f64::INFINITY))],
            ..point
        };
        assert_eq!(no_fields.line(), None);
    }

    /// Characters that stress escaping, plus arbitrary Unicode.
    fn nasty_string() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            ',', ' ', '=', '"', '\\', '\n', '\r', '\t', 'ü', '€', '😀', 'a', '0', '\u{0}',
        ]);
        let any = prop::char::any();
        prop::collection::vec(prop_oneof![3 => special, 1 => any], 0..24)
            .prop_map(|chars| chars.into_iter().collect())
    }

    fn field_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<i64>().prop_map(FieldValue::Integer),
            (prop::num::f64::POSITIVE
                | prop::num::f64::NEGATIVE
                | prop::num::f64::NORMAL
                | prop::num::f64::SUBNORMAL
                | prop::num::f64::ZERO)
                .prop_map(FieldValue::Float),
            any::<bool>().prop_map(FieldValue::Boolean),
            nasty_string().prop_map(FieldValue::String),
        ]
    }

    const TAG_KEYS: [&str; 5] = ["agent", "site", "probe", "target", "target_site"];
    const FIELD_KEYS: [&str; 4] = ["sent", "loss_pct", "failure", "reached"];

    fn point() -> impl Strategy<Value = Point> {
        (
            prop::collection::vec(nasty_string(), TAG_KEYS.len()),
            prop::collection::vec(field_value(), 1..=FIELD_KEYS.len()),
            any::<i64>(),
        )
            .prop_map(|(tag_values, field_values, timestamp_ns)| Point {
                measurement: "ping",
                tags: TAG_KEYS.iter().copied().zip(tag_values).collect(),
                fields: FIELD_KEYS.iter().copied().zip(field_values).collect(),
                timestamp_ns,
            })
    }

    fn same_field(written: &FieldValue, parsed: &Parsed<'_>) -> bool {
        match (written, parsed) {
            (FieldValue::Integer(a), Parsed::I64(b)) => a == b,
            (FieldValue::Float(a), Parsed::F64(b)) => a.to_bits() == b.to_bits() || a == b,
            (FieldValue::Boolean(a), Parsed::Boolean(b)) => a == b,
            (FieldValue::String(a), Parsed::String(b)) => a == b.as_str(),
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A batch of random points, written and parsed back with InfluxData's parser: as many lines
        /// as points (no injection), every tag value as `stored_tag_value` says (the identity when
        /// line protocol can carry it), every field and timestamp exact.
        #[test]
        fn random_points_round_trip(points in prop::collection::vec(point(), 1..8)) {
            let body: String = points.iter().filter_map(Point::line).map(|l| l + "\n").collect();
            let parsed: Vec<_> = parse_lines(&body).collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("{e} in {body:?}")))?;
            prop_assert_eq!(parsed.len(), points.len());
            for (point, line) in points.iter().zip(&parsed) {
                prop_assert_eq!(line.series.measurement.as_str(), point.measurement);
                let expected_tags: Vec<(&str, String)> = point.tags.iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (*k, stored_tag_value(v)))
                    .collect();
                let parsed_tags: Vec<(&str, String)> = line.series.tag_set.iter().flatten()
                    .map(|(k, v)| (k.as_str(), v.to_string()))
                    .collect();
                let expected_keys: Vec<&str> = expected_tags.iter().map(|(k, _)| *k).collect();
                let parsed_keys: Vec<&str> = parsed_tags.iter().map(|(k, _)| *k).collect();
                prop_assert_eq!(parsed_keys, expected_keys);
                for ((_, expected), (_, parsed)) in expected_tags.iter().zip(&parsed_tags) {
                    prop_assert_eq!(parsed, expected);
                }
                for (key, value) in &point.tags {
                    let representable = !value.chars().any(char::is_control) && !value.ends_with('\\');
                    if representable && !value.is_empty() {
                        prop_assert_eq!(line.tag_value(key).map(|v| v.to_string()), Some(value.clone()));
                    }
                }
                prop_assert_eq!(line.field_set.len(), point.fields.len());
                for ((key, written), (parsed_key, parsed)) in point.fields.iter().zip(&line.field_set) {
                    prop_assert_eq!(parsed_key.as_str(), *key);
                    prop_assert!(same_field(written, parsed), "{key}: wrote {written:?}, parsed {parsed:?}");
                }
                prop_assert_eq!(line.timestamp, Some(point.timestamp_ns));
            }
        }

        /// String fields carry anything, exactly — a trailing backslash and newlines included.
        #[test]
        fn string_fields_round_trip_exactly(value in nasty_string(), tail_backslash in any::<bool>()) {
            let value = if tail_backslash { value + "\\" } else { value };
            let point = Point {
                measurement: "ping",
                tags: vec![("target", value.clone())],
                fields: vec![("failure", FieldValue::String(value.clone())), ("sent", FieldValue::Integer(1))],
                timestamp_ns: 1,
            };
            let line = point.line().expect("has fields");
            let parsed: Vec<_> = parse_lines(&line).collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("{e} in {line:?}")))?;
            prop_assert_eq!(parsed.len(), 1);
            match parsed[0].field_value("failure") {
                Some(Parsed::String(s)) => prop_assert_eq!(s.as_str(), value.as_str()),
                other => prop_assert!(false, "failure field parsed as {other:?}"),
            }
        }
    }
}
