//! # The multi-site lab: three agent sites, shared and separate transit, a cloud, one store
//!
//! [`FleetLab::build`] joins nine namespaces (plus a management one) by veth pairs and static routes:
//!
//! ```text
//!  scl3 agent ── scl3-edge ──┐  shared transit segment 198.18.20.0/24 (a bridge in transit-a)
//!  198.18.10.2   .10.1  .20.2│
//!                            ├── transit-a ── 198.18.30.0/24 ──┐
//!  sjc1 agent ── sjc1-edge ──┘   .20.1  .30.1                  │
//!  198.18.11.2   .11.1  .20.3                                  ├── cloud  .30.2 / .31.2
//!                                                              │   targets: every address of
//!  iad1 agent ── iad1-edge ── transit-b ── 198.18.31.0/24 ─────┘   198.19.0.0/16 (local routes;
//!  198.18.12.2   .12.1  .22.2  .22.1  .31.1                         HTTP via `cloud().inside`)
//!
//!  management (out of band, so a cut uplink still reports): a bridge in the `mgmt` namespace,
//!  198.18.200.1/24, each agent's `mgmt` interface 198.18.200.1x/24 (scl3 .10, sjc1 .11, iad1 .12)
//!  ── the store: [`FleetLab::expose_store`] listens on 198.18.200.1:PORT and forwards every
//!  connection to a store on the host's loopback (stopping that store = the store is down).
//! ```
//!
//! The agents reach each other over the data path (the mesh: scl3 ↔ sjc1 through transit-a,
//! either of them ↔ iad1 through the cloud), and the targets through their edge and transit. A
//! trace from scl3 or sjc1 to a target shows hops edge, 198.18.20.1 (transit-a: the hop they share),
//! destination; from iad1: 198.18.12.1, 198.18.22.1 (transit-b), destination.
//!
//! Faults (nftables in the router, as in the routed [`crate::Lab`]; delay by NFQUEUE):
//! - [`FleetLab::cut_uplink`]: the site's edge forwards nothing (the site is cut off; its
//!   management link, and so its reports to the store, stay up).
//! - [`FleetLab::site_loss`]: the site's edge drops `pct`% of what it forwards, both ways.
//! - [`FleetLab::shared_transit_loss`] / [`FleetLab::shared_transit_delay`]: transit-a drops or
//!   delays what it forwards (scl3 and sjc1 see it, iad1 does not).
//! - [`FleetLab::target_down`]: the cloud silently drops everything addressed to one target.
//!
//! Addresses are from 198.18.0.0/15 only; namespace names carry the PID like the routed lab's and
//! are deleted when the [`FleetLab`] is dropped (orphans are swept by the next build).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::delay::Releaser;
use crate::{LABS, NFT_TABLE, Netns, PREFIX, require_root, sweep_orphans};

/// One of the three agent sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Scl3,
    Sjc1,
    Iad1,
}

impl Site {
    pub const ALL: [Site; 3] = [Site::Scl3, Site::Sjc1, Site::Iad1];

    /// `scl3`, `sjc1`, `iad1`: the site tag its agent writes.
    pub fn name(self) -> &'static str {
        match self {
            Site::Scl3 => "scl3",
            Site::Sjc1 => "sjc1",
            Site::Iad1 => "iad1",
        }
    }

    fn index(self) -> u8 {
        match self {
            Site::Scl3 => 0,
            Site::Sjc1 => 1,
            Site::Iad1 => 2,
        }
    }

    /// The agent's data-path address (198.18.10.2, .11.2, .12.2): what the mesh probes.
    pub fn agent_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10 + self.index(), 2)
    }

    /// The site's edge router, the first hop of every trace from it.
    pub fn edge_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10 + self.index(), 1)
    }

    /// The transit hop of this site's traces: 198.18.20.1 (transit-a, shared by scl3 and sjc1)
    /// or 198.18.22.1 (transit-b, iad1's own).
    pub fn transit_addr(self) -> Ipv4Addr {
        match self {
            Site::Scl3 | Site::Sjc1 => SHARED_TRANSIT,
            Site::Iad1 => Ipv4Addr::new(198, 18, 22, 1),
        }
    }

    /// The agent's management address, on the out-of-band network to the store.
    pub fn mgmt_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 200, 10 + self.index())
    }
}

/// Transit-a's address on the segment scl3 and sjc1 share.
pub const SHARED_TRANSIT: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 1);
/// Where the store is reachable from every agent (see [`FleetLab::expose_store`]).
pub const STORE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
/// The cloud's targets: every address of 198.19.0.0/16 answers (use [`crate::target_addresses`]).
pub const TARGET_RANGE: &str = "198.19.0.0/16";

/// The multi-site lab (see the module docs). Everything it created is removed when dropped.
#[derive(Debug)]
pub struct FleetLab {
    /// agents (scl3, sjc1, iad1), edges (same order), transit-a, transit-b, cloud, mgmt.
    namespaces: Vec<Netns>,
    delay: Option<Releaser>,
    queueing: bool,
    proxies: Vec<Proxy>,
}

const AGENTS: usize = 0;
const EDGES: usize = 3;
const TRANSIT_A: usize = 6;
const TRANSIT_B: usize = 7;
const CLOUD: usize = 8;
const MGMT: usize = 9;

/// The cloud's own nftables table: the targets that are down (declared once, at build).
const FLEET_TABLE: &str = "table inet vantage_fleet {
    set down { type ipv4_addr; }
    chain input { type filter hook input priority -10; policy accept; ip daddr @down counter drop; }
}
";

impl FleetLab {
    /// Build the lab (module docs). Panics with the failing command's stderr if a step fails;
    /// whatever was built by then is removed.
    pub fn build() -> FleetLab {
        require_root();
        sweep_orphans();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = FleetLab {
            namespaces: Vec::with_capacity(10),
            delay: None,
            queueing: false,
            proxies: Vec::new(),
        };
        for role in [
            "scl3",
            "sjc1",
            "iad1",
            "scl3-edge",
            "sjc1-edge",
            "iad1-edge",
            "transit-a",
            "transit-b",
            "cloud",
            "mgmt",
        ] {
            lab.namespaces.push(Netns::create(format!("{id}-{role}")));
        }
        let ns = &lab.namespaces;
        let (transit_a, transit_b, cloud, mgmt) =
            (&ns[TRANSIT_A], &ns[TRANSIT_B], &ns[CLOUD], &ns[MGMT]);

        // Bridges: the shared transit segment (in transit-a) and the management network.
        for (n, bridge, address) in [
            (transit_a, "seg", "198.18.20.1/24"),
            (mgmt, "mgmt", "198.18.200.1/24"),
        ] {
            n.ip(["link", "add", bridge, "type", "bridge"]);
            n.ip(["link", "set", bridge, "up"]);
            n.ip(["addr", "add", address, "dev", bridge]);
        }

        // veth(a, dev_a, b, dev_b): each end is named after the namespace on the other side.
        let veth = |a: &Netns, dev_a: &str, b: &Netns, dev_b: &str| {
            a.ip([
                "link",
                "add",
                dev_a,
                "type",
                "veth",
                "peer",
                "name",
                dev_b,
                "netns",
                b.name(),
            ]);
            a.ip(["link", "set", dev_a, "up"]);
            b.ip(["link", "set", dev_b, "up"]);
        };
        for site in Site::ALL {
            let i = usize::from(site.index());
            let (agent, edge) = (&ns[AGENTS + i], &ns[EDGES + i]);
            let net = 10 + site.index();
            veth(agent, "edge", edge, "agent");
            agent.ip(["addr", "add", &format!("198.18.{net}.2/24"), "dev", "edge"]);
            edge.ip(["addr", "add", &format!("198.18.{net}.1/24"), "dev", "agent"]);
            agent.ip(["route", "add", "default", "via", &format!("198.18.{net}.1")]);

            // The management link: enslaved to the bridge on the mgmt side.
            let port = site.name().to_string();
            veth(agent, "mgmt", mgmt, &port);
            mgmt.ip(["link", "set", &port, "master", "mgmt"]);
            agent.ip([
                "addr",
                "add",
                &format!("{}/24", site.mgmt_addr()),
                "dev",
                "mgmt",
            ]);

            match site {
                Site::Scl3 | Site::Sjc1 => {
                    let port = site.name().to_string();
                    veth(edge, "transit", transit_a, &port);
                    transit_a.ip(["link", "set", &port, "master", "seg"]);
                    let me = 2 + site.index();
                    edge.ip([
                        "addr",
                        "add",
                        &format!("198.18.20.{me}/24"),
                        "dev",
                        "transit",
                    ]);
                    edge.ip(["route", "add", "default", "via", "198.18.20.1"]);
                    transit_a.ip([
                        "route",
                        "add",
                        &format!("198.18.{net}.0/24"),
                        "via",
                        &format!("198.18.20.{me}"),
                    ]);
                }
                Site::Iad1 => {
                    veth(edge, "transit", transit_b, "edge");
                    edge.ip(["addr", "add", "198.18.22.2/24", "dev", "transit"]);
                    transit_b.ip(["addr", "add", "198.18.22.1/24", "dev", "edge"]);
                    edge.ip(["route", "add", "default", "via", "198.18.22.1"]);
                    transit_b.ip(["route", "add", "198.18.12.0/24", "via", "198.18.22.2"]);
                }
            }
        }
        veth(transit_a, "cloud", cloud, "transit-a");
        transit_a.ip(["addr", "add", "198.18.30.1/24", "dev", "cloud"]);
        cloud.ip(["addr", "add", "198.18.30.2/24", "dev", "transit-a"]);
        transit_a.ip(["route", "add", "default", "via", "198.18.30.2"]);
        veth(transit_b, "cloud", cloud, "transit-b");
        transit_b.ip(["addr", "add", "198.18.31.1/24", "dev", "cloud"]);
        cloud.ip(["addr", "add", "198.18.31.2/24", "dev", "transit-b"]);
        transit_b.ip(["route", "add", "default", "via", "198.18.31.2"]);
        for (prefix, via) in [
            ("198.18.10.0/24", "198.18.30.1"),
            ("198.18.11.0/24", "198.18.30.1"),
            ("198.18.20.0/24", "198.18.30.1"),
            ("198.18.12.0/24", "198.18.31.1"),
            ("198.18.22.0/24", "198.18.31.1"),
        ] {
            cloud.ip(["route", "add", prefix, "via", via]);
        }
        cloud.ip(["route", "add", "local", TARGET_RANGE, "dev", "lo"]);

        for router in &ns[EDGES..=CLOUD] {
            router.run([
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.icmp_ratelimit=0",
            ]);
            router.nft(NFT_TABLE);
        }
        cloud.nft(FLEET_TABLE);
        lab
    }

    /// A site's agent namespace.
    pub fn agent(&self, site: Site) -> &Netns {
        &self.namespaces[AGENTS + usize::from(site.index())]
    }

    /// A site's edge router.
    pub fn edge(&self, site: Site) -> &Netns {
        &self.namespaces[EDGES + usize::from(site.index())]
    }

    /// Transit-a, the router of the segment scl3 and sjc1 share.
    pub fn shared_transit(&self) -> &Netns {
        &self.namespaces[TRANSIT_A]
    }

    /// Transit-b, iad1's own.
    pub fn transit_b(&self) -> &Netns {
        &self.namespaces[TRANSIT_B]
    }

    /// The cloud namespace: it answers every target address, and serves whatever a test binds
    /// in it (e.g. `lab.cloud().inside(|| TcpListener::bind("198.19.0.1:8080"))`).
    pub fn cloud(&self) -> &Netns {
        &self.namespaces[CLOUD]
    }

    /// Make a store listening on the host's `127.0.0.1:port` reachable from every agent at
    /// `STORE_ADDR:port` (a forwarding thread per connection; stopped when the lab is dropped).
    /// Returns the URL the agents use, `http://198.18.200.1:PORT`. While the store is stopped,
    /// connections are accepted and closed at once (as a refused connection would be).
    pub fn expose_store(&mut self, port: u16) -> String {
        let listen = SocketAddr::from((STORE_ADDR, port));
        let listener = self.namespaces[MGMT]
            .inside(|| TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("cannot listen on {listen} in the mgmt namespace: {e}"));
        self.proxies.push(Proxy::start(listener, port));
        format!("http://{listen}")
    }

    /// Cut the site's uplink: its edge forwards nothing, either way (`false` restores it).
    pub fn cut_uplink(&self, site: Site, cut: bool) {
        self.site_loss(site, if cut { 100 } else { 0 });
    }

    /// The site's edge drops `pct`% of what it forwards, both directions, at random (0 clears).
    pub fn site_loss(&self, site: Site, pct: u8) {
        forward_loss(self.edge(site), pct);
    }

    /// Transit-a (the segment scl3 and sjc1 share) drops `pct`% of what it forwards (0 clears).
    pub fn shared_transit_loss(&self, pct: u8) {
        forward_loss(self.shared_transit(), pct);
    }

    /// Transit-a holds every packet it forwards toward the cloud for `delay` (zero clears;
    /// replies are not held, so a round trip through it is exactly `delay` longer).
    pub fn shared_transit_delay(&mut self, delay: Duration) {
        let ns = &self.namespaces[TRANSIT_A];
        match &mut self.delay {
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
                self.delay = Some(releaser);
            }
        }
        if !self.queueing && !delay.is_zero() {
            self.queueing = true;
            let queue = crate::delay::QUEUE_NUM.to_string();
            ns.run([
                "iptables",
                "-w",
                "-A",
                "FORWARD",
                "-o",
                "cloud",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
            ]);
        }
    }

    /// The cloud silently drops everything addressed to `target` (`false` brings it back).
    pub fn target_down(&self, target: Ipv4Addr, down: bool) {
        let verb = if down { "add" } else { "delete" };
        self.cloud().nft(&format!(
            "{verb} element inet vantage_fleet down {{ {target} }}\n"
        ));
    }
}

/// Replace the router's random forward loss with `pct`% (0: none).
fn forward_loss(router: &Netns, pct: u8) {
    assert!(pct <= 100, "loss is a percentage, not {pct}");
    let mut script = format!("{NFT_TABLE}flush chain inet vantage_lab loss\n");
    if pct > 0 {
        script.push_str(&format!(
            "add rule inet vantage_lab loss {}\n",
            crate::random_drop(pct)
        ));
    }
    router.nft(&script);
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for proxy in &mut self.proxies {
            proxy.stop();
        }
        if let Some(releaser) = self.delay.take() {
            if let Err(e) = releaser.stop() {
                eprintln!("fleet lab: the delay releaser failed (packets were lost): {e}");
            }
        }
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

/// Forwards connections accepted in the mgmt namespace to the host's loopback.
#[derive(Debug)]
struct Proxy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(listener: TcpListener, port: u16) -> Proxy {
        // Polled, so that dropping the lab ends the thread (and frees the namespace's socket).
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    };
                    // Opened on this thread, which is in the host namespace: the host's loopback.
                    match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(server) if client.set_nonblocking(false).is_ok() => {
                            forward(client, server)
                        }
                        _ => drop(client),
                    }
                }
            })
        };
        Proxy {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copy both ways until either side closes.
fn forward(client: TcpStream, server: TcpStream) {
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
