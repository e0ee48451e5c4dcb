//! One loop per ICMP probe for all its targets given by address (issue 15). At 10,000 targets a
//! task per target, each holding a round in flight for its whole interval (rounds of 20 echoes a
//! second apart, every 20 s), was the agent's largest cost: 17.5 MB of tasks and boxed runs, and a
//! oneshot channel and a stop token per round besides. Here a target is a row of a table and an
//! entry in a deadline heap; its rounds go through one [`IcmpSession`] to the socket loops.
//!
//! The schedule is the per-target loop's, exactly: the first run at the offset the scheduler gave
//! it, a little jitter per tick, the next tick from the previous one once a round ends (missed
//! ticks skipped and counted), a stop or a removal cuts the round in flight short and it is not
//! stored. Targets given by name stay in loops of their own: they resolve before each round.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use probes::{CancellationToken, IcmpClient, IcmpSession, Observation, RoundPlan};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Counters, Identity, Job, hand_over, jitter, mono_ms, next_due};
use crate::config::Target;
use crate::probe::Probe;
use crate::record::Record;

/// What the scheduler tells a probe's loop.
#[derive(Debug)]
pub(super) enum Change {
    /// New targets, each with the offset of its first run.
    Add(Vec<(Job, Duration)>),
    /// Targets (by name) that leave: a round in flight stops sending and is not stored.
    Remove(Vec<String>),
}

/// What a probe's loop runs with: one ICMP probe's plan and interval.
pub(super) struct Plan {
    pub probe_name: String,
    /// Any one job's probe: all share the client and the plan ([`Probe::cut_short`]).
    pub probe: Arc<Probe>,
    pub client: IcmpClient,
    pub plan: RoundPlan,
    pub interval: Duration,
}

/// A target of the probe.
struct Member {
    target: Arc<Target>,
    address: IpAddr,
    /// Its current tick, and when that tick's round starts (the tick plus jitter).
    due: Instant,
    start_at: Instant,
    running: bool,
    /// Removed while its round was in flight: forgotten when the round ends.
    removed: bool,
}

/// Run `plan`'s targets until `stop`, or until the scheduler drops `changes` and the last target
/// has left; returns once every round in flight has ended.
pub(super) async fn probe_loop(
    plan: Plan,
    identity: Arc<Identity>,
    out: mpsc::Sender<Record>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut table = Table {
        session: plan.client.session(plan.plan, &stop),
        plan,
        members: HashMap::new(),
        by_name: HashMap::new(),
        schedule: BinaryHeap::new(),
        next_id: 0,
    };
    let mut changes_open = true;
    let mut stopping = false;
    // While the test hook stalls the scheduler, starts wait until this.
    let mut not_before = Instant::now();
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let done = stopping || (!changes_open && table.members.is_empty());
        if done && table.session.running() == 0 {
            return;
        }
        let wake = table
            .schedule
            .peek()
            .map(|Reverse((at, _))| (*at).max(not_before));
        if let Some(at) = wake {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            change = changes.recv(), if changes_open => match change {
                Some(Change::Add(jobs)) => table.add(jobs),
                Some(Change::Remove(names)) => table.remove(&names),
                None => changes_open = false,
            },
            (id, observation) = table.session.next(), if table.session.running() > 0 => {
                // The token, not `stopping`: the session sees the stop on its own, so a round
                // it cut short can end here before this loop's stop branch has run.
                let stopped = stop.is_cancelled();
                if table.ended(id, observation, &identity, &out, &counters, stopped).await.is_break() {
                    return;
                }
            }
            () = &mut sleep, if wake.is_some() && !stopping => {
                if counters.stalled.load(Ordering::Relaxed) {
                    // Test hook: no run starts while set; look again shortly, as a job loop does.
                    not_before = Instant::now() + Duration::from_millis(50);
                } else {
                    table.start_due(&counters);
                }
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                table.schedule.clear();
            }
        }
    }
}

struct Table {
    plan: Plan,
    session: IcmpSession,
    members: HashMap<u32, Member>,
    by_name: HashMap<String, u32>,
    /// (when its next round starts, member): entries of removed members, or of a start that has
    /// moved, are skipped when they come up.
    schedule: BinaryHeap<Reverse<(Instant, u32)>>,
    next_id: u32,
}

impl Table {
    fn add(&mut self, jobs: Vec<(Job, Duration)>) {
        let now = Instant::now();
        for (job, offset) in jobs {
            // A key started again without a stop first (the scheduler stops it first; kept safe).
            self.remove(std::slice::from_ref(&job.target.name));
            let Some((_, _, address)) = job.probe.icmp_by_address(&job.target) else {
                continue; // the scheduler routes only such jobs here
            };
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let due = now + offset;
            let start_at = due + jitter(self.plan.interval);
            self.by_name.insert(job.target.name.clone(), id);
            self.members.insert(
                id,
                Member {
                    target: job.target,
                    address,
                    due,
                    start_at,
                    running: false,
                    removed: false,
                },
            );
            self.schedule.push(Reverse((start_at, id)));
        }
    }

    fn remove(&mut self, names: &[String]) {
        let mut in_flight = Vec::new();
        for name in names {
            let Some(id) = self.by_name.remove(name) else {
                continue;
            };
            match self.members.get_mut(&id) {
                Some(member) if member.running => {
                    member.removed = true;
                    in_flight.push(id);
                }
                _ => {
                    self.members.remove(&id);
                }
            }
        }
        if !in_flight.is_empty() {
            self.session.cancel(&in_flight);
        }
    }

    /// Start every round whose time has come, as one batch.
    fn start_due(&mut self, counters: &Counters) {
        let now = Instant::now();
        let mut starting = Vec::new();
        let mut lag = Duration::ZERO;
        while let Some(&Reverse((at, id))) = self.schedule.peek() {
            if at > now {
                break;
            }
            self.schedule.pop();
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            if member.removed || member.running || member.start_at != at {
                continue;
            }
            member.running = true;
            lag = lag.max(now.saturating_duration_since(at));
            starting.push((id, member.address));
        }
        if starting.is_empty() {
            return;
        }
        counters.last_run_ms.store(mono_ms(), Ordering::Relaxed);
        counters
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        self.session.start(&starting);
    }

    /// A round ended: store it unless it was cut short, and schedule the target's next tick.
    async fn ended(
        &mut self,
        id: u32,
        observation: Observation,
        identity: &Identity,
        out: &mpsc::Sender<Record>,
        counters: &Counters,
        stopping: bool,
    ) -> ControlFlow<()> {
        let Some(member) = self.members.get_mut(&id) else {
            return ControlFlow::Continue(());
        };
        member.running = false;
        let (removed, target, address) =
            (member.removed, Arc::clone(&member.target), member.address);
        if removed {
            self.members.remove(&id);
        }
        if (stopping || removed) && self.plan.probe.cut_short(&observation) {
            // A stored round is always whole: the latest round of a target never shows 5 of 10.
            counters.cut_short.fetch_add(1, Ordering::Relaxed);
            return ControlFlow::Continue(());
        }
        let name = &self.plan.probe_name;
        hand_over(
            identity,
            name,
            &target,
            Some(address),
            observation,
            out,
            counters,
        )
        .await?;
        let interval = self.plan.interval;
        if let Some(member) = self.members.get_mut(&id).filter(|_| !stopping) {
            let (next, skipped) = next_due(member.due, interval, Instant::now());
            if skipped > 0 {
                counters.skipped_ticks.fetch_add(skipped, Ordering::Relaxed);
                tracing::debug!(probe = %name, target = %target.name, skipped, "run overran its interval; skipping ticks");
            }
            member.due = next;
            member.start_at = next + jitter(interval);
            self.schedule.push(Reverse((member.start_at, id)));
        }
        ControlFlow::Continue(())
    }
}
