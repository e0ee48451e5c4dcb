//! The on-call one-shots against real servers this test starts on loopback: `vantage http`
//! (a small HTTP server), `vantage dns` (dnsmasq), `vantage tcp`, and `vantage trace` over
//! loopback (its lab test is in `trace_lab.rs`). Exit codes: 0 ok, 1 the check failed, 2 could
//! not run.

mod support;

use support::{Dnsmasq, HttpServer, free_port, vantage};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: not JSON: {text}"))
}

#[test]
fn http_prints_the_phases_and_every_assertion() {
    let server = HttpServer::start();
    let url = server.url("/slow");
    let (code, out, err) = vantage(&[
        "http",
        "--expect-status",
        "200",
        "--body-contains",
        "up",
        "--body-regex",
        r#""status":\s*"up""#,
        "--header-match",
        "Content-Type: ^application/json",
        &url,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("GET {url} → HTTP 200\n")), "{out}");
    for phase in [
        "resolve",
        "connect",
        "tls",
        "processing",
        "transfer",
        "total",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(phase)),
            "{phase} in {out}"
        );
    }
    // The server sleeps 300 ms before its headers: that is processing time.
    let processing: f64 = out
        .lines()
        .find(|l| l.starts_with("processing"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("processing ms in {out}"));
    assert!((290.0..2000.0).contains(&processing), "{out}");
    assert!(
        out.contains("tls             -"),
        "plain HTTP has no TLS phase: {out}"
    );
    for assertion in [
        "status is [200]",
        "header content-type matches /^application/json/",
        "body contains \"up\"",
        "body matches /\"status\":\\s*\"up\"/",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(assertion))
            .unwrap_or_else(|| panic!("{assertion} in {out}"));
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(out.ends_with("\nok\n"), "{out}");
}

#[test]
fn http_failures_name_the_assertion_and_exit_1() {
    let server = HttpServer::start();
    // A 404 fails the status assertion; the body assertion is still checked and reported.
    let (code, out, _) = vantage(&["http", "--body-contains", "up", &server.url("/nothing")]);
    assert_eq!(code, 1, "{out}");
    let status = out
        .lines()
        .find(|l| l.starts_with("status is 2xx"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        status.contains("FAILED") && status.contains("status 404, expected 2xx"),
        "{status}"
    );
    let body = out
        .lines()
        .find(|l| l.starts_with("body contains"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(body.contains("FAILED"), "{body}");
    assert!(
        out.contains("\nFAILED (status): status 404, expected 2xx\n"),
        "{out}"
    );

    // Nobody listening: refused, nothing to assert on.
    let url = format!("http://127.0.0.1:{}/", free_port());
    let (code, out, _) = vantage(&["http", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("assertions: not checked (no complete response)"),
        "{out}"
    );
    assert!(out.contains("FAILED (refused)"), "{out}");

    // Settings that cannot work: exit 2, before any request.
    let (code, _, err) = vantage(&["http", "--body-regex", "(", &server.url("/health")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid regex"), "{err}");
    let (code, _, err) = vantage(&["http", "ftp://127.0.0.1/"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn http_json_has_the_measurement_fields_and_the_assertions() {
    let server = HttpServer::start();
    let (code, out, err) = vantage(&[
        "http",
        "--json",
        "--max-total-ms",
        "5000",
        &server.url("/moved"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    // serde_json keeps the last of duplicate keys: count each top-level key in the raw text.
    for key in v.as_object().expect("an object").keys() {
        let times = out.matches(&format!("\"{key}\":")).count();
        assert_eq!(times, 1, "key {key:?} printed {times} times: {out}");
    }
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status_code"], 200);
    assert_eq!(v["redirects"], 1);
    assert_eq!(v["final_url"], server.url("/health"));
    assert_eq!(v["success"], true);
    assert_eq!(v["failure"], serde_json::Value::Null);
    assert_eq!(v["body_bytes"], 16);
    assert_eq!(v["tls_ms"], serde_json::Value::Null);
    for field in [
        "resolve_ms",
        "connect_ms",
        "processing_ms",
        "transfer_ms",
        "total_ms",
    ] {
        assert!(v[field].is_number(), "{field} in {v}");
    }
    let assertions = v["assertions"].as_array().expect("assertions");
    assert_eq!(assertions.len(), 2, "{v}");
    assert_eq!(assertions[0]["assertion"], "status is 2xx");
    assert_eq!(assertions[1]["passed"], true);
}

#[test]
fn dns_against_dnsmasq_on_loopback() {
    let server = Dnsmasq::running();
    let addr = server.addr.to_string();
    let (code, out, err) = vantage(&["dns", "--server", &addr, "www.vantage.test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("server    {addr} (udp)\n")), "{out}");
    assert!(out.contains("question  www.vantage.test A\n"), "{out}");
    assert!(out.contains("rcode     NOERROR\n"), "{out}");
    assert!(out.contains("flags     aa (authoritative)\n"), "{out}");
    assert!(out.contains("answers   1\n  198.18.0.10\n"), "{out}");

    // Over TCP, another type, JSON.
    let (code, out, err) = vantage(&[
        "dns",
        "--server",
        &addr,
        "--tcp",
        "--type",
        "MX",
        "--json",
        "vantage.test",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["transport"], "tcp");
    assert_eq!(v["record_type"], "MX");
    assert_eq!(v["records"], serde_json::json!(["10 mail.vantage.test."]));
    assert_eq!(v["authoritative"], true);
    assert!(v["latency_ms"].is_number(), "{v}");

    // NXDOMAIN is a failed check, unless it is what was expected.
    let (code, out, _) = vantage(&["dns", "--server", &addr, "gone.vantage.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rcode     NXDOMAIN\n"), "{out}");
    assert!(out.contains("FAILED (rcode)"), "{out}");
    let (code, out, _) = vantage(&[
        "dns",
        "--server",
        &addr,
        "--expect-rcode",
        "NXDOMAIN",
        "gone.vantage.test",
    ]);
    assert_eq!(code, 0, "{out}");

    // An answer that is not there.
    let (code, out, _) = vantage(&[
        "dns",
        "--server",
        &addr,
        "--expect-answer",
        "198.18.0.11",
        "www.vantage.test",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED (assertion)"), "{out}");

    // A bad type or server: could not run.
    let (code, _, err) = vantage(&["dns", "--server", &addr, "--type", "SRV", "x.vantage.test"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = vantage(&["dns", "--server", "ns1.vantage.test", "x.vantage.test"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn dns_to_a_silent_server_times_out() {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let started = std::time::Instant::now();
    let (code, out, _) = vantage(&[
        "dns",
        "--server",
        &addr,
        "--timeout-ms",
        "300",
        "www.vantage.test",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED (timeout)"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn tcp_connects_or_says_why_not() {
    let server = HttpServer::start();
    let target = server.addr.to_string();
    let (code, out, err) = vantage(&["tcp", &target]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("{target}: connected to {target} in ")),
        "{out}"
    );
    let (code, out, _) = vantage(&["tcp", "--json", &target]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["address"], target);
    assert!(v["connect_ms"].is_number());
    assert_eq!(v["resolve_ms"], 0.0, "a literal needs no lookup");

    let closed = format!("127.0.0.1:{}", free_port());
    let (code, out, _) = vantage(&["tcp", "--json", &closed]);
    assert_eq!(code, 1, "{out}");
    let v = json(&out);
    assert_eq!(v["success"], false);
    assert_eq!(v["failure"]["kind"], "refused");
    assert_eq!(v["connect_ms"], serde_json::Value::Null);

    let (code, _, err) = vantage(&["tcp", "127.0.0.1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("write HOST:PORT"), "{err}");
}

#[test]
fn trace_over_loopback_prints_an_mtr_report_and_a_verdict() {
    let (code, out, err) = vantage(&["trace", "--count", "3", "--interval-ms", "100", "127.0.0.1"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("Start: "), "{out}");
    assert!(lines[1].starts_with("HOST: "), "{out}");
    assert!(
        lines[1].ends_with("Loss%   Snt   Last   Avg  Best  Wrst StDev"),
        "{out}"
    );
    assert!(lines[2].starts_with("  1.|-- 127.0.0.1 "), "{out}");
    assert!(lines[2].contains("  0.0%     3 "), "{out}");
    assert_eq!(lines[3], "Verdict: no loss to the destination");

    let (code, _, err) = vantage(&["trace", "--port", "80", "127.0.0.1"]);
    assert_eq!(code, 2, "ICMP has no ports: {err}");
}
