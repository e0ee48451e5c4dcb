//! The keys of the service and path probe kinds — `tcp`, `http`, `dns`, `trace` — with the same
//! strictness as the rest of the file: every value's type, range and syntax, settings that
//! contradict each other, and timings that cannot work. (`icmp` lives with the probe walk itself.)

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use probes::{
    DnsExpect, DnsRecordType, DnsSettings, DnsTransport, HeaderMatch, HttpExpect, HttpSettings,
    TraceProtocol, TraceSettings,
};
use toml::de::{DeTable, DeValue};

use super::super::{HttpProbe, ProbeKind, TRACE_GRACE};
use super::{Checker, DNS, Got, HTTP, Key, TCP, TRACE, a, ceil_to_millis, check_host, closest};
use crate::config::format_duration;

/// Defaults of the `http` kind.
const DEFAULT_MAX_REDIRECTS: u32 = 10;
const MAX_REDIRECTS: i128 = 100;
const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
const MAX_BODY_BYTES: i128 = 1 << 30;
/// Defaults of the `trace` kind.
const DEFAULT_TRACE_COUNT: u32 = 10;
const MAX_TRACE_COUNT: i128 = 1000;
const DEFAULT_MAX_TTL: u8 = 30;
const MAX_TTL: i128 = 64;

const SCHEMES: [&str; 2] = ["http", "https"];
const TRANSPORTS: [&str; 2] = ["udp", "tcp"];
const PROTOCOLS: [&str; 3] = ["icmp", "udp", "tcp"];
const RECORD_TYPES: [&str; 7] = ["A", "AAAA", "CNAME", "MX", "TXT", "SOA", "NS"];
const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];

/// `Some(value)` for a valid or absent key (with `default`), `None` when already reported.
fn or<T>(got: Got<T>, default: T) -> Option<T> {
    match got {
        Got::Absent => Some(default),
        Got::Invalid => None,
        Got::Valid(value, _) => Some(value),
    }
}

/// `Some(None)` when absent, `Some(Some(value))` when valid, `None` when already reported.
fn optional<T>(got: Got<T>) -> Option<Option<T>> {
    match got {
        Got::Absent => Some(None),
        Got::Invalid => None,
        Got::Valid(value, _) => Some(Some(value)),
    }
}

/// A header name: an HTTP token (RFC 9110).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

impl Checker<'_> {
    // ---- typed getters the kinds need --------------------------------------------------------

    pub(super) fn boolean(&mut self, table: &DeTable<'_>, key: &Key) -> Got<bool> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        match value.get_ref() {
            DeValue::Boolean(b) => Got::Valid(*b, value.span()),
            _ => {
                self.wrong_type(value, key);
                Got::Invalid
            }
        }
    }

    /// A non-empty array of strings, each with its span.
    pub(super) fn strings(
        &mut self,
        table: &DeTable<'_>,
        key: &Key,
    ) -> Got<Vec<(String, Range<usize>)>> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(value, key);
            return Got::Invalid;
        };
        if array.is_empty() {
            self.error(
                value.span(),
                format!("`{}` is an empty list", key.name),
                format!("remove it, or list at least one, e.g. `{}`", key.example),
            );
            return Got::Invalid;
        }
        let mut items = Vec::new();
        let mut valid = true;
        for entry in array.iter() {
            match entry.get_ref().as_str() {
                Some(text) => items.push((text.to_string(), entry.span())),
                None => {
                    self.error(
                        entry.span(),
                        format!(
                            "each entry of `{}` must be a string, not {}",
                            key.name,
                            a(entry.get_ref().type_str())
                        ),
                        format!("e.g. `{}`", key.example),
                    );
                    valid = false;
                }
            }
        }
        if valid {
            Got::Valid(items, value.span())
        } else {
            Got::Invalid
        }
    }

    /// A table of strings: (key, key span, value, value span), in file order.
    #[allow(clippy::type_complexity)]
    fn string_table(
        &mut self,
        table: &DeTable<'_>,
        key: &Key,
    ) -> Got<Vec<(String, Range<usize>, String, Range<usize>)>> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        let Some(entries) = value.get_ref().as_table() else {
            self.wrong_type(value, key);
            return Got::Invalid;
        };
        let mut items = Vec::new();
        let mut valid = true;
        for (name, entry) in entries.iter() {
            let name_str: &str = name.get_ref();
            match entry.get_ref().as_str() {
                Some(text) => items.push((
                    name_str.to_string(),
                    name.span(),
                    text.to_string(),
                    entry.span(),
                )),
                None => {
                    self.error(
                        entry.span(),
                        format!(
                            "`{}` values must be strings; `{name_str}` is {}",
                            key.name,
                            a(entry.get_ref().type_str())
                        ),
                        format!("e.g. `{}`", key.example),
                    );
                    valid = false;
                }
            }
        }
        if valid {
            Got::Valid(items, value.span())
        } else {
            Got::Invalid
        }
    }

    /// A string that must be one of `choices` (as written, or case-insensitively when
    /// `any_case`); returns the matching choice.
    pub(super) fn choice(
        &mut self,
        table: &DeTable<'_>,
        key: &Key,
        what: &str,
        choices: &[&'static str],
        any_case: bool,
    ) -> Got<&'static str> {
        match self.string(table, key) {
            Got::Valid(text, span) => {
                let found = choices
                    .iter()
                    .find(|c| **c == text || (any_case && c.eq_ignore_ascii_case(text)));
                match found {
                    Some(choice) => Got::Valid(choice, span),
                    None => {
                        let hint = match closest(text, choices.iter().copied()) {
                            Some(suggestion) => format!(
                                "did you mean `{suggestion}`? use one of: {}",
                                choices.join(", ")
                            ),
                            None => format!("use one of: {}", choices.join(", ")),
                        };
                        self.error(span, format!("unknown {what} `{text}`"), hint);
                        Got::Invalid
                    }
                }
            }
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    fn port(&mut self, table: &DeTable<'_>, key: &Key, what: &str) -> Got<u16> {
        match self.bounded_integer(table, key, 1, 65_535, what) {
            Got::Valid(port, span) => match u16::try_from(port) {
                Ok(port) => Got::Valid(port, span),
                Err(_) => Got::Invalid,
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// A regex in the `regex` crate's syntax.
    fn regex(&mut self, key: &str, pattern: &str, span: Range<usize>) -> bool {
        match regex::Regex::new(pattern) {
            Ok(_) => true,
            Err(error) => {
                let reason = error.to_string();
                // The crate's message is a multi-line picture; its last line says what is wrong.
                let reason = reason
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ");
                self.error(
                    span,
                    format!("invalid regex in `{key}`: {reason}"),
                    "the syntax is the Rust `regex` crate's (like RE2: no look-around or back-references); escape `\\` as `\\\\` in TOML basic strings, or use a 'literal string'",
                );
                false
            }
        }
    }

    // ---- kinds ---------------------------------------------------------------------------------

    /// `kind = "tcp"`: `port` (required).
    pub(super) fn tcp(&mut self, table: &DeTable<'_>, section: &Range<usize>) -> Option<ProbeKind> {
        let [port_key] = &TCP;
        let port = self.port(table, port_key, "the TCP port to connect to");
        match self.required(
            port,
            "[[probe]]",
            section,
            port_key,
            ": a tcp probe connects to this port of each target",
        ) {
            Got::Valid(port, _) => Some(ProbeKind::Tcp { port }),
            Got::Absent | Got::Invalid => None,
        }
    }

    /// `kind = "http"`: the URL parts, the request, and the expectations.
    pub(super) fn http(
        &mut self,
        table: &DeTable<'_>,
        timings: Option<(Duration, Duration)>,
    ) -> Option<ProbeKind> {
        let [scheme_key, port_key, path_key, ..] = &HTTP;
        let scheme = or(
            self.choice(table, scheme_key, "scheme", &SCHEMES, false),
            "https",
        );
        let port = optional(self.port(table, port_key, "the port to connect to"));
        let path = self.http_path(table, path_key);
        // TLS-only settings on a plain-HTTP probe are a mistake, not a no-op.
        let plain = scheme == Some("http");
        let request = self.http_request(table);
        let expect = self.http_expect(table, timings, plain);
        let tls = self.http_tls(table, plain);
        let (ca_file, server_name) = tls?;
        Some(ProbeKind::Http(Box::new(HttpProbe {
            scheme: scheme?.to_string(),
            port: port?,
            path: path?,
            check: HttpSettings {
                ca_file,
                server_name,
                expect: expect?,
                ..request?
            },
        })))
    }

    /// `path`: starts with `/`, nothing a URL cannot carry as written.
    fn http_path(&mut self, table: &DeTable<'_>, path_key: &Key) -> Option<String> {
        match self.string(table, path_key) {
            Got::Absent => Some("/".to_string()),
            Got::Invalid => None,
            Got::Valid(path, span) => {
                if !path.starts_with('/') {
                    self.error(
                        span,
                        format!("`path` must start with `/`, not `{path}`"),
                        format!(
                            "the path is appended to `scheme://host:port`: `path = \"/{}\"`",
                            path.trim_start_matches('/')
                        ),
                    );
                    None
                } else if let Some(bad) = path
                    .chars()
                    .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
                {
                    self.error(
                        span,
                        format!("`path` must not contain {bad:?}"),
                        "percent-encode it (a space is `%20`); a `#fragment` is never sent to the server",
                    );
                    None
                } else {
                    Some(path.to_string())
                }
            }
        }
    }

    /// What to send and how much to take: method, headers, body, redirects, body size. The URL
    /// is the target's and the TLS settings are the caller's to fill in.
    fn http_request(&mut self, table: &DeTable<'_>) -> Option<HttpSettings> {
        let [_, _, _, method_key, headers_key, body_key, ..] = &HTTP;
        let [.., redirects_key, body_bytes_key, private_redirects_key] = &HTTP;
        let method = match self.string(table, method_key) {
            Got::Absent => Some("GET".to_string()),
            Got::Invalid => None,
            Got::Valid(method, span) => {
                if !method.is_empty() && method.chars().all(|c| c.is_ascii_uppercase()) {
                    Some(method.to_string())
                } else {
                    let hint =
                        if method.chars().all(|c| c.is_ascii_alphabetic()) && !method.is_empty() {
                            format!(
                                "methods are case-sensitive: `method = \"{}\"`",
                                method.to_ascii_uppercase()
                            )
                        } else {
                            "e.g. `method = \"GET\"`, `\"HEAD\"` or `\"POST\"`".to_string()
                        };
                    self.error(span, format!("invalid HTTP method `{method}`"), hint);
                    None
                }
            }
        };

        let headers = match self.string_table(table, headers_key) {
            Got::Absent => Some(Vec::new()),
            Got::Invalid => None,
            Got::Valid(entries, _) => {
                let mut valid = true;
                for (name, name_span, value, value_span) in &entries {
                    valid &= self.header_name(headers_key.name, name, name_span.clone());
                    if let Some(bad) = value
                        .chars()
                        .find(|c| !(*c == '\t' || (' '..='~').contains(c)))
                    {
                        self.error(
                            value_span.clone(),
                            format!("header `{name}` has a character not allowed in a header value: {bad:?}"),
                            "header values are printable ASCII on one line",
                        );
                        valid = false;
                    }
                }
                valid.then(|| entries.into_iter().map(|(n, _, v, _)| (n, v)).collect())
            }
        };
        let body = optional(self.string(table, body_key)).map(|b| b.map(str::to_string));

        let max_redirects = or(
            self.bounded_integer(
                table,
                redirects_key,
                0,
                MAX_REDIRECTS,
                "how many redirects to follow (0: none)",
            ),
            DEFAULT_MAX_REDIRECTS,
        );
        let max_body_bytes = match self.integer(table, body_bytes_key) {
            Got::Absent => Some(DEFAULT_MAX_BODY_BYTES),
            Got::Invalid => None,
            Got::Valid(n, span) if !(1..=MAX_BODY_BYTES).contains(&n) => {
                self.error(
                    span,
                    format!("`max_body_bytes` must be from 1 to {MAX_BODY_BYTES} (1 GiB), not {n}"),
                    "the most body bytes a check reads (after decompression); default 1048576 (1 MiB)",
                );
                None
            }
            Got::Valid(n, _) => u64::try_from(n).ok(),
        };
        let follow_private_redirects = or(self.boolean(table, private_redirects_key), false);

        Some(HttpSettings {
            method: method?,
            headers: headers?,
            body: body?.map(String::into_bytes),
            max_body_bytes: max_body_bytes?,
            max_redirects: max_redirects?,
            follow_private_redirects: follow_private_redirects?,
            // The URL is the target's; `Probe::new` fills it in.
            ..HttpSettings::new(String::new())
        })
    }

    /// What the response must look like: status, body, headers, total time, certificate lifetime.
    fn http_expect(
        &mut self,
        table: &DeTable<'_>,
        timings: Option<(Duration, Duration)>,
        plain: bool,
    ) -> Option<HttpExpect> {
        let [
            _,
            _,
            _,
            _,
            _,
            _,
            status_key,
            contains_key,
            regex_key,
            header_matches_key,
            max_total_key,
            cert_days_key,
            ..,
        ] = &HTTP;
        let expect_status = match table.get(status_key.name) {
            None => Some(Vec::new()),
            Some(value) => self.status_codes(value, status_key),
        };
        let body_contains =
            optional(self.string(table, contains_key)).map(|b| b.map(str::to_string));
        let body_regex = match self.string(table, regex_key) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(pattern, span) => self
                .regex(regex_key.name, pattern, span)
                .then(|| Some(pattern.to_string())),
        };
        let header_matches = match self.string_table(table, header_matches_key) {
            Got::Absent => Some(Vec::new()),
            Got::Invalid => None,
            Got::Valid(entries, _) => {
                let mut valid = true;
                for (name, name_span, pattern, pattern_span) in &entries {
                    valid &= self.header_name(header_matches_key.name, name, name_span.clone());
                    valid &= self.regex(header_matches_key.name, pattern, pattern_span.clone());
                }
                valid.then(|| entries.into_iter().map(|(n, _, v, _)| (n, v)).collect())
            }
        };

        let max_total = match self.positive_duration(table, max_total_key) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(max_total, span) => match timings {
                Some((_, timeout)) if max_total >= timeout => {
                    let default = if table.contains_key("timeout") {
                        ""
                    } else {
                        ", the default"
                    };
                    self.error(
                        span,
                        format!(
                            "`max_total` ({}) must be shorter than `timeout` ({}{default})",
                            format_duration(max_total),
                            format_duration(timeout)
                        ),
                        "the check gives up at `timeout`, so this assertion could never fail: lower `max_total` or raise `timeout`",
                    );
                    None
                }
                _ => Some(Some(max_total)),
            },
        };

        let min_cert_expiry_days = match self.number(table, cert_days_key) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(days, span) if days < 0.0 => {
                self.error(
                    span,
                    format!("`min_cert_expiry_days` must be at least 0, not {days}"),
                    format!("e.g. `{}`", cert_days_key.example),
                );
                None
            }
            Got::Valid(days, _) => self
                .tls_only(table, cert_days_key, plain)
                .then_some(Some(days)),
        };
        Some(HttpExpect {
            status_codes: expect_status?,
            body_contains: body_contains?.into_iter().collect(),
            body_matches: body_regex?.into_iter().collect(),
            headers: header_matches?
                .into_iter()
                .map(|(name, regex)| HeaderMatch { name, regex })
                .collect(),
            max_total: max_total?,
            min_cert_expiry_days: min_cert_expiry_days?,
        })
    }

    /// `ca_file` (read and checked now) and `server_name`: which CA to trust, which name to verify.
    fn http_tls(
        &mut self,
        table: &DeTable<'_>,
        plain: bool,
    ) -> Option<(Option<PathBuf>, Option<String>)> {
        let [.., ca_file_key, server_name_key, _, _, _] = &HTTP;
        let ca_file = match self.string(table, ca_file_key) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(path, span) => {
                let config_dir = self.path.parent().unwrap_or_else(|| Path::new(""));
                let full: PathBuf = config_dir.join(path);
                let text = probes::files::read_small_string(&full, probes::files::CA_BUNDLE_LIMIT);
                let problem = match text {
                    Err(error) => Some(format!("`ca_file` {error}")),
                    Ok(text) if !text.contains("-----BEGIN CERTIFICATE-----") => Some(format!(
                        "`ca_file` {} holds no PEM certificate",
                        full.display()
                    )),
                    Ok(_) => None,
                };
                match problem {
                    Some(message) => {
                        self.error(
                            span,
                            message,
                            "a PEM file of the CA certificates to trust instead of the system's; a relative path is relative to the config file's directory",
                        );
                        None
                    }
                    None => self
                        .tls_only(table, ca_file_key, plain)
                        .then_some(Some(full)),
                }
            }
        };
        let server_name = match self.string(table, server_name_key) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(name, span) => match check_host(name) {
                Ok(None) => self
                    .tls_only(table, server_name_key, plain)
                    .then(|| Some(name.to_string())),
                Ok(Some(_)) | Err(_) => {
                    self.error(
                        span,
                        format!("`server_name` must be a DNS name, not `{name}`"),
                        "the name to send in TLS SNI and to verify the certificate against, e.g. `server_name = \"api.example.net\"`",
                    );
                    None
                }
            },
        };
        Some((ca_file?, server_name?))
    }

    /// False (and reported) when `key` is set on a plain-HTTP probe: it has no TLS.
    fn tls_only(&mut self, table: &DeTable<'_>, key: &Key, plain: bool) -> bool {
        if !plain {
            return true;
        }
        if let Some(value) = table.get(key.name) {
            self.error(
                value.span(),
                format!("`{}` needs `scheme = \"https\"`", key.name),
                "plain HTTP has no TLS: remove it, or set `scheme = \"https\"`",
            );
            return false;
        }
        true
    }

    fn header_name(&mut self, key: &str, name: &str, span: Range<usize>) -> bool {
        if is_token(name) {
            return true;
        }
        self.error(
            span,
            format!("invalid header name `{name}` in `{key}`"),
            "header names are letters, digits and `-` (no spaces or colons), e.g. `Content-Type`",
        );
        false
    }

    fn status_codes(&mut self, value: &super::Value<'_>, key: &Key) -> Option<Vec<u16>> {
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(value, key);
            return None;
        };
        if array.is_empty() {
            self.error(
                value.span(),
                "`expect_status` is an empty list",
                "remove it to accept any 2xx status, or list the codes, e.g. `expect_status = [200, 204]`",
            );
            return None;
        }
        let mut codes = Vec::new();
        let mut valid = true;
        for entry in array.iter() {
            let code = match entry.get_ref() {
                DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
                _ => None,
            };
            match code {
                Some(code @ 100..=599) => codes.push(code as u16),
                _ => {
                    let written = match entry.get_ref() {
                        DeValue::Integer(i) => i.as_str().to_string(),
                        DeValue::String(text) => format!("\"{text}\""),
                        other => a(other.type_str()),
                    };
                    self.error(
                        entry.span(),
                        format!("`expect_status` entries must be HTTP status codes from 100 to 599, not {written}"),
                        format!("e.g. `{}`", key.example),
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(codes)
    }

    /// `kind = "dns"`: the question (`query`, `record_type`), how to ask, what to expect.
    pub(super) fn dns(&mut self, table: &DeTable<'_>, section: &Range<usize>) -> Option<ProbeKind> {
        let [
            query_key,
            type_key,
            transport_key,
            port_key,
            recursion_key,
            rcode_key,
            answers_key,
            min_answers_key,
        ] = &DNS;
        let query = self.string(table, query_key);
        let query = match self.required(
            query,
            "[[probe]]",
            section,
            query_key,
            ": the name to look up; each target is a DNS server to ask",
        ) {
            Got::Valid(name, span) => match check_query_name(name) {
                Ok(()) => Some(name.to_string()),
                Err(reason) => {
                    self.error(
                        span,
                        format!("invalid `query` name `{name}`: {reason}"),
                        "a DNS name of labels (letters, digits, `-`, `_`) separated by dots, e.g. `query = \"www.example.net\"`",
                    );
                    None
                }
            },
            Got::Absent | Got::Invalid => None,
        };
        let record_type = match self.choice(table, type_key, "record type", &RECORD_TYPES, true) {
            Got::Absent => Some(DnsRecordType::A),
            Got::Invalid => None,
            Got::Valid(text, _) => text.parse::<DnsRecordType>().ok(),
        };
        let transport = match self.choice(table, transport_key, "transport", &TRANSPORTS, false) {
            Got::Absent | Got::Valid("udp", _) => Some(DnsTransport::Udp),
            Got::Valid(_, _) => Some(DnsTransport::Tcp),
            Got::Invalid => None,
        };
        let port = or(self.port(table, port_key, "the DNS server's port"), 53);
        let recursion = or(self.boolean(table, recursion_key), true);
        let expect_rcode = match self.choice(table, rcode_key, "response code", &RCODES, true) {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(rcode, _) => Some(Some(rcode.to_string())),
        };
        let expect_answers = match self.strings(table, answers_key) {
            Got::Absent => Some(Vec::new()),
            Got::Invalid => None,
            Got::Valid(answers, _) => Some(answers.into_iter().map(|(a, _)| a).collect()),
        };
        let min_answers = optional(self.bounded_integer(
            table,
            min_answers_key,
            1,
            10_000,
            "the fewest records of the asked type the answer must have",
        ));
        // The server is each target, resolved per run: only its port is known here.
        let server = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port?));
        Some(ProbeKind::Dns(DnsSettings {
            transport: transport?,
            recursion_desired: recursion?,
            expect: DnsExpect {
                rcodes: expect_rcode?.into_iter().collect(),
                min_answers: min_answers?,
                answers_include: expect_answers?,
                answers_match: Vec::new(),
            },
            ..DnsSettings::new(server, query?, record_type?)
        }))
    }

    /// `kind = "trace"`: protocol, rounds, TTLs, port — and whether the rounds fit the interval.
    pub(super) fn trace(
        &mut self,
        table: &DeTable<'_>,
        timings: Option<(Duration, Duration)>,
    ) -> Option<ProbeKind> {
        let [protocol_key, count_key, max_ttl_key, port_key] = &TRACE;
        let protocol = match self.choice(table, protocol_key, "trace protocol", &PROTOCOLS, false) {
            Got::Absent | Got::Valid("icmp", _) => Some(TraceProtocol::Icmp),
            Got::Valid("udp", _) => Some(TraceProtocol::Udp),
            Got::Valid(_, _) => Some(TraceProtocol::Tcp),
            Got::Invalid => None,
        };
        let count = or(
            self.bounded_integer(
                table,
                count_key,
                1,
                MAX_TRACE_COUNT,
                "the number of rounds (probes per hop)",
            ),
            DEFAULT_TRACE_COUNT,
        );
        let max_ttl = or(
            self.bounded_integer(table, max_ttl_key, 1, MAX_TTL, "the most hops to probe"),
            u32::from(DEFAULT_MAX_TTL),
        )
        .and_then(|ttl| u8::try_from(ttl).ok());
        let port = match self.port(table, port_key, "the UDP or TCP destination port") {
            Got::Absent => Some(None),
            Got::Invalid => None,
            Got::Valid(_, span) if protocol == Some(TraceProtocol::Icmp) => {
                self.error(
                    span,
                    "`port` does not apply to `protocol = \"icmp\"`",
                    "ICMP echo has no ports: remove `port`, or set `protocol = \"udp\"` or `\"tcp\"`",
                );
                None
            }
            Got::Valid(port, _) => Some(Some(port)),
        };
        let (Some((interval, timeout)), Some(count)) = (timings, count) else {
            return None;
        };
        let trace = timeout * count + TRACE_GRACE;
        if trace > interval {
            // Point at what was written: `count`, else `timeout`, else `interval`.
            let at = ["count", "timeout", "interval"]
                .iter()
                .find_map(|k| table.get(*k))
                .map(|v| v.span());
            let message = format!(
                "a trace overlaps the next one: {count} rounds of {} plus {} for late replies take {}, but `interval` is {}",
                format_duration(timeout),
                format_duration(TRACE_GRACE),
                format_duration(trace),
                format_duration(interval)
            );
            let hint = format!(
                "lower `count` or `timeout` (each round waits `timeout` for its replies), or raise `interval` to at least {}",
                format_duration(ceil_to_millis(trace))
            );
            match at {
                Some(span) => self.error(span, message, hint),
                None => self.file_error(message, hint),
            }
            return None;
        }
        // The target, its family and whether raw sockets are allowed are known per target.
        Some(ProbeKind::Trace(TraceSettings {
            protocol: protocol?,
            rounds: count as usize,
            round_duration: timeout,
            grace: TRACE_GRACE,
            max_ttl: max_ttl?,
            port: port?,
            ..TraceSettings::new(String::new())
        }))
    }
}

/// A name to look up: like a host name, but `_` is allowed (`_dmarc.example.net`) and a lone
/// `.` is the root.
fn check_query_name(name: &str) -> Result<(), String> {
    if name == "." {
        return Ok(());
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("it is empty".into());
    }
    if bare.len() > 253 {
        return Err(format!(
            "it is {} characters long; the limit is 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "label `{label}` is {} characters long; the limit is 63",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{bad:?} is not allowed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert!(check_query_name("www.example.net").is_ok());
        assert!(check_query_name("_dmarc.example.net.").is_ok());
        assert!(check_query_name(".").is_ok());
        assert!(check_query_name("a..b").is_err());
        assert!(check_query_name("a b").is_err());
        assert!(check_query_name("").is_err());
    }

    #[test]
    fn header_tokens() {
        assert!(is_token("Content-Type"));
        assert!(is_token("X-Request-Id"));
        assert!(!is_token("Content Type"));
        assert!(!is_token("Host:"));
        assert!(!is_token(""));
    }
}
