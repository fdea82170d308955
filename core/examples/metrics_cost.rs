//! The cost of the replica's metrics: one encode of the engine-side registry (what a scrape of
//! `/metrics` pays, besides the transport's part) and one histogram observation (what the driver
//! pays per timed event). A measurement, not a test.
//!
//! `cargo run --release -p smr-core --example metrics_cost`

use std::sync::Arc;

use prometheus_client::registry::Registry;
use smr_core::metrics::ReplicaMetrics;

fn main() {
    let metrics = Arc::new(ReplicaMetrics::default());
    for reason in ["bad_signature", "stale_regency", "malformed"] {
        metrics.count_rejection(reason);
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics.clone()));
    let rounds = 2000;
    let started = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        bytes = out.len();
    }
    println!(
        "encode: {:.1} us for {bytes} bytes",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    let observations = 1_000_000u64;
    let started = std::time::Instant::now();
    for i in 0..observations {
        metrics.request_latency.observe(i * 1000);
    }
    println!(
        "histogram observe: {:.1} ns",
        started.elapsed().as_secs_f64() * 1e9 / observations as f64
    );
}
