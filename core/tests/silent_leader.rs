//! A silent leader (docs/design.md §3.9, "A silent leader"): a follower that holds a request
//! that timed out (and so was forwarded) and has heard nothing at all from its leader for
//! `leader_silence_ms` sends STOP then, without waiting for the request's second timeout; a
//! leader that says anything at all gets the full two timeouts, as before.

mod common;

use smr_core::engine::TimerKind;
use smr_core::message::{Cid, Message, Regency, Signed, Stop};
use smr_core::{Engine, Output, Peer};

use common::{bft, broadcast, cft, only_sent, send, timers, Cluster};

fn heartbeat() -> Message {
    Message::Heartbeat {
        regency: Regency(0),
        last_decided: Cid(0),
    }
}

/// Replica 1, a follower started at 0 ms, holding the client's request 1 since 0 ms, whose
/// leader (replica 0) was last heard from at `leader_heard_ms`.
fn follower(c: &Cluster, leader_heard_ms: u64) -> Engine {
    let mut follower = c.engine(1);
    assert_eq!(follower.start(0), Output::default());
    let out = c.deliver(
        &mut follower,
        0,
        c.client_peer(),
        Message::Request(c.request(1)),
    );
    assert_eq!(out, Output::default());
    let out = c.deliver(
        &mut follower,
        leader_heard_ms,
        Peer::Replica(0),
        heartbeat(),
    );
    assert_eq!(out, Output::default());
    follower
}

fn stop_for_regency_1(c: &Cluster) -> Message {
    Message::Stop(Signed::new(
        Stop {
            replica: 1,
            regency: Regency(1),
            from_regency: Regency(0),
            pending: vec![c.request(1)],
        },
        c.signer(1),
    ))
}

/// What the follower sends at the request's first timeout at 1000 ms: its own heartbeat (due
/// at 500), the forward, and a decision query.
fn first_timeout(c: &Cluster) -> Vec<smr_core::engine::Outgoing> {
    vec![
        broadcast(heartbeat()),
        send(0, Message::Forward(vec![c.request(1)])),
        send(2, Message::DecisionQuery { from_cid: Cid(1) }),
    ]
}

/// The leader was last heard at 200 ms: the first timeout at 1000 forwards and arms the
/// silence deadline at 1200 (200 + `leader_silence_ms`, which is 1000 with the default
/// timeouts); at 1199 nothing happens, at 1200 the STOP goes out — 800 ms before the
/// request's second timeout would have sent it.
fn a_follower_stops_one_silence_after_it_last_heard_its_leader(c: &Cluster) {
    let mut f = follower(c, 200);
    assert_eq!(f.leader_silence_ms(), 1000);
    assert_eq!(f.on_timeout(1000), only_sent(first_timeout(c)));
    assert!(
        timers(&f).contains(&(TimerKind::LeaderSilence, 1200)),
        "{:?}",
        timers(&f)
    );
    assert_eq!(f.on_timeout(1199), Output::default());
    assert_eq!(
        f.on_timeout(1200),
        only_sent(vec![broadcast(stop_for_regency_1(c))])
    );
    assert_eq!(
        (f.stats().stops_sent, f.stats().stops_for_silent_leader),
        (1, 1)
    );
    assert!(!timers(&f)
        .iter()
        .any(|(k, _)| *k == TimerKind::LeaderSilence));
    // The second timeout at 2000 changes nothing: the STOP is out (it is resent by the
    // retransmit timer, not here).
    assert_eq!(f.stats().stops_sent, 1);
}

#[test]
fn bft_a_follower_stops_one_silence_after_it_last_heard_its_leader() {
    a_follower_stops_one_silence_after_it_last_heard_its_leader(&bft());
}

#[test]
fn cft_a_follower_stops_one_silence_after_it_last_heard_its_leader() {
    a_follower_stops_one_silence_after_it_last_heard_its_leader(&cft());
}

/// A leader silent since the follower started (0 ms) gets its STOP at the request's first
/// timeout, beside the forward: it has had a full `leader_silence_ms` to say something.
#[test]
fn a_leader_silent_since_the_start_gets_its_stop_at_the_first_timeout() {
    let c = bft();
    let mut f = c.engine(1);
    assert_eq!(f.start(0), Output::default());
    c.deliver(&mut f, 0, c.client_peer(), Message::Request(c.request(1)));
    let mut expected = first_timeout(&c);
    expected.push(broadcast(stop_for_regency_1(&c)));
    assert_eq!(f.on_timeout(1000), only_sent(expected));
    assert_eq!(f.stats().stops_for_silent_leader, 1);
}

/// Anything from the leader before the deadline moves it on: no STOP at 1200, the deadline
/// re-armed one silence after the new message, and the request's second timeout (2000) still
/// sends the STOP, as it always did, counted as an ordinary one.
#[test]
fn a_leader_heard_before_the_deadline_gets_the_full_two_timeouts() {
    let c = bft();
    let mut f = follower(&c, 200);
    assert_eq!(f.on_timeout(1000), only_sent(first_timeout(&c)));
    let out = c.deliver(&mut f, 1100, Peer::Replica(0), heartbeat());
    assert_eq!(out, Output::default());
    assert_eq!(f.on_timeout(1200), Output::default());
    assert!(
        timers(&f).contains(&(TimerKind::LeaderSilence, 2100)),
        "{:?}",
        timers(&f)
    );
    // The follower's own heartbeat (due at 1500), then the second timeout at 2000 (with the
    // next heartbeat).
    assert_eq!(f.on_timeout(1500), only_sent(vec![broadcast(heartbeat())]));
    assert_eq!(
        f.on_timeout(2000),
        only_sent(vec![
            send(0, Message::Forward(vec![c.request(1)])),
            send(3, Message::DecisionQuery { from_cid: Cid(1) }),
            broadcast(stop_for_regency_1(&c)),
            broadcast(heartbeat()),
        ])
    );
    assert_eq!(
        (f.stats().stops_sent, f.stats().stops_for_silent_leader),
        (1, 0)
    );
}

/// A message from another replica is not the leader's: it does not move the deadline.
#[test]
fn a_message_from_another_replica_does_not_count_as_the_leaders() {
    let c = bft();
    let mut f = follower(&c, 200);
    assert_eq!(f.on_timeout(1000), only_sent(first_timeout(&c)));
    let out = c.deliver(&mut f, 1100, Peer::Replica(2), heartbeat());
    assert_eq!(out, Output::default());
    assert_eq!(
        f.on_timeout(1200),
        only_sent(vec![broadcast(stop_for_regency_1(&c))])
    );
}

/// With nothing pending there is nothing to blame the leader for: a silent leader alone (an
/// idle cluster whose leader's heartbeats are lost) brings no STOP and arms no silence timer.
#[test]
fn a_silent_leader_with_nothing_pending_brings_no_stop() {
    let c = bft();
    let mut f = c.engine(1);
    assert_eq!(f.start(0), Output::default());
    for now in (500..=10_000).step_by(500) {
        assert_eq!(f.on_timeout(now), only_sent(vec![broadcast(heartbeat())]));
    }
    assert_eq!(f.stats().stops_sent, 0);
    assert_eq!(timers(&f), vec![(TimerKind::Heartbeat, 10_500)]);
}

/// The leader never blames itself for its own silence: a leader whose request times out
/// arms no silence timer.
#[test]
fn the_leader_arms_no_silence_timer() {
    let c = bft();
    let mut leader = c.engine(0);
    assert_eq!(leader.start(0), Output::default());
    let _ = c.deliver(
        &mut leader,
        0,
        c.client_peer(),
        Message::Request(c.request(1)),
    );
    for now in (500..=5_000).step_by(500) {
        let _ = leader.on_timeout(now);
        assert!(
            !timers(&leader)
                .iter()
                .any(|(k, _)| *k == TimerKind::LeaderSilence),
            "{now}: {:?}",
            timers(&leader)
        );
    }
    assert_eq!(leader.stats().stops_for_silent_leader, 0);
}

/// Entering a regency restarts retransmission at `retransmit_initial_ms` (100 ms by default):
/// during the outage the follower's retransmit interval doubled (100, 200, 400, 800), and a
/// STOPDATA that reached the new leader before it entered the regency would otherwise be
/// resent only 1600 ms later.
#[test]
fn entering_a_regency_restarts_retransmission_at_its_first_interval() {
    let c = bft();
    let mut f = c.engine(1);
    assert_eq!(f.start(0), Output::default());
    c.deliver(&mut f, 0, c.client_peer(), Message::Request(c.request(1)));
    // The silent leader's STOP at 1000, then four retransmissions, each interval doubling.
    let _ = f.on_timeout(1000);
    let mut now = 1000;
    for interval in [100, 200, 400, 800] {
        let due = timers(&f)
            .into_iter()
            .find(|(k, _)| *k == TimerKind::Retransmit)
            .map(|(_, d)| d);
        assert_eq!(due, Some(now + interval), "{:?}", timers(&f));
        now += interval;
        let _ = f.on_timeout(now);
    }
    // STOPs from replicas 2 and 3 make 2f+1 with its own: it installs regency 1 (replica 1,
    // itself, leads it) at 3000.
    for r in [2, 3] {
        let _ = c.deliver(
            &mut f,
            3000,
            Peer::Replica(r),
            Message::Stop(c.stop(r, Regency(1), Regency(0))),
        );
    }
    assert_eq!(f.regency(), Regency(1));
    let due = timers(&f)
        .into_iter()
        .find(|(k, _)| *k == TimerKind::Retransmit)
        .map(|(_, d)| d);
    assert_eq!(due, Some(3100), "{:?}", timers(&f));
}
