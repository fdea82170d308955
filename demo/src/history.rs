//! A linearizability checker for recorded counter histories.
//!
//! The process-level tests record, for every operation on the counter service, when its client
//! invoked it, when the reply came back, and what it returned. [`check_counter_history`] then
//! decides whether some sequential order of those operations both respects real time (an
//! operation that returned before another was invoked comes first) and explains every returned
//! value.
//!
//! The counter makes that cheap. Every `Add(1)` returns the counter after it, so completed adds
//! return distinct values and the only order that can explain them is by value. A `Get` that
//! returned g sits after the add that returned g and before the one that returned g+1. So each
//! operation has a fixed place in the only candidate order, and the history is linearizable if
//! and only if no operation that returned before another was invoked has a later place. That is
//! checked in O(n log n) by a sweep over invocation times.
//!
//! Adds whose clients gave up (no reply: maybe executed, maybe not) are left out. They can only
//! fill values nobody else returned, so leaving them out never hides a violation among the
//! operations that did complete.

use std::time::Instant;

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterCall {
    /// `Add(1)`, which returned the counter after it.
    Add,
    /// `Get`, which returned the counter.
    Get,
}

/// One completed operation, as its client saw it.
#[derive(Clone, Copy, Debug)]
pub struct CounterEvent {
    pub call: CounterCall,
    pub invoked: Instant,
    pub returned: Instant,
    pub value: i64,
}

impl CounterEvent {
    /// Its place in the only order that can explain the values: an add that returned v is the
    /// v-th add; a get that returned g comes after it and before add g+1.
    fn place(&self) -> (i64, u8) {
        match self.call {
            CounterCall::Add => (self.value, 0),
            CounterCall::Get => (self.value, 1),
        }
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryViolation {
    #[error("two adds returned the same value {value}: one of them was executed twice or lost")]
    RepeatedAdd { value: i64 },
    #[error(
        "{call:?} returned {value}, which a counter that starts at 0 and only grows never returns"
    )]
    ImpossibleValue { call: CounterCall, value: i64 },
    #[error(
        "real-time order broken: {earlier:?} returned {earlier_value} and finished before \
         {later:?} (which returned {later_value}) was invoked, yet it must come after it"
    )]
    RealTimeOrder {
        earlier: CounterCall,
        earlier_value: i64,
        later: CounterCall,
        later_value: i64,
    },
}

/// Checks a history of `Add(1)`s and `Get`s on one counter that started at 0. Returns the first
/// violation found.
pub fn check_counter_history(events: &[CounterEvent]) -> Result<(), HistoryViolation> {
    let mut add_values: Vec<i64> = events
        .iter()
        .filter(|e| e.call == CounterCall::Add)
        .map(|e| e.value)
        .collect();
    add_values.sort_unstable();
    if let Some(w) = add_values.windows(2).find(|w| w[0] == w[1]) {
        return Err(HistoryViolation::RepeatedAdd { value: w[0] });
    }
    // A get may also see adds whose clients gave up, so only the lower bounds are certain here;
    // the tests compare the final count with what was sent separately.
    if let Some(e) = events.iter().find(|e| match e.call {
        CounterCall::Add => e.value < 1,
        CounterCall::Get => e.value < 0,
    }) {
        return Err(HistoryViolation::ImpossibleValue {
            call: e.call,
            value: e.value,
        });
    }

    // Sweep the operations by invocation time, keeping the latest place among those that had
    // returned before the current one was invoked; that place must not be after the current
    // operation's.
    let mut by_invoked: Vec<&CounterEvent> = events.iter().collect();
    by_invoked.sort_by_key(|e| e.invoked);
    let mut by_returned: Vec<&CounterEvent> = events.iter().collect();
    by_returned.sort_by_key(|e| e.returned);
    let mut finished = by_returned.iter().peekable();
    let mut latest: Option<&CounterEvent> = None;
    for e in by_invoked {
        while let Some(done) = finished.next_if(|d| d.returned < e.invoked) {
            if latest.is_none_or(|l| done.place() > l.place()) {
                latest = Some(done);
            }
        }
        if let Some(l) = latest {
            if l.place() > e.place() {
                return Err(HistoryViolation::RealTimeOrder {
                    earlier: l.call,
                    earlier_value: l.value,
                    later: e.call,
                    later_value: e.value,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An event invoked at `from` ms and returned at `to` ms after a common origin.
    fn ev(origin: Instant, call: CounterCall, from: u64, to: u64, value: i64) -> CounterEvent {
        CounterEvent {
            call,
            invoked: origin + Duration::from_millis(from),
            returned: origin + Duration::from_millis(to),
            value,
        }
    }

    use CounterCall::{Add, Get};

    #[test]
    fn concurrent_adds_in_any_value_order_and_reads_between_them_are_linearizable() {
        let t = Instant::now();
        let history = [
            // Two overlapping adds may take either order.
            ev(t, Add, 0, 10, 2),
            ev(t, Add, 1, 9, 1),
            // A read overlapping the third add may or may not see it.
            ev(t, Get, 11, 20, 2),
            ev(t, Add, 12, 25, 3),
            ev(t, Get, 13, 30, 3),
            // After everything.
            ev(t, Get, 31, 32, 3),
            ev(t, Add, 33, 40, 4),
        ];
        assert_eq!(check_counter_history(&history), Ok(()));
    }

    #[test]
    fn an_add_that_returned_a_smaller_value_after_another_finished_is_refused() {
        let t = Instant::now();
        // The add that returned 2 finished before the add that returned 1 began: lost, then
        // redone, say after a crash.
        let history = [ev(t, Add, 0, 5, 2), ev(t, Add, 6, 9, 1)];
        assert_eq!(
            check_counter_history(&history),
            Err(HistoryViolation::RealTimeOrder {
                earlier: Add,
                earlier_value: 2,
                later: Add,
                later_value: 1
            })
        );
    }

    #[test]
    fn a_read_that_misses_a_finished_add_is_refused() {
        let t = Instant::now();
        let history = [ev(t, Add, 0, 5, 1), ev(t, Get, 6, 7, 0)];
        assert!(matches!(
            check_counter_history(&history),
            Err(HistoryViolation::RealTimeOrder { later: Get, .. })
        ));
    }

    #[test]
    fn a_read_that_goes_back_in_time_after_another_read_is_refused() {
        let t = Instant::now();
        // The add is still in flight (its client gave up on it, say), but once one read saw
        // it, a later read must see it too.
        let history = [
            ev(t, Add, 0, 100, 1),
            ev(t, Get, 10, 20, 1),
            ev(t, Get, 30, 40, 0),
        ];
        assert!(matches!(
            check_counter_history(&history),
            Err(HistoryViolation::RealTimeOrder {
                earlier: Get,
                earlier_value: 1,
                later: Get,
                later_value: 0
            })
        ));
    }

    #[test]
    fn a_read_that_sees_an_add_before_it_was_invoked_is_refused() {
        let t = Instant::now();
        let history = [ev(t, Get, 0, 5, 1), ev(t, Add, 6, 9, 1)];
        assert!(matches!(
            check_counter_history(&history),
            Err(HistoryViolation::RealTimeOrder {
                earlier: Get,
                later: Add,
                ..
            })
        ));
    }

    #[test]
    fn an_add_returning_zero_is_refused() {
        let t = Instant::now();
        assert_eq!(
            check_counter_history(&[ev(t, Add, 0, 5, 0)]),
            Err(HistoryViolation::ImpossibleValue {
                call: Add,
                value: 0
            })
        );
    }

    #[test]
    fn two_adds_returning_one_value_are_refused() {
        let t = Instant::now();
        let history = [ev(t, Add, 0, 5, 1), ev(t, Add, 1, 6, 1)];
        assert_eq!(
            check_counter_history(&history),
            Err(HistoryViolation::RepeatedAdd { value: 1 })
        );
    }
}
