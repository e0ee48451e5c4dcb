//! The web page against hostile input (issue 14): a store and drafts whose names, labels and
//! failure texts hold markup are shown as text on every page, in a real browser (headless
//! Chromium); a draft's files are downloads, and nothing outside its folder can be fetched;
//! `vantage serve` refuses a non-loopback address without auth, and directories that are not a
//! store, with clear errors. Needs the Debian package `chromium` (fails without it).

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use probes::{FailureKind, HttpStats, Measurement, Observation, Outcome, PingStats};
use support::{Served, dump_dom, vantage};
use vantage::store::{Record, Store};

const SCRIPT: &str = "<script>alert(1)</script>";
const ATTRIBUTE: &str = "\"'><img src=x onerror=alert(2)>";
/// The hostile texts as a browser serialises them when they are text.
const SCRIPT_TEXT: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
const ATTRIBUTE_TEXT: &str = "\"'&gt;&lt;img src=x onerror=alert(2)&gt;";
const ID: &str = "20261121-001";

fn record(probe: &str, at: SystemTime, outcome: Outcome, measurement: Measurement) -> Record {
    Record {
        agent: "lab-agent".into(),
        site: "lab".into(),
        probe: probe.into(),
        target: SCRIPT.into(),
        target_site: ATTRIBUTE.into(),
        address: Some("198.18.2.2".into()),
        observation: Observation {
            started_at: at,
            duration: Duration::from_millis(100),
            outcome,
            measurement,
        },
    }
}

/// A data directory whose target is named `SCRIPT` at site `ATTRIBUTE`, with a failing HTTP check
/// whose failure holds both, and a draft about it (hostile title and raw HTML in its Markdown).
fn hostile_data(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let mut store = Store::open(&data).expect("store");
    let now = SystemTime::now();
    let mut records = Vec::new();
    for i in 0..30u64 {
        let at = now - Duration::from_secs(20 * (30 - i));
        let rtts = vec![Some(1.0 + i as f64 * 0.1), None, Some(2.0)];
        records.push(record(
            "ping",
            at,
            Outcome::Success,
            Measurement::Ping(PingStats::from_rtts(rtts)),
        ));
        records.push(record(
            "health",
            at,
            Outcome::failure(
                FailureKind::Assertion,
                format!("status 503, body: {SCRIPT} {ATTRIBUTE}"),
            ),
            Measurement::Http(HttpStats {
                method: "GET".into(),
                status_code: Some(503),
                connect_ms: Some(0.2),
                processing_ms: Some(1.0),
                transfer_ms: Some(0.1),
                total_ms: 1.4,
                final_url: format!("http://198.18.2.2/{SCRIPT}"),
                ..HttpStats::default()
            }),
        ));
    }
    store.insert(&records).expect("insert");
    drop(store);

    let folder = data.join("incidents").join(ID);
    std::fs::create_dir_all(&folder).expect("draft folder");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let mut incident: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("incident.json")).expect("example incident"),
    )
    .expect("json");
    incident["title"] = format!("loss to {SCRIPT} {ATTRIBUTE}").into();
    incident["status"] = "open".into();
    incident["resolved_at"] = serde_json::Value::Null;
    incident["duration_s"] = serde_json::Value::Null;
    incident["impact"]["affected"][0]["target"] = SCRIPT.into();
    std::fs::write(folder.join("incident.json"), incident.to_string()).expect("write");
    let markdown = std::fs::read_to_string(examples.join("incident.md")).expect("example draft");
    std::fs::write(
        folder.join("incident.md"),
        format!(
            "# loss to {SCRIPT}\n\n{ATTRIBUTE}\n\n<div onclick=\"x\">{SCRIPT}</div>\n\n{markdown}"
        ),
    )
    .expect("write");
    std::fs::copy(examples.join("evidence.json"), folder.join("evidence.json")).expect("copy");
    data
}

fn config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let path = dir.join("vantage.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [[target]]\nname = \"far\"\nhost = \"198.18.2.2\"\nsite = \"remote\"\n\
             labels = {{ team = {SCRIPT:?}, owner = {ATTRIBUTE:?} }}\n",
            data.display()
        ),
    )
    .expect("config");
    path
}

#[test]
fn hostile_names_labels_and_bodies_are_text_on_every_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = hostile_data(dir.path());
    let config = config(dir.path(), &data);
    let served = Served::start(&[
        "--data-dir",
        data.to_str().expect("path"),
        "--config",
        config.to_str().expect("path"),
    ]);
    let target = "/targets/%3Cscript%3Ealert%281%29%3C%2Fscript%3E";
    for (path, expect) in [
        ("/", vec![SCRIPT_TEXT, ATTRIBUTE_TEXT]),
        (target, vec![SCRIPT_TEXT, ATTRIBUTE_TEXT]),
        ("/incidents", vec![SCRIPT_TEXT, ATTRIBUTE_TEXT]),
        (
            &format!("/incidents/{ID}"),
            vec![SCRIPT_TEXT, ATTRIBUTE_TEXT],
        ),
        ("/agent", vec![SCRIPT_TEXT, ATTRIBUTE_TEXT]),
    ] {
        let dom = dump_dom(&served.url(path));
        assert!(dom.contains("</main>"), "{path}: not a page:\n{dom}");
        for text in expect {
            assert!(
                dom.contains(text),
                "{path}: {text:?} is not shown as text:\n{dom}"
            );
        }
        let lower = dom.to_lowercase();
        for element in ["<script", "<img", "onerror=alert(2)>", "<div onclick"] {
            assert!(
                !lower.contains(element),
                "{path}: an injected {element}:\n{dom}"
            );
        }
    }
}

#[tokio::test]
async fn every_answer_has_a_strict_policy_and_only_get_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = hostile_data(dir.path());
    let served = Served::start(&["--data-dir", data.to_str().expect("path")]);
    let http = reqwest::Client::new();
    for path in ["/", "/agent", "/nope", "/style.css"] {
        let response = http.get(served.url(path)).send().await.expect("get");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("script-src"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    // The incident list's one query parameter: a bad page number is a 400 that says what a page
    // number is (the hostile text shown as text), a page past the end a 404.
    for (path, status, says) in [
        ("/incidents?page=1", 200, "1 draft, 1 open"),
        (
            "/incidents?page=%3Cscript%3E",
            400,
            "`page` must be a whole number from 1",
        ),
        (
            "/incidents?page=2",
            404,
            "no page 2 of the incident list: it has 1 page of 100 (1 draft)",
        ),
    ] {
        let response = http.get(served.url(path)).send().await.expect("get");
        assert_eq!(response.status(), status, "{path}");
        let text = response.text().await.expect("text");
        assert!(text.contains(says), "{path}: {text}");
        assert!(!text.contains("<script"), "{path}: {text}");
    }
    let post = http
        .post(served.url("/"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 405);
    assert!(post.headers().contains_key("content-security-policy"));
    let with_body = http
        .get(served.url("/"))
        .body(vec![b'x'; 1 << 20])
        .send()
        .await
        .expect("get with a body");
    assert_eq!(with_body.status(), 413);
}

#[tokio::test]
async fn draft_files_are_downloads_and_nothing_outside_the_folder_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = hostile_data(dir.path());
    let folder = data.join("incidents").join(ID);
    std::os::unix::fs::symlink(data.join("vantage.db"), folder.join("linked.db")).expect("symlink");
    nix::unistd::mkfifo(&folder.join("pipe.json"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    let served = Served::start(&["--data-dir", data.to_str().expect("path")]);
    let http = reqwest::Client::new();
    let evidence = http
        .get(served.url(&format!("/incidents/{ID}/files/evidence.json")))
        .send()
        .await
        .expect("get");
    assert_eq!(evidence.status(), 200);
    assert_eq!(
        evidence.headers()["content-disposition"],
        "attachment; filename=\"evidence.json\""
    );
    let expected = std::fs::read(folder.join("evidence.json")).expect("read");
    assert_eq!(
        evidence.bytes().await.expect("body").as_ref(),
        expected.as_slice()
    );
    for path in [
        format!("/incidents/{ID}/files/..%2F..%2Fvantage.db"),
        format!("/incidents/{ID}/files/%2E%2E"),
        format!("/incidents/{ID}/files/.%2E%2Fincident.json"),
        "/incidents/..%2F..%2Fetc/files/passwd".to_string(),
        "/incidents/%2E%2E/files/vantage.db".to_string(),
        format!("/incidents/{ID}/files/linked.db"),
        format!("/incidents/{ID}/files/pipe.json"),
        format!("/incidents/{ID}/files/%2Fetc%2Fpasswd"),
    ] {
        let response =
            tokio::time::timeout(Duration::from_secs(10), http.get(served.url(&path)).send())
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
                .expect("get");
        assert_eq!(response.status(), 404, "{path}");
    }
    // The draft page lists the regular files only.
    let page = http
        .get(served.url(&format!("/incidents/{ID}")))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(page.contains("/files/evidence.json"), "{page}");
    assert!(
        !page.contains("linked.db") && !page.contains("pipe.json"),
        "{page}"
    );
}

#[test]
fn serve_refuses_unauthenticated_non_loopback_and_what_is_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = hostile_data(dir.path());
    let data_arg = data.to_str().expect("path");
    let (code, _, stderr) = vantage(&["serve", "--data-dir", data_arg, "--listen", "0.0.0.0:9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("non-loopback address 0.0.0.0:9 without authentication")
            && stderr.contains("--auth-token-file"),
        "{stderr}"
    );
    let missing = dir.path().join("nope");
    let (code, _, stderr) = vantage(&["serve", "--data-dir", missing.to_str().expect("path")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read the data directory"),
        "{stderr}"
    );
    let (code, _, stderr) = vantage(&["serve", "--data-dir", dir.path().to_str().expect("path")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("holds no store (vantage.db is missing)"),
        "{stderr}"
    );
    // An endless token file is refused at start, not read forever.
    let (code, _, stderr) = vantage(&[
        "serve",
        "--data-dir",
        data_arg,
        "--listen",
        "0.0.0.0:9",
        "--auth-token-file",
        "/dev/zero",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/dev/zero"), "{stderr}");
}

#[tokio::test]
async fn a_token_protects_the_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = hostile_data(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let served = Served::start(&[
        "--data-dir",
        data.to_str().expect("path"),
        "--auth-token-file",
        token.to_str().expect("path"),
    ]);
    let http = reqwest::Client::new();
    let anonymous = http.get(served.url("/")).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("content-security-policy"));
    let wrong = http
        .get(served.url("/"))
        .bearer_auth("s3cret-tokeX")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401);
    let right = http
        .get(served.url("/"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .expect("get");
    assert_eq!(right.status(), 200);
}
