//! The invariants that hold between any two inputs, checked by [`Engine::check_invariants`]
//! after every input in the simulator, the model checker and debug builds.

use super::Engine;

impl Engine {
    /// Checks the invariants that hold between any two inputs. The simulator and the model
    /// checker call it after every input; in debug builds every input ends with it.
    ///
    /// # Panics
    /// If one is broken: the engine's state cannot be trusted any more.
    pub fn check_invariants(&self) {
        // Execution in cid order: nothing at or below `last_executed` is still open, nothing
        // above it is in the log, and the batches at the service are consecutive and executed.
        assert!(
            self.instances
                .first_key_value()
                .is_none_or(|(cid, _)| *cid > self.last_executed),
            "an executed instance is still open"
        );
        assert!(
            self.log
                .last_key_value()
                .is_none_or(|(cid, _)| *cid <= self.last_executed),
            "the log holds a decision that has not executed"
        );
        assert!(
            self.executing
                .iter()
                .zip(self.executing.iter().skip(1))
                .all(|((a, _), (b, _))| *a < *b)
                && self
                    .executing
                    .back()
                    .is_none_or(|(cid, _)| *cid <= self.last_executed),
            "batches at the service are out of cid order"
        );
        // The checkpoint barrier holds execution exactly at the checkpoint's cid.
        if let Some(barrier) = self.checkpoints.barrier {
            assert_eq!(
                barrier, self.last_executed,
                "the checkpoint barrier is not at the last executed cid"
            );
            assert!(
                barrier.is_multiple_of(self.cfg.limits.checkpoint_period),
                "a checkpoint barrier off the checkpoint period"
            );
        }
        assert!(
            self.last_checkpoint() <= self.last_executed,
            "the stable checkpoint is ahead of execution"
        );
        // Regency: this replica's own STOP never asks for less than the regency it is in.
        assert!(
            self.my_stop_target() >= self.regency,
            "this replica's STOP is below its regency"
        );
        for (cid, instance) in &self.instances {
            // One vote per (cid, regency, phase): this replica's votes are for this cid, in the
            // current regency, and in BFT it accepts only the value it wrote.
            for vote in [&instance.my_write, &instance.my_accept]
                .into_iter()
                .flatten()
            {
                assert!(
                    vote.body.cid == *cid
                        && vote.body.regency == self.regency
                        && vote.body.replica == self.me,
                    "a vote of another cid, regency or replica is held as this replica's own"
                );
            }
            if let (Some(write), Some(accept)) = (&instance.my_write, &instance.my_accept) {
                assert_eq!(
                    write.body.digest, accept.body.digest,
                    "accepted a value other than the one written"
                );
            }
            if let Some(own) = instance.my_write.as_ref() {
                assert!(
                    instance
                        .writes
                        .get(&self.me)
                        .is_some_and(|w| w.body.digest == own.body.digest),
                    "own WRITE missing from the instance's WRITEs"
                );
            }
            // A decision is stored under its own cid. (That its certificate is for its own
            // batch is checked once, where it is stored (`decide`, and `check_stored_records`
            // on recovery): hashing every held batch on every input made a debug build
            // replaying a long store spend its time here, too slow to answer its peers.)
            if let Some(decision) = &instance.decided {
                assert!(
                    decision.cid == *cid && decision.certificate.iter().all(|a| a.body.cid == *cid),
                    "a decision stored under another cid"
                );
            }
        }
    }
}
