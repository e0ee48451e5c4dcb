//! Build a lab, optionally delay on r2, print the namespace names, and hold it until stdin closes.
//! For poking at the lab by hand: `cargo run -p lab --example hold [delay_ms]`.
use std::io::Read;
use std::time::Duration;

fn main() {
    let mut lab = lab::Lab::routed();
    if let Some(ms) = std::env::args().nth(1) {
        let ms: u64 = ms.parse().expect("delay in ms");
        lab.inject_delay(lab::Router::R2, Duration::from_millis(ms));
    }
    for ns in [
        lab.agent(),
        lab.router(lab::Router::R1),
        lab.router(lab::Router::R2),
        lab.target(),
    ] {
        println!("{}", ns.name());
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    println!("released {}", lab.delayed_packets(lab::Router::R2));
}
