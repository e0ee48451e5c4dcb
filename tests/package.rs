//! The Debian package, for real: `scripts/build-deb` builds the `.deb` (release build, man pages,
//! completions, `cargo deb`); `dpkg -i` installs it on this machine; the files, the conffile, the
//! `vantage` user and the state directory are checked; `systemd-analyze verify` and
//! `security --offline=true` judge the installed unit (exposure ≤ 2.0); the installed binary runs
//! as the unit runs it — the unit's `User=`, only `CAP_NET_RAW` (setpriv, ambient capabilities) —
//! in a routed lab and probes it (ping, trace, the agent writing /var/lib/vantage), and without the
//! capability fails with the error that says how to grant it. Then an upgrade keeps the edited
//! conffile and the state, `dpkg -r` keeps them too, and `dpkg --purge` leaves the machine clean.
//!
//! One test, because it owns the machine's package database and takes minutes (the release
//! build). Needs root, dpkg, systemd-analyze and setpriv: fails, never skips, without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lab::{Lab, addr};

const CONFFILE: &str = "/etc/vantage/vantage.toml";
const STATE: &str = "/var/lib/vantage";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn output(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// Run a command to success; its stdout.
fn run(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn sh(args: &[&str]) -> Command {
    let mut command = Command::new(args[0]);
    command.args(&args[1..]);
    command
}

/// Purges the package when dropped, so that a failing test leaves no package, user or state.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = output(&mut sh(&["dpkg", "--purge", "vantage"]));
    }
}

/// Every file the package owns, from `dpkg -L`.
fn package_files() -> Vec<String> {
    run(&mut sh(&["dpkg", "-L", "vantage"]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The one file of the package whose path ends with `suffix` (e.g. the unit, wherever cargo-deb
/// put it: /lib or /usr/lib).
fn owned(files: &[String], suffix: &str) -> PathBuf {
    let found: Vec<_> = files.iter().filter(|f| f.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "one file ending in {suffix} in {files:#?}");
    PathBuf::from(found[0])
}

/// A unit file's `Key=` values, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// The command line that runs `/usr/bin/vantage` inside the lab's agent namespace the way the
/// unit does: as its `User=`/`Group=` (with the user's groups), with `caps` as the only
/// capabilities (inheritable, ambient and bounding set), unable to gain any.
fn as_service(lab: &Lab, user: &str, group: &str, caps: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", lab.agent().name(), "setpriv"]);
    command.args([
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--init-groups".to_owned(),
        format!("--inh-caps=-all{caps}"),
        format!("--ambient-caps=-all{caps}"),
        format!("--bounding-set=-all{caps}"),
        "--no-new-privs".to_owned(),
        "/usr/bin/vantage".to_owned(),
    ]);
    command
}

/// Name, size and modification time of every file under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the state directory") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(entry.path(), (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    files
}

fn owner_and_mode(path: &str) -> String {
    run(&mut sh(&["stat", "-c", "%U:%G %a", path]))
        .trim()
        .to_owned()
}

fn require_tools() {
    for (tool, package) in [
        ("dpkg", "dpkg"),
        ("systemd-analyze", "systemd"),
        ("setpriv", "util-linux"),
        ("adduser", "adduser"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the package test needs `{tool}` (Debian package {package}); install it — the test \
             never skips, in CI or outside it"
        );
    }
}

#[test]
fn deb_installs_runs_with_cap_net_raw_only_upgrades_and_purges_clean() {
    lab::require_root();
    require_tools();
    // A run killed halfway may have left the package installed.
    run(&mut sh(&["dpkg", "--purge", "vantage"]));
    assert!(
        output(&mut sh(&["getent", "passwd", "vantage"]))
            .status
            .code()
            == Some(2),
        "a user `vantage` exists but the package is not installed: remove it (deluser --system \
         vantage) so that the test can prove the package creates and deletes it"
    );

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = |extra: &[&str]| -> PathBuf {
        let stdout = run(Command::new(repo.join("scripts/build-deb"))
            .args(extra)
            .current_dir(repo));
        let deb = PathBuf::from(stdout.lines().last().expect("the .deb's path").trim());
        assert!(deb.is_file(), "scripts/build-deb printed {deb:?}");
        deb
    };
    let deb = build(&[]);

    // --- Install. ---
    let _installed = Installed;
    run(&mut sh(&["dpkg", "-i", deb.to_str().expect("path")]));
    let files = package_files();
    let binary = owned(&files, "/usr/bin/vantage");
    let unit_path = owned(&files, "/systemd/system/vantage.service");
    owned(&files, "/man/man1/vantage.1.gz");
    owned(&files, "/man/man1/vantage-run.1.gz");
    owned(&files, "/man/man1/vantage-trace.1.gz");
    assert!(
        !files.iter().any(|f| f.contains("vantage-generate")),
        "the hidden `generate` command has no man page: {files:#?}"
    );
    let man = run(&mut sh(&["zcat", "/usr/share/man/man1/vantage-trace.1.gz"]));
    assert!(
        man.contains(r"\-\-max\-ttl") && man.contains("mtr"),
        "{man}"
    );
    for (path, expect) in [
        (
            "/usr/share/bash-completion/completions/vantage",
            "complete -F",
        ),
        (
            "/usr/share/zsh/vendor-completions/_vantage",
            "#compdef vantage",
        ),
        (
            "/usr/share/fish/vendor_completions.d/vantage.fish",
            "complete -c vantage",
        ),
        ("/usr/share/doc/vantage/LICENSE", "Apache License"),
        ("/usr/share/doc/vantage/copyright", "Apache License"),
    ] {
        owned(&files, path);
        let content = std::fs::read_to_string(path).expect(path);
        assert!(content.contains(expect), "{path} lacks {expect:?}");
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/vantage")
        .expect("bash completions");
    assert!(bash.contains("trace") && bash.contains("--offline"));

    // Stripped: no symbol table, unlike the release build it came from.
    let installed_size = std::fs::metadata(&binary).expect("binary").len();
    let built_size = std::fs::metadata(repo.join("target/release/vantage"))
        .expect("release binary")
        .len();
    assert!(
        installed_size < built_size * 3 / 4,
        "{binary:?} ({installed_size} bytes) is not stripped (release build: {built_size})"
    );

    let conffiles = run(&mut sh(&[
        "dpkg-query",
        "-W",
        "--showformat=${Conffiles}",
        "vantage",
    ]));
    assert!(
        conffiles.lines().any(|l| l.trim().starts_with(CONFFILE)),
        "{CONFFILE} is not a conffile: {conffiles:?}"
    );
    // The shipped config is valid as shipped, and names the state directory of the unit.
    let shipped = std::fs::read_to_string(CONFFILE).expect("the conffile");
    assert!(shipped.contains(&format!("data_dir = \"{STATE}\"")));

    let passwd = run(&mut sh(&["getent", "passwd", "vantage"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {passwd}");
    assert!(fields[6].ends_with("nologin"), "no login shell: {passwd}");
    run(&mut sh(&["getent", "group", "vantage"]));
    assert_eq!(owner_and_mode(STATE), "vantage:vantage 700");
    // Not enabled by the install: the operator edits the config first, then enables it.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/vantage.service");
    assert!(
        !wants.exists(),
        "the unit must not be enabled by the install"
    );
    run(&mut sh(&["systemctl", "enable", "vantage"]));
    assert!(wants.exists(), "systemctl enable vantage");

    // --- The unit. ---
    let unit = std::fs::read_to_string(&unit_path).expect("the unit");
    let one = |key: &str| -> String {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key}= once in {unit_path:?}: {values:?}");
        values[0].clone()
    };
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_RAW");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_RAW");
    assert_eq!(one("StateDirectory"), "vantage");
    assert_eq!(
        one("ExecStart"),
        format!("/usr/bin/vantage run --config {CONFFILE}")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    // Measured in BENCHMARKS.md: ~17 MB less RSS at 10,000 targets.
    assert_eq!(
        one("Environment"),
        "GLIBC_TUNABLES=glibc.malloc.arena_max=2"
    );
    let (user, group) = (one("User"), one("Group"));
    assert_eq!((user.as_str(), group.as_str()), ("vantage", "vantage"));

    let unit_arg = unit_path.to_str().expect("path");
    let verify = output(&mut sh(&["systemd-analyze", "verify", unit_arg]));
    assert!(
        verify.status.success() && !text(&verify.stderr).contains("vantage"),
        "systemd-analyze verify {unit_arg}: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    let security = run(&mut sh(&[
        "systemd-analyze",
        "security",
        "--offline=true",
        "--no-pager",
        unit_arg,
    ]));
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vantage.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{security}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{security}");
    eprintln!("systemd-analyze security --offline=true: exposure {exposure}");

    // --- The installed binary, run as the unit runs it, in a routed lab. ---
    let lab = Lab::routed();
    // No ping sockets for anybody (the kernel's default): only CAP_NET_RAW can make ICMP work.
    lab.agent()
        .run(["sysctl", "-qw", "net.ipv4.ping_group_range=1 0"]);
    let net_raw = ",+net_raw";

    // ExecStartPre= as written in the unit, as the unit's user.
    let pre = one("ExecStartPre");
    let pre_args: Vec<&str> = pre.split_whitespace().collect();
    assert_eq!(pre_args[0], "/usr/bin/vantage");
    let checked = run(as_service(&lab, &user, &group, net_raw).args(&pre_args[1..]));
    assert!(checked.contains(": ok"), "{checked}");

    let target = addr::TARGET.to_string();
    let target_v6 = addr::TARGET_V6.to_string();
    let ping = run(as_service(&lab, &user, &group, net_raw).args([
        "ping", "--json", "-c", "5", "-p", "100", &target, &target_v6,
    ]));
    let mut answered = 0;
    for line in ping.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["received"], 5, "{line}");
        answered += 1;
    }
    assert_eq!(answered, 2, "{ping}");

    let trace = run(as_service(&lab, &user, &group, net_raw).args([
        "trace",
        "--json",
        "--count",
        "3",
        "--interval-ms",
        "100",
        &target,
    ]));
    let trace: serde_json::Value = serde_json::from_str(&trace).expect("trace JSON");
    let hops: Vec<&str> = trace["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| h["address"].as_str().unwrap_or("???"))
        .collect();
    assert_eq!(hops, ["198.18.0.1", "198.18.1.2", "198.18.2.2"], "{trace}");

    // The agent itself, writing its store where the unit lets it: /var/lib/vantage.
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("lab.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nsite = \"lab\"\ndata_dir = \"{STATE}\"\n\n\
             [[target]]\nname = \"lab-target\"\nhost = \"{target}\"\n\n\
             [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\ncount = 5\n"
        ),
    )
    .expect("write the lab config");
    run(&mut sh(&[
        "chmod",
        "a+rX",
        config_dir.path().to_str().expect("path"),
        config.to_str().expect("path"),
    ]));
    let agent = as_service(&lab, &user, &group, net_raw)
        .args(["run", "--config", config.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    std::thread::sleep(Duration::from_millis(4500));
    // `ip netns exec` and setpriv exec: the child's PID is the agent's.
    run(&mut sh(&["kill", "-TERM", &agent.id().to_string()]));
    let agent = agent.wait_with_output().expect("agent exit");
    let log = text(&agent.stderr);
    assert!(agent.status.success(), "the agent: {log}");
    let db = rusqlite::Connection::open(Path::new(STATE).join("vantage.db")).expect("store");
    let (rounds, sent, received): (i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), SUM(sent), SUM(received) FROM ping WHERE target = 'lab-target'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query the store");
    drop(db);
    assert!(
        rounds >= 3 && sent == received,
        "{rounds} rounds, {received}/{sent} echoes: {log}"
    );
    assert_eq!(
        owner_and_mode(&format!("{STATE}/vantage.db"))
            .split(' ')
            .next(),
        Some("vantage:vantage")
    );

    // Without the capability: the clear error that says how to grant it, never a silent "lost".
    let denied = output(as_service(&lab, &user, &group, "").args(["ping", "-c", "1", &target]));
    let stderr = text(&denied.stderr);
    assert_eq!(denied.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open an ICMP socket: raw sockets need CAP_NET_RAW")
            && stderr.contains("AmbientCapabilities=CAP_NET_RAW"),
        "{stderr}"
    );
    let denied = output(as_service(&lab, &user, &group, "").args(["trace", &target]));
    let stderr = text(&denied.stderr);
    assert_eq!(denied.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("path traces need raw sockets (CAP_NET_RAW)"),
        "{stderr}"
    );
    drop(lab);

    // --- Upgrade: the edited conffile and the state survive. ---
    let edited = shipped.replace("retention = \"14d\"", "retention = \"7d\"")
        + "\n# edited by the package test\n";
    assert_ne!(edited, shipped);
    std::fs::write(CONFFILE, &edited).expect("edit the conffile");
    std::fs::write(format!("{STATE}/marker"), "kept\n").expect("a file of state");
    let state_before = snapshot(Path::new(STATE));
    // Elsewhere than target/debian, where the README's `apt install ./target/debian/vantage_*.deb`
    // must find exactly one package.
    let upgrade_dir = tempfile::tempdir().expect("tempdir");
    let upgrade = build(&[
        "--deb-version",
        "0.1.0-2",
        "--output",
        upgrade_dir.path().to_str().expect("path"),
    ]);
    assert_ne!(upgrade, deb);
    run(&mut sh(&["dpkg", "-i", upgrade.to_str().expect("path")]));
    let version = run(&mut sh(&[
        "dpkg-query",
        "-W",
        "--showformat=${Version}",
        "vantage",
    ]));
    assert_eq!(version, "0.1.0-2");
    assert_eq!(std::fs::read_to_string(CONFFILE).expect("conffile"), edited);
    assert_eq!(
        snapshot(Path::new(STATE)),
        state_before,
        "state changed by the upgrade"
    );
    assert_eq!(owner_and_mode(STATE), "vantage:vantage 700");
    assert_eq!(run(&mut sh(&["getent", "passwd", "vantage"])), passwd);
    assert!(wants.exists(), "the upgrade disabled the unit");

    // --- Remove keeps config, state and user; purge removes everything. ---
    run(&mut sh(&["dpkg", "-r", "vantage"]));
    assert!(!binary.exists());
    assert!(Path::new(CONFFILE).exists() && Path::new(STATE).join("marker").exists());
    run(&mut sh(&["getent", "passwd", "vantage"]));
    run(&mut sh(&["dpkg", "--purge", "vantage"]));
    let status = output(&mut sh(&[
        "dpkg-query",
        "-W",
        "--showformat=${Status}",
        "vantage",
    ]));
    assert!(
        !text(&status.stdout).contains("installed")
            || text(&status.stdout).contains("not-installed"),
        "{}",
        text(&status.stdout)
    );
    for path in files.iter().filter(|f| {
        // Directories shared with other packages stay.
        !Path::new(f).is_dir()
    }) {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    for path in [
        binary.as_path(),
        unit_path.as_path(),
        Path::new("/etc/vantage"),
        Path::new(STATE),
        Path::new("/usr/share/doc/vantage"),
        Path::new("/etc/systemd/system/multi-user.target.wants/vantage.service"),
        Path::new("/var/lib/systemd/deb-systemd-helper-enabled/vantage.service.dsh-also"),
    ] {
        assert!(!path.exists(), "{path:?} left after purge");
    }
    assert_eq!(
        output(&mut sh(&["getent", "passwd", "vantage"]))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        output(&mut sh(&["getent", "group", "vantage"]))
            .status
            .code(),
        Some(2)
    );
}
