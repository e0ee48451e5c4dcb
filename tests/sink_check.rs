//! `vantage check` for outputs against real servers: VictoriaMetrics (v2 API) and InfluxDB 1.x with
//! auth on (v1 API) — good credentials, a wrong password, a missing database, nobody listening,
//! an unreadable secret, and `--offline`. No message carries a secret.

mod support;

use support::{Influxd, VictoriaMetrics, free_port};
use vantage::sinks::check::check_outputs;
use vantage::sinks::{OutputConfig, SecretSource};

const PASSWORD: &str = "check-pass-5b2c91";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_reachability_and_credentials_per_output() {
    support::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = VictoriaMetrics::start(&dir.path().join("vm")).await;
    let influx = Influxd::start(&dir.path().join("influx"), "vantage", PASSWORD).await;
    influx.query("", "CREATE DATABASE vantage").await;
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, format!("{PASSWORD}\n")).expect("password");
    std::fs::write(&bad, "not-the-password").expect("password");
    let v1 = |name: &str, db: &str, password: &std::path::Path| {
        OutputConfig::influxdb_v1(
            name,
            &influx.url,
            db,
            Some("vantage".into()),
            Some(SecretSource::File(password.to_path_buf())),
        )
    };
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let outputs = vec![
        OutputConfig::influxdb_v2("vm", &vm.url, "lab", "vantage", None),
        v1("influx", "vantage", &good),
        v1("influx-wrong-password", "vantage", &bad),
        v1("influx-no-db", "nope", &good),
        OutputConfig::influxdb_v2("nobody", &nobody, "lab", "vantage", None),
        v1("unreadable", "vantage", &dir.path().join("missing")),
    ];
    let results = check_outputs(&outputs, false).await;
    for r in &results {
        eprintln!("{}: {} — {}", r.output, r.ok, r.message);
        assert!(!r.message.contains(PASSWORD), "secret in {r:?}");
    }
    let verdict: Vec<(&str, bool)> = results.iter().map(|r| (r.output.as_str(), r.ok)).collect();
    assert_eq!(
        verdict,
        [
            ("vm", true),
            ("influx", true),
            ("influx-wrong-password", false),
            ("influx-no-db", false),
            ("nobody", false),
            ("unreadable", false),
        ]
    );
    assert!(
        results[0]
            .message
            .ends_with("reachable, credentials accepted")
    );
    assert!(results[2].message.contains("credentials rejected (401)"));
    assert!(results[3].message.contains("answered 404"));
    assert!(results[3].message.contains("database not found"));
    assert!(results[4].message.starts_with("unreachable: "));
    assert!(results[5].message.contains("cannot read the credentials"));

    // Offline: nothing is contacted, so an unreachable output passes, an unreadable secret does not.
    let offline = check_outputs(&outputs[4..], true).await;
    assert!(offline[0].ok && offline[0].message.contains("offline"));
    assert!(!offline[1].ok);

    // The empty probe writes nothing.
    let count = influx.query("vantage", "SHOW MEASUREMENTS").await;
    assert!(count["results"][0]["series"].is_null(), "{count}");
}

/// An output that answers 500 with a body without end: `check` reads only the start of it (the
/// message shows it) and hangs up, rather than reading until its timeout into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_read_only_as_far_as_a_message_needs() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    // Serves one request, then writes until the client hangs up, at most 2 GiB or 30 s.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let _ =
            stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n");
        let chunk = b"endless error body ".repeat(3449); // ~64 KiB
        let (mut sent, started) = (0usize, std::time::Instant::now());
        while sent < 2 << 30 && started.elapsed() < std::time::Duration::from_secs(30) {
            match stream.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let outputs = vec![OutputConfig::influxdb_v2(
        "endless", &url, "lab", "vantage", None,
    )];
    let results = check_outputs(&outputs, false).await;
    let sent = tokio::task::spawn_blocking(move || server.join().expect("server"))
        .await
        .expect("join");
    let result = &results[0];
    assert!(!result.ok, "{result:?}");
    assert!(
        result.message.contains("endless error body"),
        "the message shows the start of the body: {result:?}"
    );
    // What the server got out before the hang-up: the 64 KiB read plus the sockets' buffers.
    assert!(
        sent < 32 << 20,
        "the client read {sent} bytes of an error body before hanging up"
    );
}
