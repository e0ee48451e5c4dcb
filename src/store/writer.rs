//! The store's writer thread: batches records into transactions, enforces retention, and holds
//! records in memory (bounded, counted) while the disk refuses them rather than losing them at once.
//!
//! Rounds finish spread over their interval (10,000 targets every 20 s: one every 2 ms), so what
//! is queued when a record arrives is usually that one record. The writer waits up to [`LINGER`]
//! after the first record of a batch for more, so that one transaction, one pass of the rollups
//! and one hand-off to the tap take hundreds of records instead of one each.
//!
//! At shutdown nothing held may be lost to a full disk: the writer keeps [`RESERVE_BYTES`] of the
//! data directory's file system in a file of its own (`vantage.db-reserve`), and when the store
//! refuses the last records at shutdown it deletes that file and writes them into the space it
//! frees. Only what still does not fit is lost, counted exactly in the error.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::{Retention, Store};
use crate::record::{Record, linger_for_more};

/// Records per transaction.
const BATCH: usize = 2_000;
/// How long the first record of a batch waits for more before the batch is written (see the
/// module docs); the queue is checked every 50 ms meanwhile ([`linger_for_more`]), so a full
/// batch or the end of the input is written at once.
pub const LINGER: Duration = Duration::from_millis(250);
/// Records held while inserts fail (e.g. disk full); beyond this the oldest are dropped and counted.
const MAX_PENDING: usize = 200_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// At shutdown, stop retrying a store that keeps refusing writes after this many attempts, this
/// far apart (the agent exits within a couple of seconds).
const GIVE_UP_AT_SHUTDOWN: u32 = 5;
const RETRY_AT_SHUTDOWN: Duration = Duration::from_millis(200);
/// Disk space held back for the records in memory at shutdown: about 16,000 ping rounds.
pub const RESERVE_BYTES: usize = 16 << 20;

/// The space held back (see the module docs).
struct Reserve {
    path: PathBuf,
    held: bool,
}

impl Reserve {
    /// Hold [`RESERVE_BYTES`] next to `store` (written out, not sparse, so the space is taken).
    fn hold(store: &Path) -> Reserve {
        let path = store.with_file_name(RESERVE_FILE);
        let held = std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES as u64)
            || std::fs::File::create(&path)
                .and_then(|mut file| {
                    file.write_all(&vec![0u8; RESERVE_BYTES])?;
                    file.sync_all()
                })
                .inspect_err(|error| {
                    let _ = std::fs::remove_file(&path);
                    tracing::warn!(%error, path = %path.display(), bytes = RESERVE_BYTES, "cannot hold disk space back for the last write at shutdown; with a full disk then, observations in memory would be lost");
                })
                .is_ok();
        Reserve { path, held }
    }

    /// Give the space back to the file system; false if there was none to give.
    fn release(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(path = %self.path.display(), bytes = RESERVE_BYTES, "the disk is full at shutdown: released the space held back for this last write");
                true
            }
            Err(error) => {
                tracing::error!(%error, path = %self.path.display(), "cannot release the space held back");
                false
            }
        }
    }
}

/// Next to `vantage.db`.
pub const RESERVE_FILE: &str = "vantage.db-reserve";

/// Start the writer; it returns the number of records stored once every sender is dropped and
/// the queue is drained.
pub fn spawn(
    store: Store,
    rx: mpsc::Receiver<Arc<Record>>,
    retention: Retention,
) -> JoinHandle<anyhow::Result<u64>> {
    spawn_with_tap(store, rx, retention, Box::new(|batch| batch.for_each(drop)))
}

/// Where the records of each transaction go once it is committed, in order, on the writer's
/// thread: one call per batch. What it does when its consumer is behind (wait, drop and count) is
/// the caller's choice: the agent's rules tap.
pub type Tap = Box<dyn FnMut(&mut dyn Iterator<Item = Arc<Record>>) + Send>;

/// As [`spawn`], and every record, once stored, is given to `tap` (the rules engine), so that
/// what the rules see is already in the store for the evidence.
pub fn spawn_with_tap(
    store: Store,
    rx: mpsc::Receiver<Arc<Record>>,
    retention: Retention,
    tap: Tap,
) -> JoinHandle<anyhow::Result<u64>> {
    spawn_lingering(store, rx, retention, tap, LINGER)
}

fn spawn_lingering(
    store: Store,
    rx: mpsc::Receiver<Arc<Record>>,
    retention: Retention,
    tap: Tap,
    linger: Duration,
) -> JoinHandle<anyhow::Result<u64>> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || write_loop(store, rx, retention, tap, linger))
        .expect("spawning a thread only fails when the process is out of resources")
}

fn write_loop(
    mut store: Store,
    mut rx: mpsc::Receiver<Arc<Record>>,
    retention: Retention,
    mut tap: Tap,
    linger: Duration,
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<Arc<Record>> = VecDeque::new();
    let (mut stored, mut dropped) = (0u64, 0u64);
    let mut last_prune = Instant::now();
    prune(&mut store, &retention);
    let mut open = true;
    let mut failures_in_a_row = 0;
    let mut reserve = Reserve::hold(store.path());
    while open || !pending.is_empty() {
        let mut linger_until = None;
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(record) => pending.push_back(record),
                None => break,
            }
            linger_until = Some(Instant::now() + linger);
        }
        linger_for_more(linger_until, || {
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
            pending.len() >= BATCH || !open
        });
        let batch = pending.len().min(BATCH);
        match store.insert(&pending.make_contiguous()[..batch]) {
            Ok(()) => {
                tap(&mut pending.drain(..batch));
                stored += batch as u64;
                failures_in_a_row = 0;
            }
            // Shutting down: no more records will come; make room for these and try again.
            Err(_) if !open && reserve.release() => {}
            Err(error) if !open && failures_in_a_row >= GIVE_UP_AT_SHUTDOWN => {
                anyhow::bail!(
                    "shutting down: {} observations LOST: the store refused them ({error:#}) and no space held back for this was left to release; {stored} stored, {dropped} dropped earlier while it refused writes; free space in {}",
                    pending.len(),
                    store.path().parent().unwrap_or(store.path()).display()
                );
            }
            Err(error) if !open => {
                failures_in_a_row += 1;
                tracing::error!(error = %format!("{error:#}"), pending = pending.len(), store = %store.path().display(), "shutting down: cannot write the last observations; retrying");
                std::thread::sleep(RETRY_AT_SHUTDOWN);
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
            prune(&mut store, &retention);
            last_prune = Instant::now();
        }
    }
    Ok(stored)
}

fn prune(store: &mut Store, retention: &Retention) {
    match store.prune(retention, SystemTime::now()) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, ?retention, "retention: removed old observations"),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "retention: prune failed; will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn round(n: usize) -> Arc<Record> {
        Arc::new(Record::test_round(&format!("t{n}")))
    }

    #[test]
    fn rounds_arriving_a_few_ms_apart_are_committed_in_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let (tx, rx) = mpsc::channel(100);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        let tap: Tap = Box::new(move |batch| seen.lock().expect("batches").push(batch.count()));
        // A linger far longer than the sends take even on a loaded machine: what is tested is
        // that the writer waits for more, not how long.
        let writer = spawn_lingering(store, rx, Retention::default(), tap, Duration::from_secs(2));
        let stored = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while batches.lock().expect("batches").iter().sum::<usize>() < n
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // One round first, so that the writer is up and waiting (its start-up work is not what
        // gathers the next ones).
        tx.blocking_send(round(0)).expect("send");
        stored(1);
        // 20 rounds, 5 ms apart, as rounds of staggered targets arrive. The queue stays open
        // afterwards: no shutdown flush to hide behind.
        for n in 1..=20 {
            tx.blocking_send(round(n)).expect("send");
            std::thread::sleep(Duration::from_millis(5));
        }
        stored(21);
        assert_eq!(
            *batches.lock().expect("batches"),
            vec![1, 20],
            "one commit of all 20"
        );
        drop(tx);
        assert_eq!(writer.join().expect("writer").expect("stored"), 21);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.latest_pings().expect("latest").len(), 21);
    }
}
