//! DNS checks against real servers started here on loopback: dnsmasq (Debian package
//! `dnsmasq-base`) as an authoritative server for the test zones and as a validating forwarder
//! that answers SERVFAIL; plus sockets that never answer.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use probes::{
    DnsCheck, DnsRecordType, DnsSettings, DnsStats, DnsTransport, FailureKind, Measurement,
    Observation, Outcome,
};

/// A dnsmasq process on a free loopback port; killed (by its PID) when dropped, also on panic.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    _pid_file: tempfile::NamedTempFile,
}

impl Dnsmasq {
    fn start(args: &[&str]) -> Dnsmasq {
        // A port free for both UDP and TCP right now.
        let port = UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let pid_file = tempfile::NamedTempFile::new().expect("pid file");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", pid_file.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run dnsmasq: install the Debian package dnsmasq-base (apt-get install dnsmasq-base)");
        let server = Dnsmasq {
            child,
            addr,
            _pid_file: pid_file,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Authoritative for `vantage.test` (every record type the probe asks for) and `fail.test`.
    fn authoritative() -> Dnsmasq {
        Dnsmasq::start(&[
            "--auth-server=ns1.vantage.test,127.0.0.1",
            "--auth-zone=vantage.test",
            "--auth-zone=fail.test",
            "--auth-soa=2024010101,hostmaster.vantage.test",
            "--host-record=www.vantage.test,198.18.0.10,2001:db8::10",
            "--host-record=ns1.vantage.test,198.18.0.53",
            "--host-record=x.fail.test,198.18.0.99",
            "--cname=alias.vantage.test,www.vantage.test",
            "--mx-host=vantage.test,mail.vantage.test,10",
            "--txt-record=vantage.test,v=probe1",
        ])
    }

    /// A validating forwarder with a trust anchor for `fail.test`, whose upstream serves that
    /// zone unsigned: every answer is BOGUS, so the forwarder says SERVFAIL.
    fn bogus_forwarder(upstream: SocketAddr) -> Dnsmasq {
        Dnsmasq::start(&[
            "--dnssec",
            "--trust-anchor=.,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
            "--trust-anchor=fail.test,12345,8,2,49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE8A5B9C2D9A3A6C1F0A4F5D11",
            &format!("--server=/fail.test/{}#{}", upstream.ip(), upstream.port()),
        ])
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stats(obs: &Observation) -> &DnsStats {
    let Measurement::Dns(stats) = &obs.measurement else {
        panic!("not a dns measurement: {obs:?}")
    };
    stats
}

fn failure_kind(obs: &Observation) -> Option<FailureKind> {
    match &obs.outcome {
        Outcome::Success => None,
        Outcome::Failure { kind, .. } => Some(*kind),
    }
}

async fn run(settings: DnsSettings) -> Observation {
    DnsCheck::new(settings)
        .expect("valid settings")
        .run(&probes::CancellationToken::new())
        .await
}

#[tokio::test]
async fn every_record_type_is_answered_over_udp_and_tcp() {
    let server = Dnsmasq::authoritative();
    let cases = [
        ("www.vantage.test", DnsRecordType::A, "198.18.0.10"),
        ("www.vantage.test", DnsRecordType::Aaaa, "2001:db8::10"),
        (
            "alias.vantage.test",
            DnsRecordType::Cname,
            "www.vantage.test.",
        ),
        ("vantage.test", DnsRecordType::Mx, "10 mail.vantage.test."),
        ("vantage.test", DnsRecordType::Txt, "\"v=probe1\""),
        ("vantage.test", DnsRecordType::Ns, "ns1.vantage.test."),
    ];
    for transport in [DnsTransport::Udp, DnsTransport::Tcp] {
        for (name, record_type, answer) in cases {
            let mut settings = DnsSettings::new(server.addr, name, record_type);
            settings.transport = transport;
            settings.expect.answers_include = vec![answer.to_owned()];
            let obs = run(settings).await;
            assert!(
                obs.is_success(),
                "{transport:?} {name} {record_type:?}: {obs:?}"
            );
            let s = stats(&obs);
            assert_eq!(s.rcode.as_deref(), Some("NOERROR"));
            assert!(
                s.latency_ms.is_some_and(|ms| ms > 0.0 && ms < 1000.0),
                "{s:?}"
            );
            assert!(s.authoritative, "{s:?}");
            assert_eq!(
                s.records,
                vec![answer.to_owned()],
                "{transport:?} {name} {record_type:?}"
            );
        }
    }
    let soa = run(DnsSettings::new(
        server.addr,
        "vantage.test",
        DnsRecordType::Soa,
    ))
    .await;
    assert!(soa.is_success(), "{soa:?}");
    let record = stats(&soa).records.first().cloned().unwrap_or_default();
    assert!(
        record.starts_with("ns1.vantage.test. hostmaster.vantage.test. 2024010101"),
        "{record}"
    );
}

#[tokio::test]
async fn an_a_query_through_a_cname_counts_the_chain_but_lists_the_addresses() {
    let server = Dnsmasq::authoritative();
    let obs = run(DnsSettings::new(
        server.addr,
        "alias.vantage.test",
        DnsRecordType::A,
    ))
    .await;
    assert!(obs.is_success(), "{obs:?}");
    let s = stats(&obs);
    assert_eq!(s.answers, 2, "CNAME + A");
    assert_eq!(s.records, vec!["198.18.0.10".to_owned()]);
}

#[tokio::test]
async fn nxdomain_is_a_recorded_rcode_failure_unless_expected() {
    let server = Dnsmasq::authoritative();
    let settings = DnsSettings::new(server.addr, "nope.vantage.test", DnsRecordType::A);
    let obs = run(settings.clone()).await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Rcode), "{obs:?}");
    let s = stats(&obs);
    assert_eq!((s.rcode.as_deref(), s.answers), (Some("NXDOMAIN"), 0));
    assert!(s.latency_ms.is_some());

    let mut expected = settings;
    expected.expect.rcodes = vec!["NXDOMAIN".into()];
    assert!(run(expected).await.is_success());
}

#[tokio::test]
async fn servfail_from_a_validating_forwarder_is_recorded() {
    let upstream = Dnsmasq::authoritative();
    let forwarder = Dnsmasq::bogus_forwarder(upstream.addr);
    let obs = run(DnsSettings::new(
        forwarder.addr,
        "x.fail.test",
        DnsRecordType::A,
    ))
    .await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Rcode), "{obs:?}");
    assert_eq!(stats(&obs).rcode.as_deref(), Some("SERVFAIL"), "{obs:?}");
    // The same name straight from the upstream is fine: the failure is the forwarder's.
    let direct = run(DnsSettings::new(
        upstream.addr,
        "x.fail.test",
        DnsRecordType::A,
    ))
    .await;
    assert!(direct.is_success(), "{direct:?}");
}

#[tokio::test]
async fn answer_expectations_are_checked() {
    let server = Dnsmasq::authoritative();
    let with = |edit: &dyn Fn(&mut DnsSettings)| {
        let mut s = DnsSettings::new(server.addr, "www.vantage.test", DnsRecordType::A);
        edit(&mut s);
        s
    };
    let cases: Vec<(&str, DnsSettings, Option<FailureKind>)> = vec![
        (
            "one answer",
            with(&|s| s.expect.min_answers = Some(1)),
            None,
        ),
        (
            "two answers",
            with(&|s| s.expect.min_answers = Some(2)),
            Some(FailureKind::Assertion),
        ),
        (
            "regex",
            with(&|s| s.expect.answers_match = vec![r"^198\.18\.".into()]),
            None,
        ),
        (
            "regex miss",
            with(&|s| s.expect.answers_match = vec![r"^10\.".into()]),
            Some(FailureKind::Assertion),
        ),
        (
            "wrong address",
            with(&|s| s.expect.answers_include = vec!["198.18.0.11".into()]),
            Some(FailureKind::Assertion),
        ),
        (
            "rcode list",
            with(&|s| s.expect.rcodes = vec!["NXDOMAIN".into()]),
            Some(FailureKind::Rcode),
        ),
    ];
    for (name, settings, expected) in cases {
        let obs = run(settings).await;
        assert_eq!(failure_kind(&obs), expected, "{name}: {obs:?}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_after_one_datagram() {
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let mut settings = DnsSettings::new(addr, "www.vantage.test", DnsRecordType::A);
    settings.timeout = Duration::from_millis(800);
    let started = Instant::now();
    let obs = run(settings).await;
    let elapsed = started.elapsed();
    assert_eq!(failure_kind(&obs), Some(FailureKind::Timeout), "{obs:?}");
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let s = stats(&obs);
    assert_eq!((s.rcode.as_ref(), s.latency_ms), (None, None));
    // Count what reached the silent server: exactly one query, no retransmission.
    silent.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 512];
    let mut datagrams = 0;
    while silent.recv(&mut buf).is_ok() {
        datagrams += 1;
    }
    assert_eq!(datagrams, 1, "the probe must not retransmit");
}

#[tokio::test]
async fn a_tcp_server_that_accepts_but_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut settings = DnsSettings::new(addr, "www.vantage.test", DnsRecordType::A);
    settings.transport = DnsTransport::Tcp;
    settings.timeout = Duration::from_millis(800);
    let started = Instant::now();
    let obs = run(settings).await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Timeout), "{obs:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    holder.abort();
}

#[tokio::test]
async fn a_closed_tcp_port_is_refused() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut settings = DnsSettings::new(addr, "www.vantage.test", DnsRecordType::A);
    settings.transport = DnsTransport::Tcp;
    let obs = run(settings).await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Refused), "{obs:?}");
}
