//! Linearizability checkers for recorded counter and key-value (register) histories.
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

// ----- registers (the kv service) -------------------------------------------------------------

/// What an operation on one key of the kv service was, and what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterCall {
    /// `Put` of a value no other put wrote; returned the value the key had before (`None` if
    /// unset).
    Put {
        value: Vec<u8>,
        previous: Option<Vec<u8>>,
    },
    /// `Get`, which returned the key's value (`None` if unset).
    Get { value: Option<Vec<u8>> },
}

/// One completed operation on one key, as its client saw it.
#[derive(Clone, Debug)]
pub struct RegisterEvent {
    pub key: Vec<u8>,
    pub call: RegisterCall,
    pub invoked: Instant,
    pub returned: Instant,
}

/// Why a kv history is not linearizable (or cannot be decided).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterViolation {
    #[error("key {key}: two puts wrote the same value {value}; the checker needs unique values")]
    ValueWrittenTwice { key: String, value: String },
    #[error("key {key}: two puts both returned {previous} as the previous value: one write was lost or executed twice")]
    Fork { key: String, previous: String },
    #[error("key {key}: {what} returned {value}, which no completed put wrote")]
    UnknownValue {
        key: String,
        what: &'static str,
        value: String,
    },
    #[error("key {key}: the put of {value} is not in the chain of writes from the unset key (lost, or a cycle)")]
    Detached { key: String, value: String },
    #[error("key {key}: {violation}")]
    Order {
        key: String,
        #[source]
        violation: HistoryViolation,
    },
}

fn shown(value: &Option<Vec<u8>>) -> String {
    match value {
        None => "(unset)".to_string(),
        Some(v) => String::from_utf8_lossy(v).into_owned(),
    }
}

/// Checks a history of puts of unique values and gets on the kv service's keys, all unset at
/// the start, for linearizability. Keys are checked one at a time (linearizability is local:
/// a history is linearizable if and only if each object's is).
///
/// Every put returns the value it replaced, so with unique values the puts of a key form one
/// chain from "unset": the put that returned `None` comes first, the put that returned v comes
/// right after the put of v. That chain is the only order that explains the returned values, so,
/// as for the counter, each operation has a fixed place in it (a put its position, a get the
/// position of the put whose value it read), and [`check_counter_history`]'s real-time sweep
/// decides the rest.
///
/// Only completed operations may be given. A put whose client gave up but that executed leaves a
/// gap in the chain that is reported ([`RegisterViolation::UnknownValue`]) rather than guessed
/// around, so a test that gives such histories must not let operations time out.
pub fn check_register_history(events: &[RegisterEvent]) -> Result<(), RegisterViolation> {
    use std::collections::BTreeMap;
    let mut by_key: BTreeMap<&[u8], Vec<&RegisterEvent>> = BTreeMap::new();
    for e in events {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, events) in by_key {
        check_one_register(key, &events)?;
    }
    Ok(())
}

fn check_one_register(key: &[u8], events: &[&RegisterEvent]) -> Result<(), RegisterViolation> {
    use std::collections::{HashMap, HashSet};
    let key_text = String::from_utf8_lossy(key).into_owned();
    // previous value -> the value the put after it wrote.
    let mut next: HashMap<Option<&[u8]>, &[u8]> = HashMap::new();
    let mut written: HashSet<&[u8]> = HashSet::new();
    for e in events {
        if let RegisterCall::Put { value, previous } = &e.call {
            if !written.insert(value) {
                return Err(RegisterViolation::ValueWrittenTwice {
                    key: key_text,
                    value: shown(&Some(value.clone())),
                });
            }
            if next.insert(previous.as_deref(), value).is_some() {
                return Err(RegisterViolation::Fork {
                    key: key_text,
                    previous: shown(previous),
                });
            }
        }
    }
    // Walk the chain from "unset"; at most one step per put, so a cycle cannot loop for ever.
    let mut position: HashMap<Option<&[u8]>, i64> = HashMap::new();
    position.insert(None, 0);
    let mut at: Option<&[u8]> = None;
    let mut steps = 0i64;
    while let Some(value) = next.get(&at) {
        steps += 1;
        if position.insert(Some(value), steps).is_some() || steps as usize > written.len() {
            break;
        }
        at = Some(value);
    }
    let mut counter_events = Vec::with_capacity(events.len());
    for e in events {
        let (call, value) = match &e.call {
            RegisterCall::Put { value, previous } => {
                if !position.contains_key(&previous.as_deref()) {
                    return Err(RegisterViolation::UnknownValue {
                        key: key_text,
                        what: "a put",
                        value: shown(previous),
                    });
                }
                match position.get(&Some(value.as_slice())) {
                    Some(p) => (CounterCall::Add, *p),
                    None => {
                        return Err(RegisterViolation::Detached {
                            key: key_text,
                            value: shown(&Some(value.clone())),
                        })
                    }
                }
            }
            RegisterCall::Get { value } => match position.get(&value.as_deref()) {
                Some(p) => (CounterCall::Get, *p),
                None => {
                    return Err(RegisterViolation::UnknownValue {
                        key: key_text,
                        what: "a get",
                        value: shown(value),
                    })
                }
            },
        };
        counter_events.push(CounterEvent {
            call,
            invoked: e.invoked,
            returned: e.returned,
            value,
        });
    }
    check_counter_history(&counter_events).map_err(|violation| RegisterViolation::Order {
        key: key_text,
        violation,
    })
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
    fn put(
        origin: Instant,
        from: u64,
        to: u64,
        value: &str,
        previous: Option<&str>,
    ) -> RegisterEvent {
        RegisterEvent {
            key: b"k".to_vec(),
            call: RegisterCall::Put {
                value: value.as_bytes().to_vec(),
                previous: previous.map(|p| p.as_bytes().to_vec()),
            },
            invoked: origin + Duration::from_millis(from),
            returned: origin + Duration::from_millis(to),
        }
    }

    fn get(origin: Instant, from: u64, to: u64, value: Option<&str>) -> RegisterEvent {
        RegisterEvent {
            key: b"k".to_vec(),
            call: RegisterCall::Get {
                value: value.map(|v| v.as_bytes().to_vec()),
            },
            invoked: origin + Duration::from_millis(from),
            returned: origin + Duration::from_millis(to),
        }
    }

    #[test]
    fn concurrent_puts_chained_by_their_previous_values_and_gets_between_them_are_linearizable() {
        let o = Instant::now();
        let events = vec![
            get(o, 0, 1, None),
            // b and a overlap; b executed first (a returned b as previous).
            put(o, 2, 10, "a", Some("b")),
            put(o, 3, 9, "b", None),
            get(o, 11, 12, Some("a")),
            put(o, 13, 14, "c", Some("a")),
            get(o, 15, 16, Some("c")),
        ];
        assert_eq!(check_register_history(&events), Ok(()));
    }

    #[test]
    fn a_get_of_an_overwritten_value_after_the_overwrite_finished_is_refused() {
        let o = Instant::now();
        let events = vec![
            put(o, 0, 1, "a", None),
            put(o, 2, 3, "b", Some("a")),
            get(o, 4, 5, Some("a")),
        ];
        assert!(matches!(
            check_register_history(&events),
            Err(RegisterViolation::Order { .. })
        ));
    }

    #[test]
    fn two_puts_that_replaced_the_same_value_are_refused() {
        let o = Instant::now();
        let events = vec![put(o, 0, 1, "a", None), put(o, 0, 1, "b", None)];
        assert_eq!(
            check_register_history(&events),
            Err(RegisterViolation::Fork {
                key: "k".into(),
                previous: "(unset)".into()
            })
        );
    }

    #[test]
    fn a_get_of_a_value_nobody_wrote_is_refused() {
        let o = Instant::now();
        let events = vec![put(o, 0, 1, "a", None), get(o, 2, 3, Some("z"))];
        assert!(matches!(
            check_register_history(&events),
            Err(RegisterViolation::UnknownValue { what: "a get", .. })
        ));
    }

    #[test]
    fn a_cycle_of_puts_detached_from_the_unset_key_is_refused() {
        let o = Instant::now();
        let events = vec![put(o, 0, 1, "a", Some("b")), put(o, 0, 1, "b", Some("a"))];
        assert!(matches!(
            check_register_history(&events),
            Err(RegisterViolation::UnknownValue { .. } | RegisterViolation::Detached { .. })
        ));
    }
}
