//! What the verified-request cache (`VerifiedRequests`) costs per request on the fixed
//! benchmark's path: each request is inserted once (its direct copy, authenticated by its
//! client's channel) and looked up once (its copy in the leader's PROPOSE, a few requests
//! later), by 32 clients in turn, in a cache of the driver's largest size (8192 entries), kept
//! full so that every insert also evicts. Prints wall-clock nanoseconds per insert+lookup; for
//! a figure that does not move with the machine's load, count instructions:
//!
//! ```sh
//! cargo build --release -p smr-core --example verified_cache_cost
//! valgrind --tool=callgrind target/release/examples/verified_cache_cost 200000
//! valgrind --tool=callgrind target/release/examples/verified_cache_cost 400000
//! # instructions per request = (second total - first total) / 200000
//! ```
use smr_core::VerifiedRequests;
use smr_crypto::PublicKey;

/// The driver's largest cache (`MAX_VERIFIED_REQUESTS`).
const CAPACITY: usize = 1 << 13;
const CLIENTS: u64 = 32;
/// How far behind its insert a request's PROPOSE copy is looked up (32 clients x 8 in flight).
const LAG: u64 = 256;

/// A request key as the verifier makes them: a blake3 hash.
fn key(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(2_000_000)
        .max(1);
    let clients: Vec<PublicKey> = (0..CLIENTS as u8).map(|i| PublicKey([i; 32])).collect();
    let cache = VerifiedRequests::new(CAPACITY);
    // Full before the measurement: every insert below evicts.
    let warm = CAPACITY as u64 * 2;
    for i in 0..warm {
        cache.insert(key(i), clients[(i % CLIENTS) as usize], false);
    }
    // The keys are hashed before the clock starts: only the cache is measured.
    let keys: Vec<[u8; 32]> = (warm..warm + requests).map(key).collect();
    let mut found = 0u64;
    let started = std::time::Instant::now();
    for (i, k) in (0u64..).zip(&keys) {
        cache.insert(*k, clients[(i % CLIENTS) as usize], false);
        let behind = i.saturating_sub(LAG) as usize;
        if cache.lookup(&keys[behind]).is_some() {
            found += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(found, requests, "every PROPOSE copy is found");
    println!(
        "{} ns per insert+lookup ({} requests, {} clients, {} entries held)",
        elapsed.as_nanos() / u128::from(requests),
        requests,
        CLIENTS,
        cache.len()
    );
}
