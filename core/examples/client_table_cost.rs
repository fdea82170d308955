//! What the client table costs per executed request: 32 sessions (the fixed benchmark's
//! clients) each executing its next seq in turn, with an 8-byte reply, under the default
//! limits. Prints the wall-clock nanoseconds per request; for a figure that does not move
//! with the machine's load, count instructions (BENCHMARKS.md, "Instruction counts per op"):
//!
//! ```sh
//! cargo build --release -p smr-core --example client_table_cost
//! valgrind --tool=callgrind target/release/examples/client_table_cost 200000
//! valgrind --tool=callgrind target/release/examples/client_table_cost 400000
//! # instructions per request = (second total - first total) / 200000
//! ```
use smr_core::clients::{Admission, ClientLimits, ClientTable};
use smr_core::message::{Cid, RequestId};
use smr_crypto::PublicKey;

fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000)
        .max(1);
    let mut table = ClientTable::bounded(ClientLimits::default());
    let sessions: Vec<(PublicKey, u64)> = (0..32u8)
        .map(|i| {
            let key = PublicKey([i; 32]);
            let tag = (1 << 63) + u64::from(i);
            let session = table.open_session(key, tag, Cid(1)).expect("room");
            (key, session)
        })
        .collect();
    let mut seqs = vec![0u64; sessions.len()];
    let started = std::time::Instant::now();
    for i in 0..requests {
        let turn = (i % sessions.len() as u64) as usize;
        seqs[turn] += 1;
        let (client, session) = sessions[turn];
        let id = RequestId {
            client,
            session,
            seq: seqs[turn],
        };
        let admission = table.mark_executing(&id, Cid(2 + i / 32));
        assert!(matches!(admission, Admission::Execute { .. }));
        table.record_reply(&id, vec![7u8; 8]);
    }
    println!(
        "{} ns per request ({} requests, {} sessions, {} reply bytes cached)",
        started.elapsed().as_nanos() / u128::from(requests),
        requests,
        table.client_count(),
        table.reply_bytes()
    );
}
