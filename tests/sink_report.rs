//! `vantage report` shows a "delivery" section per output from the spool.

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime};

use vantage::sinks::Spool;
use vantage::store::Store;

#[test]
fn report_shows_delivery_per_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = SystemTime::now();
    Store::open(dir.path())
        .expect("store")
        .insert(&[support::ping_record("sjc1", now, 0)])
        .expect("insert");
    let mut spool = Spool::open(dir.path()).expect("spool");
    let (vm, influx) = (
        spool.output_id("vm").expect("vm"),
        spool.output_id("influx").expect("influx"),
    );
    let ts = |ago: u64| probes::unix_ns(now - Duration::from_secs(ago));
    let points: Vec<(i64, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                ts(600 - i),
                format!("ping sent=1i {}", ts(600 - i)).into_bytes(),
            )
        })
        .collect();
    spool.append(&[vm, influx], &points, 2).expect("append");
    let oldest = spool.oldest(influx, 7).expect("oldest");
    spool.remove_delivered(influx, &oldest).expect("delivered");
    spool
        .record_error(vm, "error sending request: Connection refused")
        .expect("error");
    drop(spool);

    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["report", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run vantage report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let section = text
        .split("\ndelivery (")
        .nth(1)
        .expect("a delivery section");
    let lines: Vec<&str> = section.lines().collect();
    assert!(lines[1].starts_with("OUTPUT"), "{section}");
    let influx_row: Vec<&str> = lines[2].split_whitespace().collect();
    let vm_row: Vec<&str> = lines[3].split_whitespace().collect();
    // OUTPUT PENDING BYTES OLDEST DELIVERED DROPPED DEAD
    assert_eq!(influx_row[0], "influx");
    assert_eq!(influx_row[1], "3");
    assert_eq!(vm_row[0], "vm");
    assert_eq!(vm_row[1], "10");
    assert!(
        lines[3].contains("10m"),
        "oldest pending is 10 minutes old: {}",
        lines[3]
    );
    assert!(lines[3].contains("never"), "{}", lines[3]);
    assert!(lines[3].ends_with("error sending request: Connection refused"));
    assert!(lines[2].contains(" 7 "), "delivered: {}", lines[2]);
    assert!(lines[2].contains(" 2 "), "dropped: {}", lines[2]);
}
