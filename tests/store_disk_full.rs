//! Issue 11: with a full disk at SIGINT, the store writer gave up on the observations it held
//! ("shutting down with 3429 observations the store refused"). The data directory here is a small
//! tmpfs (needs root: the test fails, never skips, without it), filled to the last byte while
//! the writer runs; at shutdown every observation it was given must be in the store.

mod support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use support::{Tmpfs, ping_record};
use vantage::store::{DEFAULT_RETENTION, Retention, Store, writer};

/// Fill the file system holding `path` with one file until it refuses a byte more.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut size = chunk.len();
    while size > 0 {
        if file.write(&chunk[..size]).is_err() {
            size /= 2;
        }
    }
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_at_shutdown_loses_no_observation() {
    const BEFORE: u64 = 500;
    const DURING: u64 = 3_500;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "48m");
    let store = Store::open(&data).expect("store");
    let (tx, rx) = tokio::sync::mpsc::channel(16_384);
    let retention = Retention {
        raw: Duration::from_secs(86_400),
        ..DEFAULT_RETENTION
    };
    let writing = writer::spawn(store, rx, retention);
    let t0 = SystemTime::now() - Duration::from_secs(3_600);
    let record = |seq: u64| {
        std::sync::Arc::new(ping_record(
            &format!("t{}", seq % 16),
            t0 + Duration::from_millis(seq),
            seq,
        ))
    };
    for seq in 0..BEFORE {
        tx.blocking_send(record(seq)).expect("send");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        data.join(writer::RESERVE_FILE).exists(),
        "the writer holds space back"
    );

    // The disk fills up; the agent goes on measuring, then is stopped.
    fill(&data.join("filler"));
    for seq in BEFORE..BEFORE + DURING {
        tx.blocking_send(record(seq)).expect("send");
    }
    std::thread::sleep(Duration::from_millis(1500));
    drop(tx);
    let stored = writing
        .join()
        .expect("no panic")
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(stored, BEFORE + DURING);
    let rows = Store::open(&data).expect("store").count().expect("count");
    assert_eq!(rows, BEFORE + DURING, "every observation is in the store");
}
