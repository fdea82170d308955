//! The demo services: a counter, a key-value map, and the benchmark's null service.
//!
//! Both are deterministic (their replies and states depend only on the ordered operations they
//! executed) and encode operations and replies compactly with [`smr_core::codec`] (bincode with
//! fixed-width integers). Bytes that do not decode to an operation get an error reply; nothing a
//! client sends can make a replica panic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smr_core::codec::{self, DecodeError};
use smr_core::Service;

/// Which demo service a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceKind {
    /// A signed 64-bit counter: `add N`, `get`.
    Counter,
    /// A map from byte strings to byte strings: `put K V`, `get K`.
    Kv,
    /// The benchmark's service: takes any operation, replies with a fixed number of bytes
    /// (`smr replica --reply-bytes`).
    Null,
}

impl ServiceKind {
    /// A fresh, empty instance of the service.
    pub fn create(self) -> Box<dyn Service> {
        match self {
            ServiceKind::Counter => Box::new(Counter::default()),
            ServiceKind::Kv => Box::new(KeyValue::default()),
            ServiceKind::Null => Box::new(NullService::new(0)),
        }
    }

    /// Like [`ServiceKind::create`]; the null service replies with `reply_bytes` bytes.
    pub fn create_with_reply_bytes(self, reply_bytes: usize) -> Box<dyn Service> {
        match self {
            ServiceKind::Null => Box::new(NullService::new(reply_bytes)),
            other => other.create(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Counter => "counter",
            ServiceKind::Kv => "kv",
            ServiceKind::Null => "null",
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ----- counter --------------------------------------------------------------------------------

/// An operation on the [`Counter`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterOp {
    /// Adds to the counter; replies with the new value. Overflow is refused, not wrapped.
    Add(i64),
    /// Replies with the value. Read-only, so it may also run as an unordered query.
    Get,
}

/// The [`Counter`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterReply {
    /// The value after the operation.
    Value(i64),
    /// The operation was refused; the state is unchanged.
    Error(String),
}

impl CounterOp {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

impl CounterReply {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<CounterReply, DecodeError> {
        codec::decode(bytes)
    }
}

/// A replicated signed 64-bit counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    value: i64,
}

impl Counter {
    pub fn value(&self) -> i64 {
        self.value
    }
}

impl Service for Counter {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let reply = match codec::decode::<CounterOp>(op) {
            Ok(CounterOp::Add(n)) => match self.value.checked_add(n) {
                Some(v) => {
                    self.value = v;
                    CounterReply::Value(v)
                }
                None => CounterReply::Error(format!(
                    "adding {n} to {} overflows a 64-bit counter",
                    self.value
                )),
            },
            Ok(CounterOp::Get) => CounterReply::Value(self.value),
            Err(e) => CounterReply::Error(format!("not a counter operation: {e}")),
        };
        reply.encode()
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        let reply = match codec::decode::<CounterOp>(op) {
            Ok(CounterOp::Get) => CounterReply::Value(self.value),
            Ok(CounterOp::Add(_)) => {
                CounterReply::Error("add changes the counter; it cannot run as a query".into())
            }
            Err(e) => CounterReply::Error(format!("not a counter operation: {e}")),
        };
        reply.encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.value)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.value = codec::decode(snapshot).map_err(|e| format!("bad counter snapshot: {e}"))?;
        Ok(())
    }
}

// ----- key-value map --------------------------------------------------------------------------

/// An operation on the [`KeyValue`] map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value`; replies with the previous value.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Replies with the value of `key`. Read-only.
    Get { key: Vec<u8> },
}

/// The [`KeyValue`] map's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// Answer to a put: the value the key had before, if any.
    Previous(Option<Vec<u8>>),
    /// Answer to a get: the value, or `None` if the key is not set.
    Value(Option<Vec<u8>>),
    /// The operation was refused; the state is unchanged.
    Error(String),
}

impl KvOp {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

impl KvReply {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<KvReply, DecodeError> {
        codec::decode(bytes)
    }
}

/// A replicated map. A `BTreeMap`, so that snapshots (and so state digests) depend only on the
/// contents, never on insertion order or hashing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KeyValue {
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Service for KeyValue {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let reply = match codec::decode::<KvOp>(op) {
            Ok(KvOp::Put { key, value }) => KvReply::Previous(self.entries.insert(key, value)),
            Ok(KvOp::Get { key }) => KvReply::Value(self.entries.get(&key).cloned()),
            Err(e) => KvReply::Error(format!("not a kv operation: {e}")),
        };
        reply.encode()
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        let reply = match codec::decode::<KvOp>(op) {
            Ok(KvOp::Get { key }) => KvReply::Value(self.entries.get(&key).cloned()),
            Ok(KvOp::Put { .. }) => {
                KvReply::Error("put changes the map; it cannot run as a query".into())
            }
            Err(e) => KvReply::Error(format!("not a kv operation: {e}")),
        };
        reply.encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.entries)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.entries = codec::decode(snapshot).map_err(|e| format!("bad kv snapshot: {e}"))?;
        Ok(())
    }
}

// ----- null service ---------------------------------------------------------------------------

/// The benchmark's service (like BFT-SMaRt's ThroughputLatency server): any bytes are an
/// operation, and every reply is `reply_bytes` long. It still executes in order: its state is the
/// number of operations executed and an order-sensitive hash chain over them, so replicas that
/// executed different sequences have different digests. The first (up to) 8 bytes of a reply are
/// the operation's position in the sequence, so distinct requests get distinct replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NullService {
    reply_bytes: usize,
    executed: u64,
    chain: u64,
}

impl NullService {
    pub fn new(reply_bytes: usize) -> NullService {
        NullService {
            reply_bytes,
            executed: 0,
            chain: FNV_OFFSET,
        }
    }

    pub fn executed(&self) -> u64 {
        self.executed
    }

    fn reply(&self) -> Vec<u8> {
        let mut reply = vec![0u8; self.reply_bytes];
        let position = self.executed.to_le_bytes();
        let n = self.reply_bytes.min(position.len());
        reply[..n].copy_from_slice(&position[..n]);
        reply
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Service for NullService {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        self.executed += 1;
        // FNV-1a, eight bytes at a time, over the length and the bytes, continuing from the
        // previous state.
        let mut h = self.chain;
        let mut mix = |word: u64| {
            h ^= word;
            h = h.wrapping_mul(FNV_PRIME);
        };
        mix(op.len() as u64);
        let mut words = op.chunks_exact(8);
        for w in &mut words {
            mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        mix(u64::from_le_bytes(tail));
        self.chain = h;
        self.reply()
    }

    fn query(&self, _op: &[u8]) -> Vec<u8> {
        self.reply()
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&(self.executed, self.chain))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (executed, chain) =
            codec::decode(snapshot).map_err(|e| format!("bad null-service snapshot: {e}"))?;
        self.executed = executed;
        self.chain = chain;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_reply(bytes: Vec<u8>) -> CounterReply {
        CounterReply::decode(&bytes).expect("a counter reply")
    }

    fn kv_reply(bytes: Vec<u8>) -> KvReply {
        KvReply::decode(&bytes).expect("a kv reply")
    }

    fn put(key: &str, value: &str) -> Vec<u8> {
        KvOp::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode()
    }

    fn get(key: &str) -> Vec<u8> {
        KvOp::Get { key: key.into() }.encode()
    }

    #[test]
    fn counter_add_returns_the_new_value_and_get_reads_it() {
        let mut c = Counter::default();
        assert_eq!(
            counter_reply(c.execute(&CounterOp::Add(5).encode())),
            CounterReply::Value(5)
        );
        assert_eq!(
            counter_reply(c.execute(&CounterOp::Add(-7).encode())),
            CounterReply::Value(-2)
        );
        assert_eq!(
            counter_reply(c.execute(&CounterOp::Get.encode())),
            CounterReply::Value(-2)
        );
        assert_eq!(
            counter_reply(c.query(&CounterOp::Get.encode())),
            CounterReply::Value(-2)
        );
    }

    #[test]
    fn counter_overflow_is_refused_and_leaves_the_value() {
        let mut c = Counter::default();
        c.execute(&CounterOp::Add(i64::MAX).encode());
        let reply = counter_reply(c.execute(&CounterOp::Add(1).encode()));
        assert!(
            matches!(&reply, CounterReply::Error(m) if m.contains("overflow")),
            "{reply:?}"
        );
        assert_eq!(c.value(), i64::MAX);
    }

    #[test]
    fn counter_query_refuses_add_without_changing_state() {
        let c = Counter::default();
        let reply = counter_reply(c.query(&CounterOp::Add(3).encode()));
        assert!(matches!(reply, CounterReply::Error(_)), "{reply:?}");
        assert_eq!(c.value(), 0);
    }

    #[test]
    fn counter_snapshot_restores_the_same_state_and_digest() {
        let mut a = Counter::default();
        a.execute(&CounterOp::Add(41).encode());
        let mut b = Counter::default();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.state_digest(), b.state_digest());
        assert_ne!(a.state_digest(), Counter::default().state_digest());
        // Not 8 bytes, so not an i64; a failed restore leaves the state as it was.
        assert!(b.restore(b"short").is_err());
        assert!(b.restore(b"ninebytes").is_err());
        assert_eq!(b.value(), 41);
    }

    #[test]
    fn kv_put_returns_the_previous_value_and_get_reads_it() {
        let mut m = KeyValue::default();
        assert_eq!(kv_reply(m.execute(&put("a", "1"))), KvReply::Previous(None));
        assert_eq!(
            kv_reply(m.execute(&put("a", "2"))),
            KvReply::Previous(Some(b"1".to_vec()))
        );
        assert_eq!(
            kv_reply(m.execute(&get("a"))),
            KvReply::Value(Some(b"2".to_vec()))
        );
        assert_eq!(
            kv_reply(m.query(&get("a"))),
            KvReply::Value(Some(b"2".to_vec()))
        );
        assert_eq!(kv_reply(m.execute(&get("missing"))), KvReply::Value(None));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn kv_query_refuses_put_without_changing_state() {
        let m = KeyValue::default();
        assert!(matches!(
            kv_reply(m.query(&put("a", "1"))),
            KvReply::Error(_)
        ));
        assert!(m.is_empty());
    }

    #[test]
    fn kv_snapshot_and_digest_do_not_depend_on_insertion_order() {
        let mut a = KeyValue::default();
        let mut b = KeyValue::default();
        for (k, v) in [("x", "1"), ("y", "2"), ("z", "3")] {
            a.execute(&put(k, v));
        }
        for (k, v) in [("z", "3"), ("x", "1"), ("y", "2")] {
            b.execute(&put(k, v));
        }
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(a.state_digest(), b.state_digest());
        let mut c = KeyValue::default();
        c.restore(&a.snapshot()).unwrap();
        assert_eq!(c, a);
        assert!(c.restore(&[0xff; 3]).is_err());
        assert_eq!(c, a);
    }

    #[test]
    fn malformed_operations_get_error_replies_and_never_panic() {
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff],
            vec![9, 0, 0, 0],
            // Add with a truncated i64.
            vec![0, 0, 0, 0, 1, 2],
            // Put whose key claims 2^63 bytes.
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80],
            // A valid op followed by trailing bytes.
            [CounterOp::Get.encode(), vec![1]].concat(),
        ];
        // Every prefix of valid operations, and a few deterministic pseudo-random strings.
        for op in [CounterOp::Add(12345).encode(), put("key", "value")] {
            for len in 0..op.len() {
                inputs.push(op[..len].to_vec());
            }
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..64 {
            let bytes = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            inputs.push(bytes);
        }
        let mut counter = Counter::default();
        let mut kv = KeyValue::default();
        for input in &inputs {
            // Whatever the bytes are, the reply decodes, and the states only change through a
            // well-formed operation.
            let c = counter_reply(counter.execute(input));
            let q = counter_reply(counter.query(input));
            let k = kv_reply(kv.execute(input));
            let kq = kv_reply(kv.query(input));
            if codec::decode::<CounterOp>(input).is_err() {
                assert!(matches!(c, CounterReply::Error(_)), "{input:?}: {c:?}");
                assert!(matches!(q, CounterReply::Error(_)), "{input:?}: {q:?}");
            }
            if codec::decode::<KvOp>(input).is_err() {
                assert!(matches!(k, KvReply::Error(_)), "{input:?}: {k:?}");
                assert!(matches!(kq, KvReply::Error(_)), "{input:?}: {kq:?}");
            }
        }
    }

    #[test]
    fn null_service_replies_with_the_configured_size_and_tracks_order() {
        let mut a = NullService::new(1024);
        let reply = a.execute(b"x");
        assert_eq!(reply.len(), 1024);
        assert_eq!(reply[..8], 1u64.to_le_bytes());
        assert_eq!(a.execute(b"y")[..8], 2u64.to_le_bytes());
        assert!(NullService::new(0).execute(b"x").is_empty());
        assert_eq!(NullService::new(3).execute(b"")[..], [1, 0, 0]);

        let mut b = NullService::new(1024);
        b.execute(b"y");
        b.execute(b"x");
        assert_ne!(a.state_digest(), b.state_digest(), "order matters");
        let mut c = NullService::new(1024);
        c.restore(&a.snapshot()).unwrap();
        assert_eq!(c.state_digest(), a.state_digest());
        assert_eq!(c.executed(), 2);
        assert!(c.restore(b"short").is_err());
    }

    #[test]
    fn replicas_executing_the_same_operations_have_equal_digests() {
        let ops = [
            CounterOp::Add(3).encode(),
            vec![0xde, 0xad],
            CounterOp::Add(-1).encode(),
            CounterOp::Get.encode(),
        ];
        let mut a = ServiceKind::Counter.create();
        let mut b = ServiceKind::Counter.create();
        let replies_a: Vec<_> = ops.iter().map(|op| a.execute(op)).collect();
        let replies_b: Vec<_> = ops.iter().map(|op| b.execute(op)).collect();
        assert_eq!(replies_a, replies_b);
        assert_eq!(a.state_digest(), b.state_digest());
    }
}
