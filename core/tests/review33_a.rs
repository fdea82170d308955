//! Review 33-a of the silent-leader rule (docs/design.md §3.9, "A silent leader"): properties
//! over arbitrary schedules of a follower's inputs and timers.

mod common;

use proptest::prelude::*;
use smr_core::engine::{Outgoing, TimerKind};
use smr_core::message::{Cid, Message, Regency};
use smr_core::{Engine, Output, Peer};

use common::{bft, cft, Cluster};

/// One step of the schedule, after `elapsed_ms` more milliseconds.
#[derive(Clone, Debug)]
enum Step {
    /// The client's request `seq` reaches the follower (only the follower: the leader never
    /// sees it unless the follower forwards it).
    Request(u64),
    /// A heartbeat of the leader (replica 0).
    LeaderHeartbeat,
    /// A heartbeat of another follower (replica 2): not the leader's word.
    OtherHeartbeat,
    /// The driver fires the timers due by now.
    Timers,
    /// Every other replica's STOP for the next regency arrives: the follower joins and
    /// installs it (its leader may be the follower itself).
    NextRegency,
}

fn step() -> impl Strategy<Value = (Step, u64)> {
    let step = prop_oneof![
        1 => (1u64..5).prop_map(Step::Request),
        2 => Just(Step::LeaderHeartbeat),
        1 => Just(Step::OtherHeartbeat),
        4 => Just(Step::Timers),
        1 => Just(Step::NextRegency),
    ];
    (step, 0u64..700)
}

fn heartbeat(regency: u64) -> Message {
    Message::Heartbeat {
        regency: Regency(regency),
        last_decided: Cid(0),
    }
}

/// Whether `out` forwards requests to `leader`.
fn forwards(out: &Output, leader: u32) -> bool {
    out.send_now.iter().any(|o| {
        matches!(
            o,
            Outgoing::Send {
                to: Peer::Replica(j),
                message: Message::Forward(_)
            } if *j == leader
        )
    })
}

/// The highest regency that a STOP of replica 1's in `out` asks for (0 if none).
fn stop_target(out: &Output) -> u64 {
    out.send_now
        .iter()
        .chain(&out.send_after_persist)
        .filter_map(|o| match o {
            Outgoing::Broadcast(Message::Stop(s)) if s.body.replica == 1 => Some(s.body.regency.0),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Runs `schedule` on replica 1 of `c` (replica 0 leads regency 0; regency r is led by
/// replica r mod n) and checks, after every step:
/// - no busy loop: once the timers due by now have fired, the next deadline is later than now;
/// - a STOP for a silent leader goes out only if the leader has really said nothing for
///   `leader_silence_ms` (its last message, or the start, that long ago or more);
/// - and it does go out: once a request was forwarded and the leader has said nothing for
///   `leader_silence_ms`, the timers due by then have sent a STOP for a regency above the
///   current one, now or before it entered the regency (nothing here executes a
///   request, and no catch-up holds it back);
/// - a replica that leads its regency never arms the silence timer.
///
/// With `heartbeat_ms` 500 (the default) the silence span is the request timeout (1000 ms); with
/// 800 it is two heartbeats (1600 ms), longer than a request timeout, so that a regency's
/// first request timeout comes before its leader has had a full span.
fn check_schedule(
    c: &Cluster,
    heartbeat_ms: u64,
    schedule: Vec<(Step, u64)>,
) -> Result<(), TestCaseError> {
    let mut cfg = c.cfg(1).into_inner();
    cfg.timeouts.heartbeat_ms = heartbeat_ms;
    let cfg = cfg.validate().expect("valid test config");
    let mut f = Engine::new(cfg, c.engine_signer(1));
    prop_assert_eq!(f.start(0), Output::default());
    let n = f.quorums().n() as u32;
    let silence_ms = f.leader_silence_ms();
    let mut now = 0u64;
    let mut regency = 0u64;
    // When the regency's leader last spoke (or the regency began), and whether a request was
    // forwarded in this regency (entering one restarts every request's timer).
    let mut leader_heard_ms = 0u64;
    let mut forwarded = false;
    // The highest regency this replica asked for in a STOP of its own.
    let mut own_stop_target = 0u64;
    for (step, elapsed_ms) in schedule {
        now += elapsed_ms;
        let leader = (regency % u64::from(n)) as u32;
        let silent_stops = f.stats().stops_for_silent_leader;
        let mut out = Output::default();
        match step {
            Step::Request(seq) => {
                out = c.deliver(
                    &mut f,
                    now,
                    c.client_peer(),
                    Message::Request(c.request(seq)),
                );
            }
            Step::LeaderHeartbeat => {
                if leader != 1 {
                    out = c.deliver(&mut f, now, Peer::Replica(leader), heartbeat(regency));
                    leader_heard_ms = now;
                }
            }
            Step::OtherHeartbeat => {
                let other = (leader + 1..leader + n)
                    .map(|j| j % n)
                    .find(|j| *j != 1)
                    .unwrap();
                out = c.deliver(&mut f, now, Peer::Replica(other), heartbeat(regency));
            }
            Step::Timers => {
                out = f.on_timeout(now);
                forwarded |= forwards(&out, leader);
                own_stop_target = own_stop_target.max(stop_target(&out));
                prop_assert!(
                    f.next_deadline_ms().is_none_or(|d| d > now),
                    "at {} a timer is due again at once: {:?}",
                    now,
                    f.timer_deadlines_ms().collect::<Vec<_>>()
                );
                if forwarded && now >= leader_heard_ms + silence_ms {
                    prop_assert!(
                        own_stop_target > regency,
                        "at {}: forwarded, leader {} silent since {}, and no STOP",
                        now,
                        leader,
                        leader_heard_ms
                    );
                }
            }
            Step::NextRegency => {
                if regency < 3 {
                    for j in (0..n).filter(|j| *j != 1) {
                        let stop = c.stop(j, Regency(regency + 1), Regency(regency));
                        let o = c.deliver(&mut f, now, Peer::Replica(j), Message::Stop(stop));
                        out.absorb(o);
                    }
                    regency += 1;
                    leader_heard_ms = now;
                    forwarded = false;
                }
            }
        }
        own_stop_target = own_stop_target.max(stop_target(&out));
        if f.stats().stops_for_silent_leader > silent_stops {
            prop_assert!(
                now >= leader_heard_ms + silence_ms,
                "at {}: a STOP for a silent leader heard at {}",
                now,
                leader_heard_ms
            );
        }
        prop_assert_eq!(f.regency(), Regency(regency));
        let armed = f
            .timer_deadlines_ms()
            .any(|(k, _)| k == TimerKind::LeaderSilence);
        prop_assert!(
            !armed || forwarded,
            "silence timer armed before any forward"
        );
        prop_assert!(!armed || !f.is_leader(), "the leader armed a silence timer");
    }
    Ok(())
}

proptest! {
    #[test]
    fn bft_a_silence_stop_comes_exactly_when_the_leader_is_silent_and_never_spins(
        schedule in proptest::collection::vec(step(), 0..60)
    ) {
        check_schedule(&bft(), 500, schedule)?;
    }

    #[test]
    fn bft_with_two_heartbeats_longer_than_a_request_timeout(
        schedule in proptest::collection::vec(step(), 0..60)
    ) {
        check_schedule(&bft(), 800, schedule)?;
    }

    #[test]
    fn cft_a_silence_stop_comes_exactly_when_the_leader_is_silent_and_never_spins(
        schedule in proptest::collection::vec(step(), 0..60)
    ) {
        check_schedule(&cft(), 500, schedule)?;
    }

    #[test]
    fn cft_with_two_heartbeats_longer_than_a_request_timeout(
        schedule in proptest::collection::vec(step(), 0..60)
    ) {
        check_schedule(&cft(), 800, schedule)?;
    }
}

/// A follower catching up by certified decisions holds its silence STOP back (the cluster
/// moved on, so the leader is not the one to blame), and the silence timer does not stay
/// armed at a deadline already passed: were it re-armed at 1200 at 1200, the driver, which
/// fires due timers before it takes any input, would spin on it until the catch-up window
/// (`request_timeout_ms` after the decision) ends.
#[test]
fn a_silence_held_back_by_a_catch_up_leaves_no_timer_due_at_once() {
    let c = bft();
    let mut f = c.engine(1);
    assert_eq!(f.start(0), Output::default());
    let _ = c.deliver(&mut f, 0, c.client_peer(), Message::Request(c.request(1)));
    let _ = c.deliver(&mut f, 200, Peer::Replica(0), heartbeat(0));
    let out = f.on_timeout(1000);
    assert!(forwards(&out, 0), "{out:?}");
    assert!(f
        .timer_deadlines_ms()
        .any(|t| t == (TimerKind::LeaderSilence, 1200)));
    // Replica 2 teaches it cid 1 (an empty batch) at 1150: it is catching up.
    let decision = c.decision(1, vec![]);
    let _ = c.deliver_ok(
        &mut f,
        1150,
        Peer::Replica(2),
        Message::Decisions(vec![decision]),
    );
    assert_eq!(f.last_executed(), Cid(1), "an empty batch needs no service");
    let out = f.on_timeout(1200);
    assert_eq!(stop_target(&out), 0, "{out:?}");
    assert_eq!(f.stats().stops_sent, 0);
    assert!(
        f.next_deadline_ms().is_none_or(|d| d > 1200),
        "{:?}",
        f.timer_deadlines_ms().collect::<Vec<_>>()
    );
    assert!(!f
        .timer_deadlines_ms()
        .any(|(k, _)| k == TimerKind::LeaderSilence));
}
