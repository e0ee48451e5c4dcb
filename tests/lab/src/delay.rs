//! The userspace half of delay injection: a thread that lives in a router's namespace, takes the
//! packets iptables hands to NFQUEUE, and accepts each one `delay` after it arrived.
//!
//! This kernel has no `netem`, and nftables' native `queue` expression is not built in; iptables'
//! `-j NFQUEUE` target is. The held packets wait in a FIFO: the delay is the same for every packet
//! and arrivals are in time order, so the FIFO is also ordered by release time, and each packet is
//! held for `delay` from its own arrival (not `delay` × its position in the queue). Changing the
//! delay releases everything held at once, so the FIFO stays ordered.
//!
//! The `nfq` crate does not expose its socket for `poll(2)`, so the loop reads without blocking and
//! naps at most [`MAX_NAP`] between looks: a packet waits `delay` plus up to that nap (plus the
//! scheduler's wake-up latency) — tens of microseconds, far below any delay a test injects.
//!
//! One releaser per router lives as long as the lab: `nfq` opens its netlink socket without
//! `SOCK_CLOEXEC`, so a child process that another test thread forks at the wrong moment inherits
//! it and keeps the queue bound after we close it; a second socket could then not bind the queue
//! again (EPERM). Keeping the first socket, and only changing the delay, avoids re-binding.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};
use nix::sched::{CloneFlags, setns};

/// The queue number the releaser binds; queue numbers are per network namespace.
pub(crate) const QUEUE_NUM: u16 = 0;

/// Longest sleep between two looks at the queue while a delay is set.
const MAX_NAP: Duration = Duration::from_micros(100);

/// Sleep between looks while no delay is set (no rule sends packets to the queue then).
const IDLE_NAP: Duration = Duration::from_millis(10);

/// A running releaser thread. [`Releaser::stop`] (or dropping it) accepts every held packet at
/// once and joins the thread.
#[derive(Debug)]
pub(crate) struct Releaser {
    control: Arc<Control>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// What the test thread tells the releaser, and what it counts.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    /// The delay for packets arriving from now on, in nanoseconds (0: none).
    delay_ns: AtomicU64,
    /// Bumped on every delay change: the releaser then releases all it holds.
    generation: AtomicU64,
    released: AtomicU64,
}

impl Releaser {
    /// Start the thread in the namespace `netns` (a name under /run/netns) and return once its
    /// queue is bound, so rules sending packets to it can be added right after.
    pub(crate) fn start(netns: &str, delay: Duration) -> io::Result<Releaser> {
        let control = Arc::new(Control::default());
        control.delay_ns.store(nanos(delay), Ordering::Relaxed);
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let thread = {
            let control = Arc::clone(&control);
            thread::Builder::new()
                .name(format!("lab-delay-{netns}"))
                .spawn(move || {
                    let queue = match open_queue(&path) {
                        Ok(queue) => {
                            let _ = ready_tx.send(Ok(()));
                            queue
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    release_loop(queue, &control)
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Releaser {
                control,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other("the releaser thread died while starting")),
        }
    }

    /// Hold packets arriving from now on for `delay` (zero: pass them at once); whatever is held
    /// is released now.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.control.delay_ns.store(nanos(delay), Ordering::Relaxed);
        self.control.generation.fetch_add(1, Ordering::Release);
    }

    /// Err if the thread has ended on an error (from then on, queued packets are dropped).
    pub(crate) fn check(&mut self) -> io::Result<()> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            self.join()?;
            return Err(io::Error::other("the releaser thread ended early"));
        }
        Ok(())
    }

    /// How many packets this releaser has accepted so far.
    pub(crate) fn released(&self) -> u64 {
        self.control.released.load(Ordering::Relaxed)
    }

    /// Release everything held, end the thread, and report how it ended.
    pub(crate) fn stop(mut self) -> io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> io::Result<()> {
        self.control.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the releaser thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("lab: delay releaser failed: {e}");
        }
    }
}

/// Enter the namespace (this thread only: setns(2) on CLONE_NEWNET is per thread) and bind the
/// queue.
fn open_queue(netns_path: &str) -> io::Result<Queue> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let file = File::open(netns_path).map_err(step("open the namespace"))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(io::Error::from)
        .map_err(step("setns"))?;
    let mut queue = Queue::open().map_err(step("open the netfilter queue socket"))?;
    queue.bind(QUEUE_NUM).map_err(step("bind the queue"))?;
    // Only metadata: the verdict needs the packet id, not the payload.
    queue
        .set_copy_range(QUEUE_NUM, 0)
        .map_err(step("set the copy range"))?;
    // The kernel's default of 1024 held packets is ~20 ms at 50k packets/s; a full queue drops
    // (fail-open off), so an overload shows up as loss rather than as silently undelayed packets.
    queue
        .set_queue_max_len(QUEUE_NUM, 1 << 18)
        .map_err(step("set the queue length"))?;
    queue
        .set_fail_open(QUEUE_NUM, false)
        .map_err(step("set fail-open"))?;
    queue.set_nonblocking(true);
    Ok(queue)
}

fn release_loop(mut queue: Queue, control: &Control) -> io::Result<()> {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut generation = control.generation.load(Ordering::Acquire);
    loop {
        let stopping = control.stop.load(Ordering::Relaxed);
        let changed = control.generation.load(Ordering::Acquire);
        let flush = stopping || changed != generation;
        generation = changed;
        let delay = Duration::from_nanos(control.delay_ns.load(Ordering::Relaxed));
        loop {
            match queue.recv() {
                Ok(message) => held.push_back((Instant::now() + delay, message)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| flush || *due <= now) {
            let (_, mut message) = held.pop_front().expect("front exists");
            message.set_verdict(Verdict::Accept);
            // Counted first: whoever sees the packet arrive must see it counted.
            control.released.fetch_add(1, Ordering::Relaxed);
            queue.verdict(message)?;
        }
        if stopping {
            return Ok(());
        }
        let nap = match held.front() {
            Some((due, _)) => due.saturating_duration_since(now).min(MAX_NAP),
            None if delay.is_zero() => IDLE_NAP,
            None => MAX_NAP,
        };
        thread::sleep(nap);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
