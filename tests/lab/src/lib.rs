//! # lab — a routed network in namespaces, for tests
//!
//! [`Lab::routed`] builds four network namespaces joined by veth pairs and static routes:
//!
//! ```text
//!  agent ─────────── r1 ─────────────── r2 ─────────────── target
//!  198.18.0.2/24   .0.1 | 198.18.1.1/24   .1.2 | 198.18.2.1/24   198.18.2.2/24
//!  fd00:18::2/64   ::1  | fd00:18:1::1    ::2  | fd00:18:2::1    fd00:18:2::2
//!                                                                + every address of 198.19.0.0/16
//!                                                                  and fd00:19::/64 (local routes)
//! ```
//!
//! Nothing connects the lab to the host's namespace, so traffic sent inside it stays inside it.
//! Addresses are from 198.18.0.0/15 (benchmarking) and fd00::/8 (unique local). Namespace names
//! carry the test process's PID and a counter, so tests run in parallel (cargo-nextest) without
//! clashing; dropping the [`Lab`] deletes every namespace (killing processes left inside), its
//! firewall rules and the delay releasers, also when the test panics. Namespaces left by a run that
//! was killed outright are swept by the next [`Lab::routed`].
//!
//! Faults, per router ([`Router::R1`], [`Router::R2`]):
//! - [`Lab::inject_loss`]: nftables `numgen random mod 100 < pct drop` in a forward-hook chain;
//!   both directions cross the router, so an echo survives with probability `(1 − pct/100)²`.
//!   The router's own replies (time exceeded, echo replies) are never dropped.
//! - [`Lab::inject_link_loss`]: the link from the agent's side into the router drops at random,
//!   both ways, including what the router itself receives and sends on it — a lossy link, which a
//!   path trace sees from the router's hop on.
//! - [`Lab::inject_delay`]: iptables `-j NFQUEUE` on packets forwarded *toward the target* only,
//!   released by a thread in the test process after the delay, so the RTT rises by exactly the
//!   delay (see `delay.rs`).
//! - [`Lab::blackhole`]: silently drop everything forwarded to one address.
//! - [`Lab::add_unreachable_route`]: the router answers with ICMP host unreachable.
//! - [`Lab::reroute_around_r2`]: a direct r1 ↔ target link carries the target range, a path change.
//!
//! Every entry point first calls [`require_root`]: without root a lab test fails loudly, in CI and
//! outside it alike — it never passes silently.
//!
//! ## Example
//! ```
//! let lab = lab::Lab::routed();
//! // fping exits 0 when the target answered; -C prints each echo's time on stderr.
//! let out = lab.agent().exec(["fping", "-C", "3", "-q", "198.18.2.2"]);
//! assert!(out.status.success(), "{out:?}");
//! ```
//!
//! Needs the Debian packages `iproute2`, `nftables`, `iptables` (plus `fping` for its own tests).

mod delay;
pub mod fleet;
mod netns;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use netns::Netns;

use delay::Releaser;

/// The lab's fixed addresses.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The agent's address (its default gateway is [`R1_AGENT_SIDE`]).
    pub const AGENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const R1_AGENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const R1_R2_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    pub const R2_R1_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    pub const R2_TARGET_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
    /// The target namespace's interface address.
    pub const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
    /// On the r2–target link, owned by nobody: r2's ARP for it goes unanswered.
    pub const NOBODY: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 99);
    /// Every address in `TARGET_RANGE/TARGET_RANGE_PREFIX` is answered by the target namespace.
    pub const TARGET_RANGE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
    pub const TARGET_RANGE_PREFIX: u8 = 16;

    pub const AGENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
    pub const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 2, 0, 0, 0, 0, 2);
    /// Every address in `TARGET_RANGE_V6/64` is answered by the target namespace.
    pub const TARGET_RANGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0);
}

/// One of the lab's two routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Router {
    /// Next to the agent.
    R1,
    /// Next to the target.
    R2,
}

impl Router {
    fn index(self) -> usize {
        match self {
            Router::R1 => 0,
            Router::R2 => 1,
        }
    }

    /// The router's interface facing the agent: packets entering there go toward the target.
    fn agent_side_interface(self) -> &'static str {
        match self {
            Router::R1 => "agent",
            Router::R2 => "r1",
        }
    }
}

/// Fail the test unless it runs as root (lab tests need to create namespaces). Under `CI=true` the
/// message says CI is misconfigured; elsewhere it says how to run the test. Never returns quietly
/// without root: a lab test must run or fail, not pass.
pub fn require_root() {
    if nix::unistd::geteuid().is_root() {
        return;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "lab tests need root (network namespaces, nftables, NFQUEUE), and CI=true: CI must run \
             the test suite as root — fix the CI runner, do not skip these tests"
        );
    }
    panic!(
        "lab tests need root (network namespaces, nftables, NFQUEUE); run them as root, e.g. \
         `sudo -E cargo test --test icmp_lab`"
    );
}

/// `n` distinct addresses of [`addr::TARGET_RANGE`] (198.19.x.1–198.19.x.254), each answered by
/// the target namespace. Panics if `n` exceeds the 65,024 the range holds.
pub fn target_addresses(n: usize) -> Vec<Ipv4Addr> {
    assert!(
        n <= 256 * 254,
        "the target range holds 65,024 addresses, not {n}"
    );
    let [a, b, _, _] = addr::TARGET_RANGE.octets();
    (0..n)
        .map(|i| Ipv4Addr::new(a, b, (i / 254) as u8, (i % 254) as u8 + 1))
        .collect()
}

/// A routed lab (see the crate docs). Everything it created is removed when it is dropped.
#[derive(Debug)]
pub struct Lab {
    /// agent, r1, r2, target — in that order once built; a panic halfway drops what exists.
    namespaces: Vec<Netns>,
    /// Delay releasers, indexed by [`Router::index`]; once started, kept until the lab is dropped.
    releasers: [Option<Releaser>; 2],
    /// Whether the router's NFQUEUE rules are in place, indexed by [`Router::index`].
    queueing: [bool; 2],
}

static LABS: AtomicU32 = AtomicU32::new(0);

/// Namespace names start with this, then the PID: `vlab-<pid>-<n>-<role>`.
const PREFIX: &str = "vlab-";

impl Lab {
    /// Build `agent → r1 → r2 → target` (see the crate docs). Panics with the failing command's
    /// stderr if any step fails; whatever was built by then is removed.
    pub fn routed() -> Lab {
        require_root();
        sweep_orphans();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            namespaces: Vec::with_capacity(4),
            releasers: [None, None],
            queueing: [false, false],
        };
        for role in ["agent", "r1", "r2", "target"] {
            lab.namespaces.push(Netns::create(format!("{id}-{role}")));
        }
        let [agent, r1, r2, target] = [0, 1, 2, 3].map(|i| &lab.namespaces[i]);

        // Each end of a link is named after the namespace on the other side.
        agent.ip([
            "link",
            "add",
            "r1",
            "type",
            "veth",
            "peer",
            "name",
            "agent",
            "netns",
            r1.name(),
        ]);
        r1.ip([
            "link",
            "add",
            "r2",
            "type",
            "veth",
            "peer",
            "name",
            "r1",
            "netns",
            r2.name(),
        ]);
        r2.ip([
            "link",
            "add",
            "target",
            "type",
            "veth",
            "peer",
            "name",
            "r2",
            "netns",
            target.name(),
        ]);

        let links: [(&Netns, &str, &str, &str); 6] = [
            (agent, "r1", "198.18.0.2/24", "fd00:18::2/64"),
            (r1, "agent", "198.18.0.1/24", "fd00:18::1/64"),
            (r1, "r2", "198.18.1.1/24", "fd00:18:1::1/64"),
            (r2, "r1", "198.18.1.2/24", "fd00:18:1::2/64"),
            (r2, "target", "198.18.2.1/24", "fd00:18:2::1/64"),
            (target, "r2", "198.18.2.2/24", "fd00:18:2::2/64"),
        ];
        // Links up before addresses: an IPv6 address added to a link without carrier joins its
        // solicited-node group late, and the first neighbour solicitation for it goes unanswered
        // (a one-second stall of the first echoes).
        for (ns, dev, _, _) in links {
            ns.ip(["link", "set", dev, "up"]);
        }
        for (ns, dev, v4, v6) in links {
            ns.ip(["addr", "add", v4, "dev", dev]);
            // nodad: usable at once, instead of "tentative" for a second or two.
            ns.ip(["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        }
        for router in [r1, r2] {
            router.run([
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                // Answer every echo sent to an unreachable address, not one per second.
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv6.icmp.ratelimit=0",
            ]);
        }

        agent.ip(["route", "add", "default", "via", "198.18.0.1"]);
        agent.ip(["-6", "route", "add", "default", "via", "fd00:18::1"]);
        r1.ip(["route", "add", "default", "via", "198.18.1.2"]);
        r1.ip(["-6", "route", "add", "default", "via", "fd00:18:1::2"]);
        // r2 has no default route: what the lab does not hold gets "network unreachable" there.
        r2.ip(["route", "add", "198.18.0.0/24", "via", "198.18.1.1"]);
        r2.ip(["route", "add", "198.19.0.0/16", "via", "198.18.2.2"]);
        r2.ip(["-6", "route", "add", "fd00:18::/64", "via", "fd00:18:1::1"]);
        r2.ip(["-6", "route", "add", "fd00:19::/64", "via", "fd00:18:2::2"]);
        target.ip(["route", "add", "default", "via", "198.18.2.1"]);
        target.ip(["-6", "route", "add", "default", "via", "fd00:18:2::1"]);
        target.ip(["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
        target.ip(["-6", "route", "add", "local", "fd00:19::/64", "dev", "lo"]);
        lab
    }

    /// The namespace the agent runs in.
    pub fn agent(&self) -> &Netns {
        &self.namespaces[0]
    }

    /// A router's namespace.
    pub fn router(&self, router: Router) -> &Netns {
        &self.namespaces[1 + router.index()]
    }

    /// The namespace holding the targets.
    pub fn target(&self) -> &Netns {
        &self.namespaces[3]
    }

    /// Drop `pct` percent of the packets `router` forwards, in both directions, at random
    /// (replacing any loss set before; 0 clears it). An echo is answered with probability
    /// `(1 − pct/100)²`.
    pub fn inject_loss(&self, router: Router, pct: u8) {
        assert!(pct <= 100, "loss is a percentage, not {pct}");
        let ns = self.router(router);
        ns.nft(&format!("{NFT_TABLE}flush chain inet vantage_lab loss\n"));
        if pct > 0 {
            ns.nft(&format!(
                "add rule inet vantage_lab loss {}\n",
                random_drop(pct)
            ));
        }
    }

    /// Stop dropping packets at random on `router`.
    pub fn clear_loss(&self, router: Router) {
        self.inject_loss(router, 0);
    }

    /// The link into `router` from the agent's side (agent–r1 for R1, r1–r2 for R2) drops `pct`
    /// percent of the packets crossing it, each direction at random (replacing any link loss set
    /// before; 0 clears it). Unlike [`Lab::inject_loss`] this hits the router's own traffic on
    /// that link too — probes addressed to it and its time-exceeded replies — so a trace sees
    /// the loss start at this router's hop: its replies and the target's both cross the link twice
    /// and survive with probability `(1 − pct/100)²`.
    pub fn inject_link_loss(&self, router: Router, pct: u8) {
        assert!(pct <= 100, "loss is a percentage, not {pct}");
        let link = router.agent_side_interface();
        let mut script = format!(
            "{NFT_TABLE}flush chain inet vantage_lab link_in\nflush chain inet vantage_lab link_out\n"
        );
        if pct > 0 {
            script.push_str(&format!(
                "add rule inet vantage_lab link_in iifname \"{link}\" {drop}\n\
                 add rule inet vantage_lab link_out oifname \"{link}\" {drop}\n",
                drop = random_drop(pct)
            ));
        }
        self.router(router).nft(&script);
    }

    /// Silently drop every packet `router` forwards to `target` (no ICMP error comes back).
    pub fn blackhole(&self, router: Router, target: IpAddr) {
        let family = if target.is_ipv4() { "ip" } else { "ip6" };
        self.router(router).nft(&format!(
            "{NFT_TABLE}add rule inet vantage_lab blackhole {family} daddr {target} counter drop\n"
        ));
    }

    /// Reroute the target range (198.19.0.0/16) around r2: a direct link r1 ↔ target (198.18.3.0/24)
    /// carries it from now on, so a trace to it loses a hop. Once per lab. Returns when the new
    /// route was installed.
    pub fn reroute_around_r2(&self) -> std::time::SystemTime {
        let (r1, target) = (self.router(Router::R1), self.target());
        r1.run([
            "ip",
            "link",
            "add",
            "alt",
            "type",
            "veth",
            "peer",
            "name",
            "r1alt",
            "netns",
            target.name(),
        ]);
        r1.run(["ip", "addr", "add", "198.18.3.1/24", "dev", "alt"]);
        r1.run(["ip", "link", "set", "alt", "up"]);
        target.run(["ip", "addr", "add", "198.18.3.2/24", "dev", "r1alt"]);
        target.run(["ip", "link", "set", "r1alt", "up"]);
        target.run(["ip", "route", "add", "198.18.0.0/24", "via", "198.18.3.1"]);
        let at = std::time::SystemTime::now();
        r1.run(["ip", "route", "add", "198.19.0.0/16", "via", "198.18.3.2"]);
        at
    }

    /// Make `router` answer packets to `prefix` (e.g. `"198.18.9.0/24"`) with ICMP host unreachable
    /// (a `unreachable` route; ICMP error rate limiting is off in the routers). The prefix must be
    /// one the router would otherwise forward or reject, i.e. not one of the lab's links.
    pub fn add_unreachable_route(&self, router: Router, prefix: &str) {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        self.router(router)
            .ip([family, "route", "add", "unreachable", prefix]);
    }

    /// Delay by `delay` every packet `router` forwards toward the target (agent → target only;
    /// replies are not held), so a round trip through the lab takes exactly `delay` longer.
    /// Replaces a delay set before on that router (packets held under it are released at once).
    /// Panics if the releaser or the iptables rules cannot be set up.
    pub fn inject_delay(&mut self, router: Router, delay: Duration) {
        let i = router.index();
        let ns = &self.namespaces[1 + i];
        match &mut self.releasers[i] {
            Some(releaser) => {
                releaser
                    .check()
                    .unwrap_or_else(|e| panic!("the delay releaser in {} failed: {e}", ns.name()));
                releaser.set_delay(delay);
            }
            None => {
                let releaser = Releaser::start(ns.name(), delay).unwrap_or_else(|e| {
                    panic!("cannot start the delay releaser in {}: {e}", ns.name())
                });
                self.releasers[i] = Some(releaser);
            }
        }
        if !self.queueing[i] {
            // Marked first, so a rule that half went in is still flushed by clear_delay.
            self.queueing[i] = true;
            let queue = delay::QUEUE_NUM.to_string();
            let dev = router.agent_side_interface();
            for tool in ["iptables", "ip6tables"] {
                ns.run([
                    tool,
                    "-w",
                    "-A",
                    "FORWARD",
                    "-i",
                    dev,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                ]);
            }
        }
    }

    /// Stop delaying on `router`: remove the NFQUEUE rules, then release every held packet at once.
    /// Panics if the releaser had failed (packets were then lost, not delayed).
    pub fn clear_delay(&mut self, router: Router) {
        let i = router.index();
        if std::mem::take(&mut self.queueing[i]) {
            for tool in ["iptables", "ip6tables"] {
                self.namespaces[1 + i].run([tool, "-w", "-F", "FORWARD"]);
            }
        }
        if let Some(releaser) = &mut self.releasers[i] {
            let name = self.namespaces[1 + i].name();
            releaser
                .check()
                .unwrap_or_else(|e| panic!("the delay releaser in {name} failed: {e}"));
            releaser.set_delay(Duration::ZERO);
        }
    }

    /// How many packets the delay on `router` has released so far (0 without a delay).
    pub fn delayed_packets(&self, router: Router) -> u64 {
        self.releasers[router.index()]
            .as_ref()
            .map_or(0, Releaser::released)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Threads first (they live inside router namespaces), then the namespaces, target first.
        for releaser in &mut self.releasers {
            if let Some(releaser) = releaser.take() {
                if let Err(e) = releaser.stop() {
                    eprintln!(
                        "lab: the delay releaser failed (packets were lost, not delayed): {e}"
                    );
                }
            }
        }
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

/// The lab's nftables table: declaring it again is a no-op, so every script starts with it.
const NFT_TABLE: &str = "table inet vantage_lab {
    chain blackhole { type filter hook forward priority -10; policy accept; }
    chain loss { type filter hook forward priority 0; policy accept; }
    chain link_in { type filter hook prerouting priority 0; policy accept; }
    chain link_out { type filter hook postrouting priority 0; policy accept; }
}
";

/// Delete namespaces left by lab runs whose process no longer exists (killed before its `Drop`s
/// could run). Namespaces of live processes, including parallel test runs, are left alone.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            drop(Netns::adopt(name));
        }
    }
}

/// The nftables statement that drops `pct`% (1–100) of the packets at random. numgen's comparison
/// only takes 0–99, so 100% is a plain drop.
pub fn random_drop(pct: u8) -> String {
    match pct {
        100.. => "counter drop".to_string(),
        _ => format!("numgen random mod 100 < {pct} counter drop"),
    }
}
