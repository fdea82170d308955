//! Exact-action tests, openraft style: each test drives a real [`Engine`] into one situation and
//! asserts the whole [`Output`] of the input under test (every message in its group, every
//! persisted record, every piece of service work and every rejection), so that nothing a
//! handler produces can be lost, added or reordered without a test failing.
//!
//! The expected values are written out from the protocol, not copied from a run: each test
//! says which handler steps produce which element. Messages go through
//! [`InboundVerifier::verify_inbound`](smr_core::InboundVerifier::verify_inbound), as they
//! would in a driver; the fixture they share with `engine.rs` is in `common/mod.rs`.

mod common;

use smr_core::checkpoint::Checkpoint;
use smr_core::engine::{PersistRecord, Phase};
use smr_core::message::{
    Batch, Cid, Message, Propose, Regency, Signed, Sync as SyncMsg, Vote, VoteKind,
};
use smr_core::{Engine, Limits, Outgoing, Output, Rejection, ServiceWork, TimerKind};
use smr_crypto::Digest;
use smr_modes::Mode;

use common::{
    bft, broadcast, cft, cluster, only_rejected, only_sent, rejected_sending, send, state_chunk,
    state_fetch, timers, Cluster,
};

// ----- 1. a Forward whose later request the pool refuses ------------------------------------

/// Pool limits small enough that a Forward of three requests from one client overflows:
/// the client may have two requests pending. `max_batch_requests` 16 makes the BFT leader's
/// adaptive batching start a second instance for a single request (step 16/16 = 1).
fn small_pool() -> Limits {
    Limits {
        max_pending_per_client: 2,
        max_batch_requests: 16,
        ..Limits::default()
    }
}

/// Replica 1 forwards requests 1, 2 and 3 of the client's session 1 to the leader, replica 0,
/// at 1000 ms (the pool holds a session's window, 2). Returns the leader's output and the
/// batches it can propose: request 1 alone and request 2 alone.
fn forward_three_requests(c: &Cluster, leader: &mut Engine) -> (Output, Batch, Batch) {
    let forward = Message::Forward(vec![c.request(1), c.request(2), c.request(3)]);
    let out = c.deliver_from(leader, 1000, 1, forward);
    (out, c.batch(&[1]), c.batch(&[2]))
}

/// The leader's (replica 0's) proposal of `batch` for `cid` in regency 0, and its own `kind`
/// vote for it.
fn leaders_proposal(
    c: &Cluster,
    kind: VoteKind,
    cid: Cid,
    batch: Batch,
) -> (Signed<Propose>, Signed<Vote>) {
    let vote = c.vote(kind, 0, cid, Regency(0), batch.digest());
    (c.propose(0, cid, Regency(0), batch), vote)
}

#[test]
fn forward_that_overflows_a_client_pool_still_persists_and_sends_the_proposals_it_started_bft() {
    let c = cluster(Mode::Bft, 4, 1, small_pool());
    let mut leader = c.engine(0);
    let (out, b1, b2) = forward_three_requests(&c, &mut leader);
    // Request 1: nothing in flight, so the leader proposes cid 1 at once and casts its WRITE;
    // both leave only once the WRITE is on disk (a restarted leader must know it proposed). Request 2: one instance in flight and one unproposed
    // request >= 1 x step, so it proposes cid 2; the next cid advanced. Request 3: the client
    // already has two pending, so the pool refuses it; the two proposals stand.
    let (p1, w1) = leaders_proposal(&c, VoteKind::Write, Cid(1), b1);
    let (p2, w2) = leaders_proposal(&c, VoteKind::Write, Cid(2), b2);
    assert_eq!(
        out,
        Output {
            send_now: vec![],
            persist: vec![PersistRecord::Vote(w1.body), PersistRecord::Vote(w2.body)],
            send_after_persist: vec![
                broadcast(Message::Propose(p1)),
                broadcast(Message::Write(w1)),
                broadcast(Message::Propose(p2)),
                broadcast(Message::Write(w2)),
            ],
            service: vec![],
            rejections: vec![Rejection::ClientPoolFull],
        }
    );
    assert_eq!(leader.pending_requests(), 2, "request 3 was not pooled");
    assert_eq!(leader.stats().proposals_sent, 2);
    assert_eq!(leader.stats().rejections.get("client_pool_full"), Some(&1));
}

#[test]
fn forward_that_overflows_a_client_pool_still_persists_and_sends_the_proposals_it_started_cft() {
    let c = cluster(Mode::Cft, 3, 1, small_pool());
    let mut leader = c.engine(0);
    let (out, b1, b2) = forward_three_requests(&c, &mut leader);
    // CFT proposes at once up to the window and accepts straight away: each ACCEPT is
    // preceded by its prepared value and the vote itself on disk.
    let (p1, a1) = leaders_proposal(&c, VoteKind::Accept, Cid(1), b1.clone());
    let (p2, a2) = leaders_proposal(&c, VoteKind::Accept, Cid(2), b2.clone());
    assert_eq!(
        out,
        Output {
            send_now: vec![],
            persist: vec![
                PersistRecord::Prepared(c.prepared(Cid(1), Regency(0), b1)),
                PersistRecord::Vote(a1.body),
                PersistRecord::Prepared(c.prepared(Cid(2), Regency(0), b2)),
                PersistRecord::Vote(a2.body),
            ],
            send_after_persist: vec![
                broadcast(Message::Propose(p1)),
                broadcast(Message::Accept(a1)),
                broadcast(Message::Propose(p2)),
                broadcast(Message::Accept(a2)),
            ],
            service: vec![],
            rejections: vec![Rejection::ClientPoolFull],
        }
    );
    assert_eq!(leader.pending_requests(), 2);
}

// ----- 2. a STOPDATA for a higher regency at a replica that will not lead it ----------------

/// Replica `from`'s STOPDATA for regency 1, proving nothing.
fn empty_stopdata(c: &Cluster, from: u32) -> Message {
    Message::StopData(c.stopdata(from, Regency(1), None, vec![]))
}

/// Replica 2's output when it joins the change to regency 1 (its own STOP, sent at once) and
/// so installs it: it persists the regency, then sends its STOPDATA to the new leader
/// (replica 1). `rejections` is what the input that led there was refused for.
fn joins_and_installs_regency_1(c: &Cluster, rejections: Vec<Rejection>) -> Output {
    Output {
        send_now: vec![broadcast(Message::Stop(c.stop(2, Regency(1), Regency(0))))],
        persist: vec![PersistRecord::Regency(Regency(1))],
        send_after_persist: vec![send(1, empty_stopdata(c, 2))],
        service: vec![],
        rejections,
    }
}

/// Replica 2, handed at 1000 ms the STOPDATA for regency 1 of each replica in `senders` in
/// turn. Each counts as its sender's STOP; the message is not for this replica's regency yet,
/// so it is not refused either. All but the last change nothing; the last makes this replica
/// join and install regency 1. Only then does the handler see that the STOPDATA was meant for
/// the leader.
fn non_leader_given_stopdata(c: &Cluster, senders: &[u32]) -> Engine {
    let mut replica = c.engine(2);
    let (&last, before) = senders.split_last().expect("at least one sender");
    for &from in before {
        let out = c.deliver_from(&mut replica, 1000, from, empty_stopdata(c, from));
        assert_eq!(out, Output::default());
        assert_eq!(replica.regency(), Regency(0));
    }
    let out = c.deliver_from(&mut replica, 1000, last, empty_stopdata(c, last));
    assert_eq!(
        out,
        joins_and_installs_regency_1(c, vec![Rejection::NotLeader])
    );
    assert_eq!(replica.regency(), Regency(1));
    replica
}

#[test]
fn stopdata_that_installs_a_regency_at_a_non_leader_persists_it_sends_stopdata_and_reports_not_leader(
) {
    // BFT: replica 0's STOPDATA is one of the f+1 = 2 STOPs needed to join. Replica 3's makes
    // two: this replica joins, which makes the 2f+1 = 3 that install regency 1.
    let replica = non_leader_given_stopdata(&bft(), &[0, 3]);
    assert_eq!(replica.phase(), Phase::Syncing);
    assert_eq!(replica.stats().rejections.get("not_leader"), Some(&1));
}

#[test]
fn stopdata_that_installs_a_regency_at_a_non_leader_persists_it_sends_stopdata_and_reports_not_leader_cft(
) {
    // CFT: one STOP joins, f+1 = 2 (with its own) install.
    non_leader_given_stopdata(&cft(), &[0]);
}

// ----- 3. rejections that say something about the sender ------------------------------------

#[test]
fn message_from_a_future_regency_is_rejected_and_asks_the_sender_for_its_sync_once_per_interval_per_peer(
) {
    let c = bft();
    let mut follower = c.engine(1);
    let future = Rejection::FutureRegency {
        got: Regency(4),
        current: Regency(0),
    };
    // Regency 4 is led by replica 0 too (4 mod 4), but this replica is in regency 0.
    let out = c.deliver_from(
        &mut follower,
        1000,
        0,
        Message::Propose(c.propose(0, Cid(1), Regency(4), c.batch(&[1]))),
    );
    assert_eq!(
        out,
        rejected_sending(future.clone(), send(0, Message::SyncQuery))
    );
    // Within retransmit_initial_ms (100) replica 0's budget is spent: still refused, nothing
    // sent to it.
    let vote = c.vote(VoteKind::Write, 0, Cid(1), Regency(4), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1099, 0, Message::Write(vote));
    assert_eq!(out, only_rejected(future.clone()));
    // The budget is per peer (issue 12, item 2): replica 0 provoking queries to itself does
    // not stop this replica from asking replica 3 at once.
    let vote = c.vote(VoteKind::Write, 3, Cid(1), Regency(4), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1099, 3, Message::Write(vote));
    assert_eq!(
        out,
        rejected_sending(future.clone(), send(3, Message::SyncQuery))
    );
    // Once the interval has passed, replica 0 is asked again.
    let vote = c.vote(VoteKind::Accept, 0, Cid(1), Regency(4), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1100, 0, Message::Accept(vote));
    assert_eq!(
        out,
        rejected_sending(future.clone(), send(0, Message::SyncQuery))
    );
    assert_eq!(follower.stats().rejections.get("future_regency"), Some(&4));
    assert_eq!(
        follower.regency(),
        Regency(0),
        "a future regency is not adopted on a claim"
    );
}

#[test]
fn message_beyond_the_cid_window_is_rejected_and_asks_the_sender_for_decisions_once_per_interval_per_peer(
) {
    let c = bft();
    let mut follower = c.engine(1);
    // The window is last_executed (0) + max_instances_ahead (64).
    let beyond = |cid| Rejection::CidBeyondWindow {
        cid,
        window_end: Cid(64),
    };
    // The sender is asked for the decisions from the first this replica lacks.
    let ask = |to| send(to, Message::DecisionQuery { from_cid: Cid(1) });
    let out = c.deliver_from(
        &mut follower,
        1000,
        0,
        Message::Propose(c.propose(0, Cid(65), Regency(0), c.batch(&[1]))),
    );
    assert_eq!(out, rejected_sending(beyond(Cid(65)), ask(0)));
    // Replica 0 again within the interval: not asked again.
    let vote = c.vote(VoteKind::Write, 0, Cid(70), Regency(0), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1050, 0, Message::Write(vote));
    assert_eq!(out, only_rejected(beyond(Cid(70))));
    // Another peer has its own budget (issue 12, item 2): asked at once.
    let vote = c.vote(VoteKind::Write, 2, Cid(70), Regency(0), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1050, 2, Message::Write(vote));
    assert_eq!(out, rejected_sending(beyond(Cid(70)), ask(2)));
    let vote = c.vote(VoteKind::Accept, 0, Cid(66), Regency(0), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1100, 0, Message::Accept(vote));
    assert_eq!(out, rejected_sending(beyond(Cid(66)), ask(0)));
    assert_eq!(
        follower.open_instances(),
        0,
        "nothing beyond the window is kept"
    );
}

// ----- SYNC ---------------------------------------------------------------------------------

/// Regency 1's SYNC (leader 1) from STOPDATA of replicas 0, 1 and 3. Replica 1 prepared b1 for
/// cid 1 and replica 3 prepared b3 for cid 3, both in regency 0; nobody proves a decision. The
/// value rule fixes cid 1 = b1, cid 2 = a no-op (no proof, so it cannot have been decided) and
/// cid 3 = b3.
struct SyncFixture {
    sync: Signed<SyncMsg>,
    values: Vec<(u64, Batch)>,
}

fn sync_for_regency_1(c: &Cluster) -> SyncFixture {
    let b1 = c.batch(&[1]);
    let b3 = c.batch(&[3]);
    let proofs = vec![
        c.stopdata(0, Regency(1), None, vec![]),
        c.stopdata(
            1,
            Regency(1),
            None,
            vec![c.prepared(Cid(1), Regency(0), b1.clone())],
        ),
        c.stopdata(
            3,
            Regency(1),
            None,
            vec![c.prepared(Cid(3), Regency(0), b3.clone())],
        ),
    ];
    SyncFixture {
        sync: c.sync(1, Regency(1), proofs),
        values: vec![(1, b1), (2, Batch::default()), (3, b3)],
    }
}

/// Replica `me`'s WRITEs in regency 1 for the values the SYNC fixes, as records and messages.
fn writes_for(
    c: &Cluster,
    me: u32,
    values: &[(u64, Batch)],
) -> (Vec<PersistRecord>, Vec<Outgoing>) {
    values
        .iter()
        .map(|(cid, batch)| {
            let w = c.vote(VoteKind::Write, me, Cid(*cid), Regency(1), batch.digest());
            (PersistRecord::Vote(w.body), broadcast(Message::Write(w)))
        })
        .unzip()
}

/// Replica `me`'s output when it applies `fixture`'s SYNC in the syncing phase: each fixed
/// value is accepted as the regency's proposal, a WRITE (BFT), persisted first.
fn applies_sync(c: &Cluster, me: u32, fixture: &SyncFixture) -> Output {
    let (persist, writes) = writes_for(c, me, &fixture.values);
    Output {
        send_now: vec![],
        persist,
        send_after_persist: writes,
        service: vec![],
        rejections: vec![],
    }
}

/// Replica 2 of a BFT cluster, moved into regency 1 by STOPs from replicas 0 and 1, waiting for
/// the SYNC.
fn follower_in_syncing(c: &Cluster) -> Engine {
    let mut follower = c.engine(2);
    let out = c.deliver_from(
        &mut follower,
        1000,
        0,
        Message::Stop(c.stop(0, Regency(1), Regency(0))),
    );
    assert_eq!(
        out,
        Output::default(),
        "one STOP of f+1 = 2 is not enough to join"
    );
    let out = c.deliver_from(
        &mut follower,
        1000,
        1,
        Message::Stop(c.stop(1, Regency(1), Regency(0))),
    );
    // Two STOPs: it joins with its own, which makes 2f+1 = 3 and installs regency 1. Unlike
    // a STOPDATA sent to it by mistake, this input has nothing to refuse.
    assert_eq!(out, joins_and_installs_regency_1(c, vec![]));
    assert_eq!(follower.phase(), Phase::Syncing);
    follower
}

/// `follower_in_syncing` once it has applied regency 1's SYNC (at 1200 ms), and that SYNC.
fn follower_synced(c: &Cluster) -> (Engine, SyncFixture) {
    let mut follower = follower_in_syncing(c);
    let fixture = sync_for_regency_1(c);
    c.deliver_from(&mut follower, 1200, 1, Message::Sync(fixture.sync.clone()));
    (follower, fixture)
}

#[test]
fn follower_in_syncing_applies_the_new_leaders_sync_and_writes_the_values_it_fixes() {
    let c = bft();
    let mut follower = follower_in_syncing(&c);
    let fixture = sync_for_regency_1(&c);
    let out = c.deliver_from(&mut follower, 1200, 1, Message::Sync(fixture.sync.clone()));
    // Each fixed value is accepted as the regency's proposal: a WRITE (BFT), persisted first.
    assert_eq!(out, applies_sync(&c, 2, &fixture));
    assert_eq!(follower.phase(), Phase::Normal);
    assert_eq!(follower.regency(), Regency(1));
    assert_eq!(follower.open_instances(), 3);
}

#[test]
fn replica_in_an_older_regency_adopts_the_regency_of_a_valid_sync_before_writing() {
    let c = bft();
    let mut replica = c.engine(3);
    let fixture = sync_for_regency_1(&c);
    // Relayed by replica 0 (answering a SyncQuery): the leader's signature is what counts.
    let out = c.deliver_from(&mut replica, 1000, 0, Message::Sync(fixture.sync.clone()));
    // As a replica in the syncing phase applies it, behind the new regency's record.
    let mut expected = applies_sync(&c, 3, &fixture);
    expected
        .persist
        .insert(0, PersistRecord::Regency(Regency(1)));
    assert_eq!(out, expected);
    assert_eq!(
        (replica.regency(), replica.phase()),
        (Regency(1), Phase::Normal)
    );
}

#[test]
fn sync_for_an_old_or_already_applied_regency_does_nothing() {
    let c = bft();
    let (mut follower, fixture) = follower_synced(&c);
    // The same SYNC again: regency 1 is applied already.
    let out = c.deliver_from(&mut follower, 1300, 1, Message::Sync(fixture.sync));
    assert_eq!(out, Output::default());
    // A valid SYNC of regency 0 (leader 0, n-f STOPDATA of regency 0).
    let old = c.sync(
        0,
        Regency(0),
        [0, 1, 3]
            .into_iter()
            .map(|r| c.stopdata(r, Regency(0), None, vec![]))
            .collect(),
    );
    let out = c.deliver_from(&mut follower, 1300, 0, Message::Sync(old));
    assert_eq!(out, Output::default());
    assert_eq!(
        (follower.regency(), follower.phase()),
        (Regency(1), Phase::Normal)
    );
    assert_eq!(follower.open_instances(), 3);
}

#[test]
fn message_from_a_stale_regency_is_rejected_and_the_sender_gets_our_sync_once_per_interval() {
    let c = bft();
    let (mut follower, fixture) = follower_synced(&c);
    let stale = Rejection::StaleRegency {
        got: Regency(0),
        current: Regency(1),
    };
    let vote = |r: u32| c.vote(VoteKind::Write, r, Cid(1), Regency(0), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 2000, 3, Message::Write(vote(3)));
    assert_eq!(
        out,
        rejected_sending(stale.clone(), send(3, Message::Sync(fixture.sync.clone())))
    );
    // The same peer again within retransmit_initial_ms: refused, no second SYNC.
    let out = c.deliver_from(&mut follower, 2099, 3, Message::Write(vote(3)));
    assert_eq!(out, only_rejected(stale.clone()));
    // The budget is per peer: another stale peer gets the SYNC at once.
    let out = c.deliver_from(
        &mut follower,
        2099,
        0,
        Message::Propose(c.propose(0, Cid(1), Regency(0), c.batch(&[1]))),
    );
    assert_eq!(
        out,
        rejected_sending(stale, send(0, Message::Sync(fixture.sync)))
    );
}

/// A replica asked by a stale peer before it has a SYNC to send (installed in regency 1 by
/// STOPs, waiting for the SYNC) spends no pacing slot on it: once the SYNC is applied, the
/// peer's next ask, within the retransmit interval of the first, gets it. Before, the empty
/// first answer took the slot and the stale peer waited out the interval.
#[test]
fn a_replica_with_no_sync_yet_keeps_its_pacing_slot_for_the_stale_peer() {
    let c = bft();
    let mut follower = follower_in_syncing(&c);
    let stale = Rejection::StaleRegency {
        got: Regency(0),
        current: Regency(1),
    };
    let vote = |r: u32| c.vote(VoteKind::Write, r, Cid(1), Regency(0), Digest([7; 32]));
    let out = c.deliver_from(&mut follower, 1100, 3, Message::Write(vote(3)));
    assert_eq!(out, only_rejected(stale.clone()));
    let fixture = sync_for_regency_1(&c);
    let out = c.deliver_from(&mut follower, 1150, 1, Message::Sync(fixture.sync.clone()));
    assert_eq!(out, applies_sync(&c, 2, &fixture));
    // 99 ms after the first ask (retransmit_initial_ms is 100).
    let out = c.deliver_from(&mut follower, 1199, 3, Message::Write(vote(3)));
    assert_eq!(
        out,
        rejected_sending(stale.clone(), send(3, Message::Sync(fixture.sync)))
    );
    // That answer took the slot.
    let out = c.deliver_from(&mut follower, 1200, 3, Message::Write(vote(3)));
    assert_eq!(out, only_rejected(stale));
}

// ----- checkpoints and state transfer -------------------------------------------------------

/// State chunks of 32 bytes, so that the checkpoint below travels in two.
fn small_chunks() -> Limits {
    Limits {
        state_chunk_bytes: 32,
        ..Limits::default()
    }
}

/// A checkpoint at cid 2, built as `Engine::on_snapshot` builds one, with the proof that cid 2
/// was decided (a no-op batch, Q signed ACCEPTs).
fn checkpoint_at_2(c: &Cluster) -> (Checkpoint, Vec<u8>) {
    let service = b"service state at 2".to_vec();
    let checkpoint = c.checkpoint_at(Cid(2), &service);
    assert!(
        checkpoint.data.len() > 32 && checkpoint.data.len() <= 64,
        "the fixture is meant to travel in exactly two chunks: {} bytes",
        checkpoint.data.len()
    );
    (checkpoint, service)
}

/// A fetch of checkpoint 2's state from `offset`.
fn fetch_at_2(offset: u64) -> Message {
    state_fetch(Cid(2), offset)
}

/// Replica 3, behind, hears from replicas 0 and 1 (f+1) that they hold `checkpoint`, starts
/// fetching it from replica 0, and gets its first chunk (`first`, the first 32 bytes) from it.
fn transfer_from_0(c: &Cluster, checkpoint: &Checkpoint, first: Vec<u8>) -> Engine {
    let mut replica = c.engine(3);
    // The first hint starts a transfer: ask everyone. One report is not f+1 = 2. The second
    // agrees: fetch from the first agreeing source, from offset 0.
    c.agree_on_checkpoint(&mut replica, 1000, checkpoint, [0, 1]);
    // The first chunk: fetch the next from the same source.
    let out = c.deliver_from(
        &mut replica,
        1020,
        0,
        state_chunk(checkpoint, 0, first, false),
    );
    assert_eq!(out, only_sent(vec![send(0, fetch_at_2(32))]));
    replica
}

/// Replica 3's output for the last chunk of `checkpoint`, which completes bytes that hash to
/// the agreed digest: the service restores the snapshot, the checkpoint is persisted, and the
/// decisions after it are asked for (from the next peer in turn after this replica, 3:
/// replica 0), behind the checkpoint record.
fn installs(checkpoint: &Checkpoint, service: Vec<u8>) -> Output {
    Output {
        send_now: vec![],
        persist: vec![PersistRecord::Checkpoint(checkpoint.clone())],
        send_after_persist: vec![send(0, Message::DecisionQuery { from_cid: Cid(3) })],
        service: vec![ServiceWork::Restore {
            cid: Cid(2),
            snapshot: service,
        }],
        rejections: vec![],
    }
}

#[test]
fn replica_behind_fetches_the_agreed_checkpoint_chunk_by_chunk_and_installs_it() {
    let c = cluster(Mode::Bft, 4, 1, small_chunks());
    let (checkpoint, service) = checkpoint_at_2(&c);
    let mut replica = transfer_from_0(&c, &checkpoint, checkpoint.data[..32].to_vec());
    let rest = checkpoint.data[32..].to_vec();
    let out = c.deliver_from(
        &mut replica,
        1030,
        0,
        state_chunk(&checkpoint, 32, rest, true),
    );
    assert_eq!(out, installs(&checkpoint, service));
    assert_eq!(replica.last_executed(), Cid(2));
    assert_eq!(replica.last_checkpoint(), Cid(2));
}

#[test]
fn lying_state_chunk_is_rejected_and_the_fetch_moves_to_the_next_agreed_source() {
    let c = cluster(Mode::Bft, 4, 1, small_chunks());
    let (checkpoint, service) = checkpoint_at_2(&c);
    let first = checkpoint.data[..32].to_vec();
    let forged: Vec<u8> = checkpoint.data[32..].iter().map(|b| b ^ 0xff).collect();
    let mut replica = transfer_from_0(&c, &checkpoint, first.clone());
    // Replica 0's last chunk (with a valid decision proof) completes bytes that do not hash to
    // the digest f+1 replicas agreed on: it is refused, and the download starts over from
    // replica 1, the other agreeing source.
    let out = c.deliver_from(
        &mut replica,
        1030,
        0,
        state_chunk(&checkpoint, 32, forged, true),
    );
    assert_eq!(
        out,
        Output {
            send_now: vec![send(1, fetch_at_2(0))],
            persist: vec![],
            send_after_persist: vec![],
            service: vec![],
            rejections: vec![Rejection::BadCertificate(
                "state does not match the agreed digest"
            )],
        }
    );
    assert_eq!(replica.stats().lying_state_sources, 1);
    assert_eq!(replica.last_executed(), Cid(0), "nothing was installed");
    // The liar is not the source any more: its chunks are ignored.
    let out = c.deliver_from(
        &mut replica,
        1040,
        0,
        state_chunk(&checkpoint, 0, first.clone(), false),
    );
    assert_eq!(out, Output::default());
    // Replica 1 serves the real bytes.
    let out = c.deliver_from(
        &mut replica,
        1050,
        1,
        state_chunk(&checkpoint, 0, first, false),
    );
    assert_eq!(out, only_sent(vec![send(1, fetch_at_2(32))]));
    let rest = checkpoint.data[32..].to_vec();
    let out = c.deliver_from(
        &mut replica,
        1060,
        1,
        state_chunk(&checkpoint, 32, rest, true),
    );
    assert_eq!(out, installs(&checkpoint, service));
    assert_eq!(replica.last_checkpoint(), Cid(2));
}

#[test]
fn state_fetch_is_served_from_the_checkpoint_in_bounded_chunks_with_the_proof_on_the_last() {
    let c = cluster(Mode::Bft, 4, 1, small_chunks());
    let (checkpoint, service) = checkpoint_at_2(&c);
    let (mut server, recovered) = Engine::recover(
        c.cfg(0),
        c.engine_signer(0),
        [PersistRecord::Checkpoint(checkpoint.clone())],
    )
    .expect("the checkpoint decodes");
    assert_eq!(
        recovered,
        Output {
            service: vec![ServiceWork::Restore {
                cid: Cid(2),
                snapshot: service
            }],
            ..Output::default()
        }
    );
    let out = c.deliver_from(&mut server, 1000, 3, fetch_at_2(0));
    let first = state_chunk(&checkpoint, 0, checkpoint.data[..32].to_vec(), false);
    assert_eq!(out, only_sent(vec![send(3, first)]));
    let out = c.deliver_from(&mut server, 1010, 3, fetch_at_2(32));
    let last = state_chunk(&checkpoint, 32, checkpoint.data[32..].to_vec(), true);
    assert_eq!(out, only_sent(vec![send(3, last)]));
    // A checkpoint it does not hold: it says what it has instead.
    let out = c.deliver_from(
        &mut server,
        1020,
        3,
        Message::StateFetch {
            cid: Cid(4),
            offset: 0,
        },
    );
    let info = Message::StateInfo {
        checkpoints: vec![(Cid(2), checkpoint.digest)],
        voted_up_to: Cid(2),
        executed: Some(checkpoint.decided.clone()),
        for_nonce: 0,
        rejoin_nonce: 0,
    };
    assert_eq!(out, only_sent(vec![send(3, info)]));
    // Past the end of the checkpoint: refused, nothing sent.
    let beyond = checkpoint.data.len() as u64 + 1;
    let out = c.deliver_from(&mut server, 1030, 3, fetch_at_2(beyond));
    assert_eq!(
        out,
        only_rejected(Rejection::Malformed(
            "state fetch beyond the checkpoint".into()
        ))
    );
}

// ----- 5. timers armed by an input that was (partly) refused --------------------------------

#[test]
fn timers_armed_by_a_partly_rejected_forward_stay_armed_and_fire() {
    let c = cluster(Mode::Bft, 4, 1, small_pool());
    let mut leader = c.engine(0);
    // start arms only the heartbeat (nothing to retransmit yet).
    assert_eq!(leader.start(1000), Output::default());
    assert_eq!(timers(&leader), vec![(TimerKind::Heartbeat, 1500)]);
    let (out, b1, b2) = forward_three_requests(&c, &mut leader);
    assert_eq!(out.rejections, vec![Rejection::ClientPoolFull]);
    // The proposals armed the retransmit timer (1000 + 100) and the pooled requests the request
    // timer (arrival 1000 + 1000), although the input was refused in part.
    assert_eq!(
        timers(&leader),
        vec![
            (TimerKind::Retransmit, 1100),
            (TimerKind::Request, 2000),
            (TimerKind::Heartbeat, 1500),
        ]
    );
    assert_eq!(leader.next_deadline_ms(), Some(1100));
    assert_eq!(
        leader.on_timeout(1099),
        Output::default(),
        "nothing is due yet"
    );
    // The retransmit fires: both proposals and WRITEs again (already on disk, so at once), and
    // a decision query to the next peer in turn (replica 1).
    let (p1, w1) = leaders_proposal(&c, VoteKind::Write, Cid(1), b1);
    let (p2, w2) = leaders_proposal(&c, VoteKind::Write, Cid(2), b2);
    assert_eq!(
        leader.on_timeout(1100),
        only_sent(vec![
            broadcast(Message::Propose(p1)),
            broadcast(Message::Write(w1)),
            broadcast(Message::Propose(p2)),
            broadcast(Message::Write(w2)),
            send(1, Message::DecisionQuery { from_cid: Cid(1) }),
        ])
    );
    // Re-armed with the doubled interval.
    assert_eq!(leader.next_deadline_ms(), Some(1300));
}

#[test]
fn leader_change_timers_armed_by_a_rejected_stopdata_stay_armed_and_fire() {
    let c = bft();
    // The refused input installed regency 1 (see `non_leader_given_stopdata`): the STOPDATA
    // is resent until the SYNC arrives, and the change must complete within
    // request_timeout_ms.
    let mut replica = non_leader_given_stopdata(&c, &[0, 3]);
    let armed = |retransmit, leader_change| {
        vec![
            (TimerKind::Retransmit, retransmit),
            (TimerKind::LeaderChange, leader_change),
        ]
    };
    assert_eq!(timers(&replica), armed(1100, 2000));
    let my_stopdata = || empty_stopdata(&c, 2);
    // Its STOP is not resent (the regency it asked for is installed); its STOPDATA is, and the
    // next peer after this replica (3) is asked for decisions.
    assert_eq!(
        replica.on_timeout(1100),
        only_sent(vec![
            send(1, my_stopdata()),
            send(3, Message::DecisionQuery { from_cid: Cid(1) }),
        ])
    );
    assert_eq!(timers(&replica), armed(1300, 2000));
    // At 2000 both are due, earliest first: the retransmit (STOPDATA again, a query to the next
    // peer, replica 0, whose budget has refilled), then the leader change timeout, which asks
    // for regency 2 from regency 1.
    assert_eq!(
        replica.on_timeout(2000),
        only_sent(vec![
            send(1, my_stopdata()),
            send(0, Message::DecisionQuery { from_cid: Cid(1) }),
            broadcast(Message::Stop(c.stop(2, Regency(2), Regency(1)))),
        ])
    );
    // The next change gets twice as long (2000 + 1000 << 1); the retransmit interval doubled
    // to 400.
    assert_eq!(timers(&replica), armed(2400, 4000));
}

/// Group commit (`Output::absorb`): the outputs of two inputs performed as one keep every
/// message after every record produced before it. A message the later input may send at once
/// waits for the earlier input's records (it may promise them: a vote sent again); with no
/// earlier records it still leaves at once.
#[test]
fn absorbed_outputs_keep_every_message_after_the_records_before_it() {
    let msg = |cid: u64| Outgoing::Broadcast(Message::DecisionQuery { from_cid: Cid(cid) });
    let record = |r: u64| PersistRecord::Regency(Regency(r));
    let earlier = Output {
        send_now: vec![msg(1)],
        persist: vec![record(1)],
        send_after_persist: vec![msg(2)],
        ..Output::default()
    };
    let later = Output {
        send_now: vec![msg(3)],
        persist: vec![record(2)],
        send_after_persist: vec![msg(4)],
        service: vec![ServiceWork::TakeSnapshot { cid: Cid(5) }],
        rejections: vec![Rejection::NotLeader],
    };
    let mut group = earlier;
    group.absorb(later.clone());
    assert_eq!(
        group,
        Output {
            send_now: vec![msg(1)],
            persist: vec![record(1), record(2)],
            send_after_persist: vec![msg(2), msg(3), msg(4)],
            service: vec![ServiceWork::TakeSnapshot { cid: Cid(5) }],
            rejections: vec![Rejection::NotLeader],
        }
    );
    // Nothing recorded before: the later input's immediate messages stay immediate.
    let mut group = Output {
        send_now: vec![msg(1)],
        ..Output::default()
    };
    group.absorb(later);
    assert_eq!(
        group,
        Output {
            send_now: vec![msg(1), msg(3)],
            persist: vec![record(2)],
            send_after_persist: vec![msg(4)],
            service: vec![ServiceWork::TakeSnapshot { cid: Cid(5) }],
            rejections: vec![Rejection::NotLeader],
        }
    );
}
