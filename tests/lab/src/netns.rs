//! One network namespace, deleted (with every process still inside it) when dropped.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// A named network namespace (`/run/netns/NAME`) that this test run created.
///
/// Dropping it kills the processes still inside (by PID, from `ip netns pids`) and deletes the
/// namespace; its interfaces and firewall state go with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, bring its loopback up, and turn IPv6 duplicate address detection off
    /// (a link-local address still "tentative" stalls neighbour discovery for a second). Panics if
    /// any step fails.
    pub(crate) fn create(name: String) -> Netns {
        host(["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns.run([
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        ns
    }

    /// Take charge of an existing namespace (so that dropping it deletes it).
    pub(crate) fn adopt(name: String) -> Netns {
        Netns { name }
    }

    /// The namespace's name, as `ip netns exec NAME ...` expects it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec NAME program`); add
    /// arguments, environment and stdio as with any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Run `f` on a thread of its own that entered the namespace (setns(2) is per thread), and
    /// return what it returns: sockets it opens, and processes it starts, live in the namespace.
    /// A panic in `f` is the caller's panic.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Run `args` inside the namespace and wait for it. Panics only if it cannot be started; the
    /// exit status is the caller's to judge.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let program = args.next().expect("exec needs a program");
        let mut command = self.command(program);
        command.args(args);
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
    }

    /// Like [`Netns::exec`], but panics (with its stderr) unless it exits 0; returns its stdout.
    pub fn run<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        checked(&args, self.exec(&args))
    }

    /// `ip -n NAME args...`, panicking on failure.
    pub(crate) fn ip<const N: usize>(&self, args: [&str; N]) -> String {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend(args);
        host(all)
    }

    /// Run an nftables script inside the namespace (`nft -f -`), panicking on failure.
    pub(crate) fn nft(&self, script: &str) {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nft (Debian package nftables): {e}"));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())
            .expect("write the nft script");
        let output = child.wait_with_output().expect("wait for nft");
        checked(&[format!("nft -f - <<EOF\n{script}EOF")], output);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside (a child a failed test never waited for) would keep the namespace
        // and its interfaces alive after `ip netns del`.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid.parse::<u32>().is_ok_and(|p| p != std::process::id()) {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "lab: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("lab: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// Run a command in the current (host) namespace, panicking unless it exits 0.
pub(crate) fn host<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", args[0]));
    checked(&args, output)
}

fn checked<S: AsRef<OsStr>>(args: &[S], output: Output) -> String {
    let shown = || {
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        output.status.success(),
        "`{}` failed ({}): {}{}",
        shown(),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
