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

    /// Makes every appended record durable before anything performed after it: called once
    /// per output that appended anything, before any message that may promise what was
    /// appended leaves. A host may return before the records are durable if it then holds
    /// every later send and piece of service work, of this output and the ones after it, in
    /// order, until they are ([`GroupCommit`]; the tokio driver does this).
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

/// Group commit for a host whose syncs complete later than they are asked for (the tokio
/// driver runs each fsync on a blocking thread while its engine goes on).
///
/// [`Host::sync`] may return before the records are durable only if everything the output
/// does after it waits: every later send and every later piece of service work, of this output
/// and of every output after it, leaves in order once the records appended before it are
/// durable. The gate does that bookkeeping, and nothing else: `A` is whatever the host holds
/// (a frame to send, a command for the service). Seen from outside, the replica then behaves
/// as one that synced at once and whose sends after a crash were lost in the network; the
/// engine, computing ahead, never learns the difference (docs/design.md §3.12, "Group commit").
///
/// Syncs are numbered from 1 in the order asked for; an fsync numbered `k` covers every record
/// appended before sync `k` was asked for. At most one fsync runs at a time, and the next one
/// covers every sync asked for while it ran: one fsync per disk round trip, however many
/// outputs appended meanwhile.
#[derive(Debug)]
pub struct GroupCommit<A> {
    /// Syncs asked for so far.
    asked: u64,
    /// Every record appended before sync `durable` was asked for is durable.
    durable: u64,
    /// The fsync running, by the highest sync number it covers.
    running: Option<u64>,
    /// Actions that wait, in order, each with the sync it waits for and its weight in bytes.
    held: std::collections::VecDeque<(u64, usize, A)>,
    /// The weights of `held`, summed exactly: a `u128` cannot overflow on the sum of as many
    /// `usize` weights as memory can hold actions, so freeing subtracts exactly what holding
    /// added (a saturated `usize` total would be lowered below what is still held, or past 0).
    held_bytes: u128,
}

impl<A> Default for GroupCommit<A> {
    fn default() -> Self {
        GroupCommit {
            asked: 0,
            durable: 0,
            running: None,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
        }
    }
}

impl<A> GroupCommit<A> {
    /// A sync is asked for: every record appended so far is to become durable before any
    /// later action. The number of the fsync to start now, or `None` while one runs (the next
    /// one, started when it ends, covers this sync).
    pub fn ask(&mut self) -> Option<u64> {
        self.asked += 1;
        if self.running.is_some() {
            return None;
        }
        self.running = Some(self.asked);
        self.running
    }

    /// Whether an action must wait: a sync asked for is not durable yet.
    pub fn must_wait(&self) -> bool {
        self.durable < self.asked
    }

    /// Holds `action`, weighing `bytes`, until the syncs asked for so far are durable, behind
    /// every action held before it.
    ///
    /// # Panics
    /// If nothing is to be waited for ([`GroupCommit::must_wait`]; a host bug: the action
    /// would be held for ever).
    pub fn hold(&mut self, action: A, bytes: usize) {
        assert!(self.must_wait(), "held an action with no sync to wait for");
        self.held.push_back((self.asked, bytes, action));
        self.held_bytes += bytes as u128;
    }

    /// The fsync numbered `number` ended well: the actions it frees, in order, and the number
    /// of the fsync to start next (covering every sync asked for while it ran), if any.
    ///
    /// # Panics
    /// If no fsync numbered `number` runs (a host bug).
    pub fn completed(&mut self, number: u64) -> (Vec<A>, Option<u64>) {
        assert_eq!(
            self.running,
            Some(number),
            "completed an fsync that does not run"
        );
        self.running = None;
        self.durable = self.durable.max(number);
        let freed = self.free();
        if self.asked > self.durable {
            self.running = Some(self.asked);
        }
        (freed, self.running)
    }

    /// Every record appended so far became durable another way (a checkpoint wrote and synced
    /// a new log holding every record that must survive): frees every held action, in order.
    /// An fsync that runs still ends with [`GroupCommit::completed`].
    pub fn all_durable(&mut self) -> Vec<A> {
        self.durable = self.asked;
        self.free()
    }

    fn free(&mut self) -> Vec<A> {
        let mut freed = Vec::new();
        while let Some((waits_for, bytes, _)) = self.held.front() {
            if *waits_for > self.durable {
                break;
            }
            self.held_bytes -= *bytes as u128;
            freed.push(self.held.pop_front().expect("front exists").2);
        }
        freed
    }

    /// Actions held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes of the actions held, as weighed by [`GroupCommit::hold`]; `usize::MAX` while
    /// their sum exceeds it.
    pub fn held_bytes(&self) -> usize {
        usize::try_from(self.held_bytes).unwrap_or(usize::MAX)
    }

    /// Whether an fsync runs.
    pub fn running(&self) -> Option<u64> {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::GroupCommit;

    /// What a host does with an action: holds it if it must wait, otherwise does it now.
    fn pass(
        gate: &mut GroupCommit<&'static str>,
        action: &'static str,
        bytes: usize,
    ) -> Option<&'static str> {
        if gate.must_wait() {
            gate.hold(action, bytes);
            None
        } else {
            Some(action)
        }
    }

    #[test]
    fn actions_after_a_sync_wait_for_it_in_order_and_one_fsync_covers_the_syncs_asked_meanwhile() {
        let mut gate = GroupCommit::default();
        // Nothing asked: everything passes.
        assert_eq!(pass(&mut gate, "a", 1), Some("a"));
        assert_eq!(gate.ask(), Some(1));
        assert_eq!(pass(&mut gate, "b", 10), None);
        // Asked while fsync 1 runs: covered by the next one.
        assert_eq!(gate.ask(), None);
        assert_eq!(pass(&mut gate, "c", 100), None);
        assert_eq!(gate.ask(), None);
        assert_eq!(pass(&mut gate, "d", 1000), None);
        assert_eq!((gate.held(), gate.held_bytes()), (3, 1110));
        // Fsync 1 frees what waited for sync 1 only, and fsync 3 starts for syncs 2 and 3.
        assert_eq!(gate.completed(1), (vec!["b"], Some(3)));
        assert_eq!(pass(&mut gate, "e", 1), None);
        assert_eq!(gate.completed(3), (vec!["c", "d", "e"], None));
        assert_eq!(
            (gate.held(), gate.held_bytes(), gate.running()),
            (0, 0, None)
        );
        assert_eq!(pass(&mut gate, "f", 1), Some("f"));
    }

    #[test]
    fn a_checkpoint_frees_every_held_action_and_the_running_fsync_still_ends() {
        let mut gate = GroupCommit::default();
        assert_eq!(gate.ask(), Some(1));
        assert_eq!(pass(&mut gate, "a", 1), None);
        assert_eq!(gate.ask(), None);
        assert_eq!(pass(&mut gate, "b", 1), None);
        assert_eq!(gate.all_durable(), vec!["a", "b"]);
        assert_eq!(pass(&mut gate, "c", 1), Some("c"));
        // The fsync that ran ends; nothing is left to cover.
        assert_eq!(gate.completed(1), (vec![], None));
        assert_eq!(gate.ask(), Some(3));
        assert_eq!(pass(&mut gate, "d", 1), None);
        assert_eq!(gate.completed(3), (vec!["d"], None));
    }

    /// Held weights past `usize::MAX` in sum: the total saturated on `hold` and was then
    /// lowered by each freed action's exact weight, so freeing the second action subtracted
    /// past 0 (an overflow panic in a debug build; in a release build a total near
    /// `usize::MAX` that held every later action at the bound). The total is exact, and read
    /// as `usize::MAX` while it exceeds it.
    #[test]
    fn held_weights_beyond_usize_in_sum_are_freed_without_overflow() {
        let mut gate = GroupCommit::default();
        assert_eq!(gate.ask(), Some(1));
        assert_eq!(pass(&mut gate, "a", usize::MAX), None);
        assert_eq!(pass(&mut gate, "b", 10), None);
        assert_eq!((gate.held(), gate.held_bytes()), (2, usize::MAX));
        assert_eq!(gate.ask(), None);
        assert_eq!(pass(&mut gate, "c", 5), None);
        assert_eq!(gate.completed(1), (vec!["a", "b"], Some(2)));
        assert_eq!((gate.held(), gate.held_bytes()), (1, 5));
        assert_eq!(gate.completed(2), (vec!["c"], None));
        assert_eq!((gate.held(), gate.held_bytes()), (0, 0));
    }

    #[test]
    #[should_panic(expected = "completed an fsync that does not run")]
    fn completing_an_fsync_that_does_not_run_is_a_host_bug() {
        let mut gate = GroupCommit::<()>::default();
        assert_eq!(gate.ask(), Some(1));
        gate.completed(2);
    }

    #[test]
    #[should_panic(expected = "held an action with no sync to wait for")]
    fn holding_an_action_with_nothing_to_wait_for_is_a_host_bug() {
        let mut gate = GroupCommit::default();
        gate.hold((), 1);
    }
}
