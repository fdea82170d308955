//! The driver contract, implemented once.
//!
//! Everything that carries out an engine's [`Output`] (the tokio driver in [`crate::driver`],
//! the seeded simulator and the model checker in core's tests) does it through [`perform`], and
//! supplies only what differs between them through [`Host`]: where records are stored, how a
//! message travels, and whether the service runs inline or on its own thread. So a bug in the
//! order of persisting, syncing, sending and executing shows up in every test layer, or in none.

use crate::engine::{Engine, Output, PersistRecord, ServiceDone, ServiceWork};
use crate::message::Message;
use crate::network::Peer;
use crate::rejection::Rejection;

/// What a driver provides to carry out an engine's output.
pub trait Host {
    /// The engine whose output is performed; also fed what an inline service produces.
    fn engine(&mut self) -> &mut Engine;

    /// Appends `record` to the store. It need not be durable until [`Host::sync`] returns.
    fn append(&mut self, record: PersistRecord);

    /// Makes every appended record durable. Called once per output that appended anything,
    /// before any message that may promise what was appended leaves.
    fn sync(&mut self);

    /// Sends `message` to each of `to` (a single peer, or every other replica for a broadcast).
    fn send(&mut self, to: &[Peer], message: Message);

    /// Hands `work` to the service. A host that runs the service inline returns what it
    /// produced, and [`perform`] feeds it back to the engine at once; a host whose service runs
    /// elsewhere returns `None` and later calls [`Engine::on_service_done`] itself, performing
    /// its output like any other.
    fn service(&mut self, work: ServiceWork) -> Option<ServiceDone>;

    /// Counts and logs a rejection reported beside an output.
    fn rejected(&mut self, rejection: &Rejection) {
        let _ = rejection;
    }

    /// Whether the host has stopped (a crashed replica in a simulation, or a storage failure
    /// in the tokio driver): nothing more of the output is performed.
    fn stopped(&self) -> bool {
        false
    }
}

/// Performs `output`, and the output of whatever an inline service hands back, in the order
/// the engine's driving loop requires (see [`crate::engine`]): the rejections are counted;
/// then the messages that may leave at once; every record, then one sync; the messages that
/// wait for them; the service's work.
pub fn perform<H: Host>(host: &mut H, now_ms: u64, output: Output) {
    let mut pending = std::collections::VecDeque::from([output]);
    while let Some(output) = pending.pop_front() {
        let Output {
            send_now,
            persist,
            send_after_persist,
            service,
            rejections,
        } = output;
        for rejection in &rejections {
            host.rejected(rejection);
        }
        let (me, n) = {
            let engine = host.engine();
            (engine.id(), engine.quorums().n())
        };
        for outgoing in send_now {
            if host.stopped() {
                return;
            }
            let (to, message) = outgoing.into_parts(me, n);
            host.send(&to, message);
        }
        if !persist.is_empty() {
            for record in persist {
                if host.stopped() {
                    return;
                }
                host.append(record);
            }
            host.sync();
        }
        for outgoing in send_after_persist {
            if host.stopped() {
                return;
            }
            let (to, message) = outgoing.into_parts(me, n);
            host.send(&to, message);
        }
        for work in service {
            if host.stopped() {
                return;
            }
            if let Some(done) = host.service(work) {
                let more = host.engine().on_service_done(now_ms, done);
                pending.push_back(more);
            }
        }
    }
}
