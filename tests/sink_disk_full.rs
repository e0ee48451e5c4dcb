//! A full disk under the spool: the data directory is a tiny tmpfs (needs root: the test fails, never
//! skips, without it). Probing goes on (offers never block), every loss is counted exactly — the set
//! of points the hand-off refused is exactly the set the store never got — and delivery resumes when
//! space returns.
//!
//! | phase | store | disk |
//! |---|---|---|
//! | 1 (3 s) | up | free |
//! | 2 (6 s) | down (503): the spool must grow | filled to the last byte |
//! | 3 (3 s) | up: the spooled backlog drains | still full |
//! | 4 (4 s) | up | filler removed: new points are spooled and delivered again |

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use support::{Received, ScriptedEndpoint, Tmpfs, lines_of, ping_record};
use vantage::sinks::{OutputConfig, SinkOptions, Sinks};

const RATE_PER_S: u64 = 500;

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test mounts a tmpfs and needs root (scripts/test runs as root)"
    );
}

/// Fill the file system holding `path` with one file until it refuses a byte more.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    let mut size = chunk.len();
    while size > 0 {
        match file.write(&chunk[..size]) {
            Ok(n) => written += n as u64,
            Err(_) => size /= 2,
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_counts_the_loss_exactly_and_delivery_resumes() {
    require_root();
    support::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = Tmpfs::mount(&dir.path().join("data"), "8m");
    let filler = mount.0.join("filler");

    let up = Arc::new(AtomicBool::new(true));
    let server = {
        let up = Arc::clone(&up);
        ScriptedEndpoint::start(Arc::new(move |_, _: &Received| {
            if up.load(Ordering::SeqCst) {
                (204, vec![], String::new())
            } else {
                (503, vec![], "down".into())
            }
        }))
        .await
    };
    let mut output = OutputConfig::influxdb_v2("scripted", &server.url, "org", "bucket", None);
    output.flush_interval = Duration::from_millis(100);
    output.retry_initial = Duration::from_millis(100);
    output.retry_max = Duration::from_millis(500);
    let mut options = SinkOptions::new("test-agent", "lab");
    options.self_metrics_every = None;
    options.queue_capacity = 200;
    let sinks = Sinks::start(&mount.0.join("spool"), vec![output], options).expect("start");

    // The "probes": 500 records/s on their own thread, recording which offers were refused.
    let phase = Arc::new(AtomicU8::new(1));
    let produced: Arc<Mutex<Vec<(u8, String, bool)>>> = Arc::default();
    let producer = {
        let (handle, phase, produced) = (sinks.handle(), Arc::clone(&phase), Arc::clone(&produced));
        std::thread::spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / RATE_PER_S);
            let base = SystemTime::now();
            let (mut next, mut seq, mut slowest) = (Instant::now(), 0u64, Duration::ZERO);
            while phase.load(Ordering::SeqCst) <= 4 {
                let record = ping_record(
                    &format!("t{}", seq % 20),
                    base + Duration::from_micros(seq * 1000),
                    seq,
                );
                let start = Instant::now();
                let queued = handle.offer(&record);
                slowest = slowest.max(start.elapsed());
                let line = lines_of(&record).remove(0);
                produced.lock().expect("produced").push((
                    phase.load(Ordering::SeqCst),
                    line,
                    queued,
                ));
                seq += 1;
                next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            slowest
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    up.store(false, Ordering::SeqCst);
    phase.store(2, Ordering::SeqCst);
    let filled = fill(&filler);
    eprintln!("disk full: filler of {filled} bytes");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let errors_while_full = sinks.write_errors();
    let (_, dropped_while_full) = sinks.offered();
    up.store(true, Ordering::SeqCst);
    phase.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&filler).expect("remove filler");
    phase.store(4, Ordering::SeqCst);
    let space_back = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    phase.store(5, Ordering::SeqCst);
    let slowest = producer.join().expect("producer thread");

    let (offered, dropped) = sinks.offered();
    support::wait_for("the spool drained", Duration::from_secs(60), || {
        let s = sinks.stats().remove(0);
        async move { s.spool_points == 0 && s.delivered == s.accepted }
    })
    .await;
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    let produced = produced.lock().expect("produced").clone();
    eprintln!(
        "offered {offered}, dropped {dropped} ({dropped_while_full} while the disk was full, {errors_while_full} refused spool writes), delivered {}, slowest offer {slowest:?}",
        stats.delivered
    );

    // Probing went on at full rate, never blocked.
    assert_eq!(produced.len() as u64, offered);
    assert!(
        offered as f64 >= 0.9 * RATE_PER_S as f64 * 16.0,
        "only {offered} offered"
    );
    assert!(
        slowest < Duration::from_millis(250),
        "an offer blocked for {slowest:?}"
    );
    // The disk really refused writes, and results were lost to it.
    assert!(errors_while_full > 0, "the spool never hit the full disk");
    assert!(
        dropped_while_full > 0,
        "nothing was dropped: the test proves nothing"
    );
    // Counted exactly: the refused offers are exactly the points the store never got.
    let refused: Vec<&String> = produced.iter().filter(|p| !p.2).map(|p| &p.1).collect();
    let wanted: Vec<&String> = produced.iter().filter(|p| p.2).map(|p| &p.1).collect();
    assert_eq!(refused.len() as u64, dropped);
    assert_eq!(stats.dropped_unspooled, dropped);
    assert_eq!(stats.dropped_spool_full, 0);
    let accepted = server.accepted_lines();
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "a point was delivered twice");
    assert_eq!(
        unique,
        wanted.iter().copied().collect::<HashSet<_>>(),
        "the store holds exactly the points that were not counted as dropped"
    );
    assert_eq!(stats.delivered, accepted.len() as u64);
    assert_eq!(stats.delivered + dropped, offered);
    // Delivery resumed when space returned: points offered after it arrived.
    let after: Vec<&(u8, String, bool)> = produced.iter().filter(|p| p.0 == 4).collect();
    assert!(after.len() as u64 > 2 * RATE_PER_S);
    assert!(
        after
            .iter()
            .rev()
            .take(100)
            .all(|p| p.2 && unique.contains(&p.1)),
        "the newest points, offered {:?} after space returned, were delivered",
        space_back.elapsed()
    );
}
