//! The store's writer thread: batches records into transactions, enforces retention, and holds
//! records in memory (bounded, counted) while the disk refuses them rather than losing them at once.

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::Store;
use crate::record::Record;

/// Records per transaction.
const BATCH: usize = 2_000;
/// Records held while inserts fail (e.g. disk full); beyond this the oldest are dropped and counted.
const MAX_PENDING: usize = 200_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// At shutdown, stop retrying a store that keeps refusing writes after this many attempts.
const GIVE_UP_AT_SHUTDOWN: u32 = 5;

/// Start the writer; it returns the number of records stored once every sender is dropped and
/// the queue is drained.
pub fn spawn(
    store: Store,
    rx: mpsc::Receiver<Record>,
    retention: Duration,
) -> JoinHandle<anyhow::Result<u64>> {
    spawn_with_tap(store, rx, retention, Box::new(drop))
}

/// Where each record goes once it is stored, in order, on the writer's thread. What it does when
/// its consumer is behind (wait, drop and count) is the caller's choice: the agent's rules tap.
pub type Tap = Box<dyn FnMut(Record) + Send>;

/// As [`spawn`], and every record, once stored, is given to `tap` (the rules engine), so that
/// what the rules see is already in the store for the evidence.
pub fn spawn_with_tap(
    store: Store,
    rx: mpsc::Receiver<Record>,
    retention: Duration,
    tap: Tap,
) -> JoinHandle<anyhow::Result<u64>> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || write_loop(store, rx, retention, tap))
        .expect("spawning a thread only fails when the process is out of resources")
}

fn write_loop(
    mut store: Store,
    mut rx: mpsc::Receiver<Record>,
    retention: Duration,
    mut tap: Tap,
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<Record> = VecDeque::new();
    let (mut stored, mut dropped) = (0u64, 0u64);
    let mut last_prune = Instant::now();
    prune(&mut store, retention);
    let mut open = true;
    let mut failures_in_a_row = 0;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(record) => pending.push_back(record),
                None => break,
            }
        }
        while pending.len() < BATCH {
            match rx.try_recv() {
                Ok(record) => pending.push_back(record),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let batch = pending.len().min(BATCH);
        match store.insert(&pending.make_contiguous()[..batch]) {
            Ok(()) => {
                pending.drain(..batch).for_each(&mut tap);
                stored += batch as u64;
                failures_in_a_row = 0;
            }
            Err(error) if !open && failures_in_a_row >= GIVE_UP_AT_SHUTDOWN => {
                anyhow::bail!(
                    "shutting down with {} observations the store refused ({error:#}); {stored} stored, {dropped} dropped earlier",
                    pending.len()
                );
            }
            Err(error) => {
                failures_in_a_row += 1;
                tracing::error!(error = %format!("{error:#}"), pending = pending.len(), store = %store.path().display(), "cannot write observations; holding them and retrying");
                std::thread::sleep(RETRY_EVERY);
                // Keep draining the queue so probing never stalls, within a bounded backlog.
                while let Ok(record) = rx.try_recv() {
                    pending.push_back(record);
                }
                while pending.len() > MAX_PENDING {
                    pending.pop_front();
                    dropped += 1;
                }
                if dropped > 0 {
                    tracing::error!(
                        dropped,
                        "store backlog full: dropped the oldest observations"
                    );
                }
                if rx.is_closed() && rx.is_empty() {
                    open = false;
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            prune(&mut store, retention);
            last_prune = Instant::now();
        }
    }
    Ok(stored)
}

fn prune(store: &mut Store, retention: Duration) {
    match store.prune(retention, SystemTime::now()) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, ?retention, "retention: removed old observations"),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "retention: prune failed; will retry")
        }
    }
}
