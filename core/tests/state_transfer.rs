//! State transfer end to end between engines (docs/design.md §3.11): a wiped replica downloads
//! a checkpoint from peers that hold it, over a deterministic network with a fixed latency,
//! timers fired as they fall due. Issue 17 items 2 and 3.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use common::*;
use smr_core::checkpoint::{Checkpoint, CheckpointData};
use smr_core::clients::ClientTable;
use smr_core::engine::{Outgoing, Output, PersistRecord, ServiceWork};
use smr_core::message::{Batch, Cid, Decision, Message, Regency, VoteKind};
use smr_core::{Engine, Limits, Peer};
use smr_modes::Mode;

/// Replicas 0..n-1 hold `checkpoint` (recovered from it, as from a data dir); replica n-1 starts
/// wiped, with `Engine::rejoin`. Messages take `latency_ms` each way; `drop` may discard a
/// message (from, to) before delivery. Runs until the wiped replica reaches the checkpoint's
/// cid or `limit_ms` passes, and returns the engines and the time it got there, if it did.
struct Net {
    engines: Vec<Engine>,
    /// In flight: (delivery time, sequence) -> (from, to, message).
    queue: BTreeMap<(u64, u64), (u32, u32, Message)>,
    seq: u64,
    latency_ms: u64,
    /// Every checkpoint each replica persisted.
    persisted: Vec<Vec<Checkpoint>>,
    clock: u64,
    /// Extra delay on every StateChunk from replica .0: a slow (Byzantine) source.
    slow_chunks_from: Option<(u32, u64)>,
    /// A Byzantine source: replica .0 answers every StateFetch below offset .1 with a full
    /// chunk of garbage claiming a total length of .2, and is silent beyond .1.
    garbage_chunks_from: Option<(u32, u64, u64)>,
}

impl Net {
    fn new(c: &Cluster, checkpoint: &Checkpoint, latency_ms: u64) -> Net {
        let n = c.quorums.n() as u32;
        let mut net = Net {
            engines: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            latency_ms,
            persisted: vec![Vec::new(); n as usize],
            clock: 0,
            slow_chunks_from: None,
            garbage_chunks_from: None,
        };
        let mut outputs = Vec::new();
        for me in 0..n - 1 {
            let (mut engine, _) = Engine::recover(
                c.cfg(me),
                c.engine_signer(me),
                [PersistRecord::Checkpoint(checkpoint.clone())],
            )
            .expect("recovers from the checkpoint");
            outputs.push(engine.start(0));
            net.engines.push(engine);
        }
        let (mut wiped, out) =
            Engine::rejoin(c.cfg(n - 1), c.engine_signer(n - 1), NonZeroU64::MIN);
        let started = wiped.start(0);
        net.engines.push(wiped);
        for (me, out) in outputs.into_iter().enumerate() {
            net.handle(me as u32, 0, out);
        }
        net.handle(n - 1, 0, out);
        net.handle(n - 1, 0, started);
        net
    }

    fn handle(&mut self, me: u32, now_ms: u64, out: Output) {
        let n = self.engines.len() as u32;
        let mut work: Vec<ServiceWork> = out.service.clone();
        for record in &out.persist {
            if let PersistRecord::Checkpoint(c) = record {
                self.persisted[me as usize].push(c.clone());
            }
        }
        for outgoing in out.messages() {
            let (targets, message): (Vec<u32>, &Message) = match outgoing {
                Outgoing::Send {
                    to: Peer::Replica(to),
                    message,
                } => (vec![*to], message),
                Outgoing::Broadcast(message) => ((0..n).filter(|j| *j != me).collect(), message),
                _ => continue,
            };
            let extra_ms = match (self.slow_chunks_from, message) {
                (Some((slow, delay_ms)), Message::StateChunk { .. }) if slow == me => delay_ms,
                _ => 0,
            };
            for to in targets {
                self.seq += 1;
                self.queue.insert(
                    (now_ms + self.latency_ms + extra_ms, self.seq),
                    (me, to, message.clone()),
                );
            }
        }
        while let Some(next) = work.pop() {
            let out = match next {
                ServiceWork::TakeSnapshot { cid } => {
                    self.engines[me as usize].on_snapshot(now_ms, cid, b"snapshot".to_vec())
                }
                ServiceWork::Execute { cid, items } => self.engines[me as usize].on_executed(
                    now_ms,
                    cid,
                    vec![b"ok".to_vec(); items.len()],
                ),
                _ => continue,
            };
            // `handle` performs the service work this produced (one batch at a time).
            self.handle(me, now_ms, out);
        }
    }

    /// Runs until `done` holds or `limit_ms`; returns the time `done` first held.
    fn run_until(
        &mut self,
        c: &Cluster,
        limit_ms: u64,
        mut drop: impl FnMut(u32, u32, &Message) -> bool,
        done: impl Fn(&Net) -> bool,
    ) -> Option<u64> {
        loop {
            if done(self) {
                return Some(self.now());
            }
            let next_message = self.queue.keys().next().map(|(at, _)| *at);
            let next_timer = self
                .engines
                .iter()
                .filter_map(|e| e.next_deadline_ms())
                .min();
            let now_ms = [next_message, next_timer].into_iter().flatten().min()?;
            if now_ms > limit_ms {
                return None;
            }
            self.clock = now_ms;
            if next_message == Some(now_ms) {
                let (_, (from, to, message)) = self.queue.pop_first().expect("due");
                // These tests measure one transfer of the checkpoint the sources hold. The
                // wiped replica's `Abstaining` would have the leader order empty batches up to
                // its horizon (a window past cid 20), taking newer checkpoints meanwhile
                // (issue 17 item 1): not what is measured here, so it is not delivered.
                if drop(from, to, &message) || matches!(message, Message::Abstaining { .. }) {
                    continue;
                }
                if let (Some((liar, stop, total_len)), Message::StateFetch { cid, offset }) =
                    (self.garbage_chunks_from, &message)
                {
                    if to == liar {
                        if *offset < stop {
                            self.seq += 1;
                            let chunk = Message::StateChunk {
                                cid: *cid,
                                offset: *offset,
                                total_len,
                                bytes: vec![0xAA; c.limits.state_chunk_bytes],
                                decided: None,
                            };
                            self.queue
                                .insert((now_ms + self.latency_ms, self.seq), (liar, from, chunk));
                        }
                        continue;
                    }
                }
                let Ok(verified) = c.verifier.verify_inbound(Peer::Replica(from), message) else {
                    continue;
                };
                let out = self.engines[to as usize].on_message(now_ms, verified);
                self.handle(to, now_ms, out);
            } else {
                for me in 0..self.engines.len() {
                    if self.engines[me]
                        .next_deadline_ms()
                        .is_some_and(|d| d <= now_ms)
                    {
                        let out = self.engines[me].on_timeout(now_ms);
                        self.handle(me as u32, now_ms, out);
                    }
                }
            }
        }
    }

    fn now(&self) -> u64 {
        self.clock
    }
}

/// A checkpoint at `cid` whose service state is `service_bytes` bytes.
fn checkpoint(c: &Cluster, cid: Cid, service_bytes: usize) -> Checkpoint {
    let data = CheckpointData {
        cid,
        service: (0..service_bytes).map(|i| (i % 251) as u8).collect(),
        clients: ClientTable::new(c.limits.max_pending_per_client as u64),
    };
    Checkpoint::new(&data, c.decision_proof(cid, Batch::default().digest()))
}

/// Issue 17 item 2, the operator's example at engine level: kv-like state of 24 values of
/// 65,000 bytes (1.56 MB) in 4 KiB chunks, 381 of them, checkpoint at cid 20. The sources
/// served 256 fetches per second per peer and silently dropped the rest while the requester
/// fetched as fast as chunks arrived (a 2 ms round trip here: 500 a second); after 2 s without
/// progress it blamed the source, cleared its buffer and started again from byte 0 elsewhere,
/// so it never completed (before the fix: still at cid 0 after a minute). Now: it completes
/// well within the time the round trips take, every fetch is served, and no source is blamed.
#[test]
fn a_transfer_of_more_than_256_chunks_completes() {
    let limits = Limits {
        state_chunk_bytes: 4096,
        checkpoint_period: 20,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    let checkpoint = checkpoint(&c, Cid(20), 24 * 65_000);
    let chunks = checkpoint.data.len().div_ceil(4096);
    assert!(chunks > 380, "{chunks} chunks");
    let mut net = Net::new(&c, &checkpoint, 1);
    let at = net.run_until(
        &c,
        60_000,
        |_, _, _| false,
        |net| net.engines[3].last_executed() >= Cid(20),
    );
    let at = at.unwrap_or_else(|| {
        panic!(
            "the wiped replica is at cid {} after 60 s",
            net.engines[3].last_executed()
        )
    });
    // 381 round trips of 2 ms, and the queries before them.
    eprintln!("{chunks} chunks: caught up at {at} ms");
    assert!(at < 1000, "caught up at {at} ms");
    assert_eq!(net.persisted[3], [checkpoint]);
    for source in 0..3 {
        assert_eq!(
            net.engines[source].stats().rejections.get("rate_limited"),
            None,
            "replica {source} dropped no fetch"
        );
    }
    assert_eq!(net.engines[3].stats().lying_state_sources, 0);
    assert_eq!(net.engines[3].stats().state_transfers, 1);
}

/// Pacing and resuming, handler by handler (default limits: 1 MiB chunks, so one fetch per
/// 32 ms; stall period 2000 ms + 32 ms). Replicas 0 and 1 vouch for checkpoint 20; the
/// requester fetches from 0; the second chunk arrives 1 ms after the first fetch, so the next
/// fetch waits for its timer at 32 ms. Then 0 goes quiet: at the stall the requester asks
/// replica 1 for the same offset (keeping the 2 MiB it has, not starting from byte 0), and
/// the bytes from both sources install.
#[test]
fn fetches_are_paced_and_a_quiet_source_is_replaced_at_the_same_offset() {
    use smr_core::engine::TimerKind;
    let c = cluster(Mode::Bft, 4, 1, Limits::default());
    let checkpoint = checkpoint(&c, Cid(20), (3 << 20) + 100);
    let data = &checkpoint.data;
    let mb = 1usize << 20;
    let mut r = c.engine(3);
    r.start(0);
    let info = Message::StateInfo {
        checkpoints: vec![(Cid(20), checkpoint.digest)],
        voted_up_to: Cid(20),
        executed: None,
        for_nonce: 0,
        rejoin_nonce: 0,
    };
    assert_eq!(
        c.deliver_ok(&mut r, 0, Peer::Replica(0), info.clone()),
        only_sent(vec![broadcast(Message::StateQuery { rejoin_nonce: 0 })])
    );
    let fetch = |to: u32, offset: usize| {
        send(
            to,
            Message::StateFetch {
                cid: Cid(20),
                offset: offset as u64,
            },
        )
    };
    assert_eq!(
        c.deliver_ok(&mut r, 0, Peer::Replica(1), info),
        only_sent(vec![fetch(0, 0)])
    );
    let chunk = |offset: usize, decided: bool| Message::StateChunk {
        cid: Cid(20),
        offset: offset as u64,
        total_len: data.len() as u64,
        bytes: data[offset..(offset + mb).min(data.len())].to_vec(),
        decided: decided.then(|| checkpoint.decided.clone()),
    };
    // The chunk came back after 1 ms: the next fetch waits for 32 ms after the first.
    assert_eq!(
        c.deliver_ok(&mut r, 1, Peer::Replica(0), chunk(0, false)),
        Output::default()
    );
    assert!(
        timers(&r).contains(&(TimerKind::StateFetch, 32)),
        "{:?}",
        timers(&r)
    );
    assert_eq!(r.on_timeout(32), only_sent(vec![fetch(0, mb)]));
    assert_eq!(
        c.deliver_ok(&mut r, 40, Peer::Replica(0), chunk(mb, false)),
        Output::default()
    );
    assert_eq!(r.on_timeout(64), only_sent(vec![fetch(0, 2 * mb)]));
    // Replica 0 goes quiet. At the stall the same offset is asked of replica 1.
    let out = r.on_timeout(40 + 2032);
    assert!(
        out.send_now.contains(&fetch(1, 2 * mb)),
        "resumed at the offset: {out:?}"
    );
    assert_eq!(
        c.deliver_ok(&mut r, 2080, Peer::Replica(1), chunk(2 * mb, false)),
        Output::default()
    );
    assert_eq!(r.on_timeout(2072 + 32), only_sent(vec![fetch(1, 3 * mb)]));
    let out = c.deliver_ok(&mut r, 2110, Peer::Replica(1), chunk(3 * mb, true));
    assert_eq!(out.persist, [PersistRecord::Checkpoint(checkpoint.clone())]);
    assert_eq!(r.last_checkpoint(), Cid(20));
    assert_eq!(r.stats().lying_state_sources, 0);
}

/// Issue 17 item 3, one real run above the old fixed 64 MiB decode limit: a checkpoint of
/// 66 MiB (under the default `max_state_bytes` of 1 GiB) is written to a data dir as the
/// driver writes it, read back and decoded on reopening (a fixed decode limit made a replica
/// refuse its own data dir here), recovered into engines, and transferred in 15 MiB chunks
/// (`MAX_STATE_CHUNK_BYTES`) to a wiped replica, whose pacing keeps every chunk within the
/// sources' 64 MiB reply budget. CFT n = 3, so that only two replicas hold a copy.
#[test]
fn a_checkpoint_above_64_mib_is_recovered_from_its_data_dir_and_transferred() {
    use smr_core::codec;
    use smr_core::config::MAX_STATE_CHUNK_BYTES;
    use smr_core::storage::{FsyncPolicy, Wal};
    let limits = Limits {
        state_chunk_bytes: MAX_STATE_CHUNK_BYTES,
        ..Limits::default()
    };
    let c = cluster(Mode::Cft, 3, 1, limits);
    let written = checkpoint(&c, Cid(1000), 66 << 20);
    assert!(written.data.len() > 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), FsyncPolicy::Never).unwrap();
    wal.write_checkpoint(
        &codec::encode(&PersistRecord::Checkpoint(written.clone())),
        &[],
    )
    .unwrap();
    drop(wal);
    let (_wal, recovered) = Wal::open(dir.path(), FsyncPolicy::Never).unwrap();
    let record: PersistRecord =
        codec::decode(&recovered.checkpoint.expect("a checkpoint")).expect("decodes");
    drop(recovered.records);
    let PersistRecord::Checkpoint(read) = record else {
        panic!("not a checkpoint record");
    };
    assert_eq!(read, written);
    drop(written);
    let mut net = Net::new(&c, &read, 1);
    let at = net.run_until(
        &c,
        60_000,
        |_, _, _| false,
        |net| net.engines[2].last_executed() == Cid(1000),
    );
    assert!(
        at.is_some(),
        "the wiped replica is at cid {}",
        net.engines[2].last_executed()
    );
    assert_eq!(net.persisted[2], [read]);
    for source in 0..2 {
        assert_eq!(
            net.engines[source].stats().rejections.get("rate_limited"),
            None
        );
    }
}

/// Attack (issue 17 review): a Byzantine source that serves correct chunks, each just before
/// the stall period (`retransmit_max_ms` + one pacing interval) would replace it. Silence is no
/// longer blamed and progress resets the stall clock, so the requester never leaves it: the
/// 381-chunk transfer that takes under a second from an honest source takes 381 stall periods
/// (about 13 minutes; 1 GiB in 1 MiB chunks would take 35 minutes), long enough for the
/// cluster to truncate the decisions after the checkpoint, so the wiped replica transfers
/// again, from the same slow source. Meanwhile it is one more replica the cluster cannot
/// count on: with the slow source also stopping its votes, n - f correct replicas stall.
/// The requester should complete within a few stall periods, since f + 1 vouchers include a
/// correct one that serves at full rate. FAILS on main (ed9ab6d): caught up only at 761 s.
/// Now its first answer (1,998 ms, above the 100 ms floor) sends the requester to replica 1 at
/// the same offset, which answers in 2 ms: caught up at 2.76 s, and replica 0 is not blamed.
#[test]
fn a_source_that_answers_just_before_the_stall_cannot_slow_a_transfer_without_bound() {
    let limits = Limits {
        state_chunk_bytes: 4096,
        checkpoint_period: 20,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    let checkpoint = checkpoint(&c, Cid(20), 24 * 65_000);
    let mut net = Net::new(&c, &checkpoint, 1);
    // Replica 0 (the lowest id, so chosen first) delays each chunk to 2 ms short of the stall.
    net.slow_chunks_from = Some((0, 1_996));
    let at = net.run_until(
        &c,
        30_000,
        |_, _, _| false,
        |net| net.engines[3].last_executed() >= Cid(20),
    );
    eprintln!("caught up at {at:?}");
    assert!(
        at.is_some(),
        "the wiped replica is still at cid {} after 30 s behind one slow source",
        net.engines[3].last_executed()
    );
    assert!(at < Some(3_000), "caught up at {at:?}");
    assert_eq!(net.persisted[3], [checkpoint]);
    assert_eq!(net.engines[3].stats().lying_state_sources, 0);
    assert_eq!(net.engines[3].stats().state_transfers, 1);
}

/// Attack (issue 17 review): a Byzantine source (replica 0, the lowest id, so asked first)
/// serves full chunks of garbage claiming a total length above the real one, until the
/// requester's buffer is longer than the real checkpoint, then goes quiet. The requester
/// resumes at that offset from each correct voucher in turn; each refuses a fetch beyond its
/// checkpoint ("state fetch beyond the checkpoint", no reply), so each looks quiet, and once
/// every voucher went quiet the transfer is dropped and started afresh, with fresh `failed` /
/// `silent` sets: replica 0 is asked first again. Nothing it sent is of the wrong length and no
/// download completed, so it is never blamed: on ed9ab6d the wiped replica never caught up
/// (6 fresh transfers in 60 s). Now a source that stays quiet when asked to continue another's
/// bytes makes every later download single-source, starting again with it from byte 0: about
/// two stall periods, then one clean download.
#[test]
fn a_source_that_overshoots_the_real_length_cannot_stall_the_transfer() {
    let limits = Limits {
        state_chunk_bytes: 4096,
        checkpoint_period: 20,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    let checkpoint = checkpoint(&c, Cid(20), 24 * 65_000);
    let real_chunks = checkpoint.data.len().div_ceil(4096) as u64;
    let mut net = Net::new(&c, &checkpoint, 1);
    let stop = (real_chunks + 1) * 4096;
    net.garbage_chunks_from = Some((0, stop, stop + 100 * 4096));
    let at = net.run_until(
        &c,
        60_000,
        |_, _, _| false,
        |net| net.engines[3].last_executed() >= Cid(20),
    );
    eprintln!(
        "caught up at {at:?}; {} transfers started, {} lying sources seen",
        net.engines[3].stats().state_transfers,
        net.engines[3].stats().lying_state_sources
    );
    assert!(
        at.is_some(),
        "the wiped replica is still at cid {} after 60 s ({} transfers started)",
        net.engines[3].last_executed(),
        net.engines[3].stats().state_transfers
    );
    assert!(at < Some(10_000), "caught up at {at:?}");
    assert_eq!(net.persisted[3], [checkpoint]);
}

/// Attack (issue 17 review, limits end to end): `max_state_bytes` was checked only by a
/// requester's verifier, never where a checkpoint is taken. A service whose state outgrows it
/// (here 1.2 MB against 1 MiB) was checkpointed and announced by every replica without a word,
/// but no chunk of it is ever accepted ("oversize state", a debug-level rejection at the
/// requester), so a wiped replica never catches up and the cluster has silently lost one
/// replica of fault tolerance. FAILED on main (no flag anywhere). Stopping the replica would
/// stop every replica at once (they share the limit), so the checkpoint is still kept and
/// announced, but counted where it is taken (`oversize_checkpoints`, which the driver logs as
/// an error naming `limits.max_state_bytes`) and shown by every replica holding it
/// (`state_over_max_state_bytes`, in `smr status`). The transfer still cannot complete: that
/// is the limit doing its job.
#[test]
fn a_checkpoint_above_max_state_bytes_is_flagged_where_it_is_taken() {
    let limits = Limits {
        state_chunk_bytes: 64 * 1024,
        max_state_bytes: 1 << 20,
        max_clients: 16,
        max_client_reply_bytes: 16 * 1024,
        max_reply_cache_bytes: 64 * 1024,
        checkpoint_period: 2,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);

    // Taken: replica 2 executes two certified decisions and its service snapshots 1.2 MB.
    let mut replica = c.engine(2);
    let decisions: Vec<Decision> = [Cid(1), Cid(2)]
        .into_iter()
        .map(|cid| {
            let batch = c.batch_of_cid(cid);
            let digest = batch.digest();
            Decision {
                cid,
                batch,
                certificate: c.votes(VoteKind::Accept, &[0, 1, 3], cid, Regency(0), digest),
            }
        })
        .collect();
    c.deliver_ok(
        &mut replica,
        0,
        Peer::Replica(0),
        Message::Decisions(decisions),
    );
    replica.on_executed(0, Cid(1), vec![b"ok".to_vec()]);
    let output = replica.on_executed(0, Cid(2), vec![b"ok".to_vec()]);
    assert_eq!(output.service, [ServiceWork::TakeSnapshot { cid: Cid(2) }]);
    assert_eq!(replica.stats().oversize_checkpoints, 0);
    assert_eq!(replica.state_over_max_state_bytes(), None);
    let output = replica.on_snapshot(0, Cid(2), vec![7; 1_200_000]);
    let [PersistRecord::Checkpoint(taken)] = &output.persist[..] else {
        panic!("expected the checkpoint persisted: {output:?}");
    };
    let taken_bytes = taken.data.len() as u64;
    assert!(taken_bytes > 1_200_000, "{taken_bytes}");
    // Kept and announced as any other: the replica goes on.
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Checkpoint(taken.clone())],
            send_after_persist: vec![Outgoing::Broadcast(Message::CheckpointAnnounce {
                cid: Cid(2),
                digest: taken.digest,
            })],
            ..Output::default()
        }
    );
    assert_eq!(replica.stats().oversize_checkpoints, 1);
    assert_eq!(
        replica.state_over_max_state_bytes(),
        Some((Cid(2), taken_bytes))
    );

    // Held: replicas that recovered such a checkpoint from their data dirs show it too (not
    // counted: recovery counts nothing it rebuilds), and a wiped replica cannot receive it.
    let checkpoint = checkpoint(&c, Cid(20), 1_200_000);
    let mut net = Net::new(&c, &checkpoint, 1);
    let at = net.run_until(
        &c,
        30_000,
        |_, _, _| false,
        |net| net.engines[3].last_executed() >= Cid(20),
    );
    assert_eq!(at, None);
    for source in 0..3 {
        assert_eq!(
            net.engines[source].state_over_max_state_bytes(),
            Some((Cid(20), checkpoint.data.len() as u64))
        );
        assert_eq!(net.engines[source].stats().oversize_checkpoints, 0);
    }
    assert_eq!(net.engines[3].last_executed(), Cid::ZERO);
    assert_eq!(net.engines[3].state_over_max_state_bytes(), None);
    assert!(net.persisted[3].is_empty());
}

/// Issue 12 follow-up: a downloaded checkpoint whose bytes match the digest f+1 peers vouch
/// for, but which this replica cannot use (here: bytes that do not decode, as from a replica
/// of another version; or a client table beyond this replica's limits), was counted as a lying
/// source and its sender excluded, although any other source could only send the same bytes.
/// Now no source is blamed: it is counted as unusable, kept for the driver's error log, and not
/// fetched again while the same checkpoint is all the peers offer.
#[test]
fn an_agreed_checkpoint_this_replica_cannot_use_blames_no_source_and_is_not_fetched_again() {
    let c = cluster(Mode::Bft, 4, 1, Limits::default());
    let bytes = b"not a checkpoint of this version".to_vec();
    let unusable = Checkpoint {
        cid: Cid(20),
        digest: smr_crypto::digest(&bytes),
        data: bytes.clone(),
        decided: c.decision_proof(Cid(20), Batch::default().digest()),
    };
    let mut r = c.engine(3);
    r.start(0);
    let info = Message::StateInfo {
        checkpoints: vec![(Cid(20), unusable.digest)],
        voted_up_to: Cid(20),
        executed: None,
        for_nonce: 0,
        rejoin_nonce: 0,
    };
    assert_eq!(
        c.deliver_ok(&mut r, 0, Peer::Replica(0), info.clone()),
        only_sent(vec![broadcast(Message::StateQuery { rejoin_nonce: 0 })])
    );
    let fetch = send(
        0,
        Message::StateFetch {
            cid: Cid(20),
            offset: 0,
        },
    );
    assert_eq!(
        c.deliver_ok(&mut r, 0, Peer::Replica(1), info.clone()),
        only_sent(vec![fetch])
    );
    let chunk = Message::StateChunk {
        cid: Cid(20),
        offset: 0,
        total_len: bytes.len() as u64,
        bytes: bytes.clone(),
        decided: Some(unusable.decided.clone()),
    };
    // The whole checkpoint in one chunk: it matches the digest, does not decode, and nothing
    // is persisted, sent or rejected.
    assert_eq!(
        c.deliver_ok(&mut r, 1, Peer::Replica(0), chunk),
        Output::default()
    );
    assert_eq!(r.last_checkpoint(), Cid::ZERO);
    assert_eq!(r.stats().lying_state_sources, 0);
    assert_eq!(r.stats().unusable_agreed_checkpoints, 1);
    let (cid, reason) = r.unusable_agreed_checkpoint().expect("kept for the log");
    assert_eq!(cid, Cid(20));
    assert_eq!(
        reason,
        "malformed frame: UnexpectedEnd { additional: 8389759083186185045 }"
    );
    // The same offer again starts a new transfer (a StateQuery for fresh reports), but the
    // unusable checkpoint is not fetched again from either source.
    assert_eq!(
        c.deliver_ok(&mut r, 5000, Peer::Replica(0), info.clone()),
        only_sent(vec![broadcast(Message::StateQuery { rejoin_nonce: 0 })])
    );
    assert_eq!(
        c.deliver_ok(&mut r, 5000, Peer::Replica(1), info),
        Output::default()
    );
}
