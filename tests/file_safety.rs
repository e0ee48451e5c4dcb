//! Files the config points at, and the data directory, through the real binary:
//! - secret and CA files that are endless (`/dev/zero`), FIFOs, directories or too big are refused
//!   at once with an error naming the file and the limit (`check`, `http --ca-file`); every
//!   command here runs under a time limit, so a regression fails instead of hanging;
//! - the data directory and everything the agent writes in it are private (0700/0600, also
//!   SQLite's -wal/-shm and the drafts); an old 0755 directory is tightened;
//! - a data directory that resolves into /etc, or belongs to another user, is refused by `run`
//!   and reported by `check`. Needs root (chown); under CI=true it runs, it never skips.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Agent, VANTAGE, free_port};

/// Run `vantage ARGS`, killed (by PID) after `limit`: (exit code, stdout, stderr).
fn vantage_within(limit: Duration, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(VANTAGE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run vantage");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vantage {args:?} did not finish within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.code().unwrap_or(-1), read(&out), read(&err))
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A config: one TCP check of a closed port on loopback (so a `failures` rule opens an
/// incident, and the directory sink writes its draft), data in `data_dir`, and `extra`.
fn write_config(dir: &Path, data_dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "files"
site = "lab"
data_dir = "{data}"

[[target]]
name = "svc"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {port}

[[rule]]
name = "service-down"
kind = "failures"
severity = "critical"
failures = 2
runs = 3
for = "1s"
{extra}"#,
            data = data_dir.display(),
            port = free_port(),
        ),
    )
    .expect("write config");
    config
}

#[test]
fn check_refuses_endless_blocking_and_huge_secret_files_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("token.fifo");
    mkfifo(&fifo);
    let huge = dir.path().join("huge-token");
    std::fs::write(&huge, vec![b'x'; 64 * 1024 + 1]).expect("huge file");
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            r#"
[[output]]
name = "zero"
kind = "influxdb_v2"
url = "http://127.0.0.1:{port}"
org = "lab"
bucket = "vantage"
token_file = "/dev/zero"

[[output]]
name = "huge"
kind = "influxdb_v2"
url = "http://127.0.0.1:{port}"
org = "lab"
bucket = "vantage"
token_file = "{huge}"

[[output]]
name = "folder"
kind = "influxdb_v1"
url = "http://127.0.0.1:{port}"
db = "vantage"
username = "vantage"
password_file = "{folder}"

[[incident_sink]]
name = "fifo"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
token_file = "{fifo}"
"#,
            port = free_port(),
            huge = huge.display(),
            folder = dir.path().display(),
            fifo = fifo.display(),
        ),
    );
    let (code, stdout, stderr) = vantage_within(
        Duration::from_secs(20),
        &[
            "check",
            "--offline",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    for line in [
        "output \"zero\": error: cannot read the credentials: secret file /dev/zero is a character device, not a regular file; give the path of a regular file of at most 64 KiB".to_string(),
        format!("output \"huge\": error: cannot read the credentials: secret file {} is larger than the limit of 64 KiB; is it the right file?", huge.display()),
        format!("output \"folder\": error: cannot read the credentials: secret file {} is a directory, not a regular file; give the path of a regular file of at most 64 KiB", dir.path().display()),
        format!("cannot read the token: secret file {} is a FIFO, not a regular file; give the path of a regular file of at most 64 KiB", fifo.display()),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn http_ca_file_must_be_a_small_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("ca.fifo");
    mkfifo(&fifo);
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).expect("big file");
    let url = format!("https://127.0.0.1:{}/", free_port());
    for (path, problem) in [
        (
            PathBuf::from("/dev/zero"),
            "is a character device, not a regular file; give the path of a regular file of at most 1 MiB",
        ),
        (
            fifo.clone(),
            "is a FIFO, not a regular file; give the path of a regular file of at most 1 MiB",
        ),
        (
            big.clone(),
            "is larger than the limit of 1 MiB; is it the right file?",
        ),
    ] {
        let path_arg = path.to_str().expect("utf-8");
        let (code, stdout, stderr) = vantage_within(
            Duration::from_secs(20),
            &["http", "--ca-file", path_arg, &url],
        );
        assert_eq!(code, 2, "{stdout}{stderr}");
        let expected = format!("error: CA file {path_arg} {problem}");
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // The same FIFO as a probe's `ca_file`: the config check refuses it instead of blocking.
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsite = \"lab\"\n\n[[target]]\nname = \"web\"\nhost = \"198.18.1.1\"\n\n[[probe]]\nname = \"web\"\nkind = \"http\"\nscheme = \"https\"\nca_file = \"{}\"\n",
            fifo.display()
        ),
    )
    .expect("config");
    let (code, stdout, stderr) = vantage_within(
        Duration::from_secs(20),
        &[
            "check",
            "--offline",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let expected = format!(
        "error: `ca_file` {} is a FIFO, not a regular file",
        fifo.display()
    );
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );
}

#[test]
fn everything_the_agent_writes_is_private_and_an_old_wide_data_dir_is_tightened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // An older version's directory: 0755, under a umask that would make new files 0644.
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = write_config(
        dir.path(),
        &data,
        "\n[[output]]\nname = \"vm\"\nkind = \"influxdb_v2\"\nurl = \"http://127.0.0.1:9\"\norg = \"lab\"\nbucket = \"vantage\"\n",
    );
    let agent = Agent::start(&[], &config, dir.path().join("agent.log"));
    let start = Instant::now();
    while !data.join("incidents").is_dir()
        || std::fs::read_dir(data.join("incidents"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no incident draft yet; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Checked while running, so SQLite's -wal and -shm files are there too.
    let mut seen = Vec::new();
    let mut folders = vec![data.clone()];
    while let Some(folder) = folders.pop() {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
        for entry in std::fs::read_dir(&folder).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                seen.push(path.strip_prefix(&data).expect("inside").to_path_buf());
            }
        }
    }
    let log = agent.stop();
    for name in [
        "vantage.db",
        "vantage.db-wal",
        "vantage.db-shm",
        "spool.db",
        "spool.db-wal",
        "incidents.db",
        "incidents.db-wal",
    ] {
        assert!(
            seen.iter().any(|p| p == Path::new(name)),
            "{name} not among {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|p| p.ends_with("incident.md")),
        "no draft among {seen:?}"
    );
    assert!(
        log.contains("data directory was mode 755; tightened to 700"),
        "{log}"
    );
}

/// A directory removed when the test ends, also when it fails.
struct SystemDir(PathBuf);

impl Drop for SystemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_data_dir_in_a_system_directory_or_of_another_user_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `check` writes nothing: it is shown a link to /etc itself.
    let link = dir.path().join("data");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink");
    let config = write_config(dir.path(), &link, "");
    let (code, stdout, stderr) = vantage_within(
        Duration::from_secs(20),
        &[
            "check",
            "--offline",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let refusal = format!(
        "data_dir: error: data directory {} (resolved: /etc) resolves into /etc, a system directory; set `data_dir` to a directory of its own, e.g. `data_dir = \"/var/lib/vantage\"`",
        link.display()
    );
    assert!(stdout.contains(&refusal), "{stdout}");

    // `run` is shown a link into /dev (its tmpfs /dev/shm), so that a regression writes its
    // databases there, where they are cleaned up, and not into /etc.
    let system = SystemDir(PathBuf::from(format!(
        "/dev/shm/vantage-test-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&system.0).expect("mkdir in /dev/shm");
    let link = dir.path().join("data-in-dev");
    std::os::unix::fs::symlink(&system.0, &link).expect("symlink");
    let config = write_config(dir.path(), &link, "");
    let (code, stdout, stderr) = vantage_within(
        Duration::from_secs(20),
        &["run", "--config", config.to_str().expect("utf-8")],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    let refusal = format!(
        "data directory {} (resolved: {}) resolves into /dev, a system directory",
        link.display(),
        system.0.display()
    );
    assert!(stderr.contains(&refusal), "{stderr}");
    assert!(!system.0.join("vantage.db").exists());

    // A directory that belongs to someone else (root chowns it to nobody).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown (needs root)");
    let config = write_config(dir.path(), &theirs, "");
    let (code, stdout, stderr) = vantage_within(
        Duration::from_secs(20),
        &["run", "--config", config.to_str().expect("utf-8")],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "data directory {} belongs to uid 65534, not to this user (uid 0)",
            theirs.display()
        )),
        "{stderr}"
    );
    assert!(!theirs.join("vantage.db").exists());
}
