//! The replica's metrics, as the driver sees them, in the shape Prometheus scrapes.
//!
//! The engine has no clock and no metrics of its own: it counts in [`crate::engine::EngineStats`] and
//! reports its events in its [`crate::Output`]s. The driver ([`crate::driver`]) copies those
//! counters here after each input, times what needs the real clock (PROPOSE to decision, a
//! request's arrival to its reply, fsyncs), and counts what only it sees (signature
//! verifications, the verify workers' rejections). Everything it records is a relaxed atomic
//! store or add: no lock on the path of a message (a rejection by reason takes a lock, on the
//! path of a refused message only). A scrape reads the atomics through [`Collector::encode`].
//!
//! The transport adds its own metrics (per peer traffic, connections, send queues) as a second
//! collector in the same registry (`smr_transport::Replica::register_metrics`). Every metric
//! is documented in docs/metrics.md; a test checks the two agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds, in seconds, of the latency histograms: 0.5 ms to 10 s.
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the batch size histogram, in requests.
pub const BATCH_SIZE_BOUNDS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram whose observations are atomic adds: a bucket, the count and the sum (no lock,
/// unlike `prometheus_client`'s own histogram). Observations are integers in a raw unit
/// (nanoseconds, requests) that `scale` turns into the exposed base unit (seconds, requests).
#[derive(Debug)]
pub struct Histogram {
    upper_bounds: &'static [f64],
    scale: f64,
    /// One per upper bound, then the `+Inf` bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_raw: AtomicU64,
}

impl Histogram {
    /// A histogram with these finite, increasing upper bounds (in the exposed unit).
    pub fn new(upper_bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            upper_bounds,
            scale,
            buckets: (0..=upper_bounds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_raw: AtomicU64::new(0),
        }
    }

    /// Records one observation of `raw` raw units.
    pub fn observe(&self, raw: u64) {
        let value = raw as f64 * self.scale;
        let bucket = self
            .upper_bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.upper_bounds.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating: a sum of nanoseconds reaches u64::MAX after 584 years of latency.
        let _ = self
            .sum_raw
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(raw))
            });
    }

    /// Records a duration (for a histogram in seconds, made with scale 1e-9).
    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn encode_into(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .upper_bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_raw.load(Ordering::Relaxed) as f64 * self.scale;
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// A counter or gauge the driver sets or adds to.
#[derive(Debug, Default)]
pub struct Value(AtomicU64);

impl Value {
    /// Sets the value (a counter copied from a monotonic source, or a gauge).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
    /// Adds to the value.
    pub fn add(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Encodes one unlabelled counter (exposed as `name_total`) or gauge.
pub fn encode_value(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    match metric_type {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&(value as i64)),
    }
}

/// Encodes one counter or gauge with one sample per label value (`label="value"`).
pub fn encode_labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    label: &'static str,
    samples: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, sample) in samples {
        let labels = [(label, value.as_str())];
        let mut family = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => family.encode_counter::<NoLabelSet, _, u64>(sample, None)?,
            _ => family.encode_gauge(&(*sample as i64))?,
        }
    }
    Ok(())
}

/// The engine-side metrics of one replica: written by its driver, read by a scrape. Build a
/// registry with [`ReplicaMetrics`] registered as a [`Collector`] (shared behind an `Arc`).
#[derive(Debug)]
pub struct ReplicaMetrics {
    /// Highest cid the engine decided and handed to the service, in cid order.
    pub last_decided_cid: Value,
    /// Highest cid whose batch the service finished executing.
    pub last_executed_cid: Value,
    /// Cid of the newest checkpoint.
    pub last_checkpoint_cid: Value,
    /// The current regency.
    pub regency: Value,
    /// The current regency's leader.
    pub leader: Value,
    /// 1 while the replica takes part in votes, 0 while it rejoins.
    pub participating: Value,
    /// Requests in the pool.
    pub pending_requests: Value,
    /// [`crate::engine::EngineStats::executed_requests`].
    pub ops_executed: Value,
    /// [`crate::engine::EngineStats::decided_instances`].
    pub instances_decided: Value,
    /// [`crate::engine::EngineStats::regency_changes`].
    pub leader_changes: Value,
    /// [`crate::engine::EngineStats::proposals_sent`].
    pub proposals: Value,
    /// [`crate::engine::EngineStats::retransmissions`].
    pub retransmissions: Value,
    /// [`crate::engine::EngineStats::state_transfers`].
    pub state_transfers: Value,
    /// Snapshots the service was asked to take for a checkpoint.
    pub checkpoints: Value,
    /// Signatures checked by the verify workers and by the engine (client requests it relays):
    /// each item of a batch, and again each one a failed batch checked again one by one.
    pub signature_verifications: Value,
    /// Client request signatures verified, by the verify workers (requests met inside a
    /// PROPOSE, Forward, STOP or SYNC) and by the engine (a request authenticated by its
    /// channel, before it is relayed); also counted in `signature_verifications`.
    pub client_signature_verifications: Value,
    /// Client request signature checks skipped because a byte-identical copy was already
    /// authenticated here (by its signature, or by its channel for a PROPOSE's request).
    pub client_signatures_cached: Value,
    /// Inbound frames the network reader verified itself instead of queueing them for a verify
    /// worker, while the frames' workers are idle (in BFT a few small client frames, in CFT any
    /// batch of small frames; see the driver's module docs).
    pub frames_verified_inline: Value,
    /// Frames that did not decode into a message.
    pub decode_errors: Value,
    /// Messages not sent because they exceed the frame limit.
    pub frames_too_large: Value,
    /// Write-ahead log syncs that fsynced (policy `always`), checkpoint writes included.
    pub fsyncs: Value,
    /// Duration of each of `fsyncs`.
    pub fsync_latency: Histogram,
    /// Requests per decided batch handed to the service (duplicates skipped not counted).
    pub batch_size: Histogram,
    /// From the PROPOSE for a cid (sent as leader or first received) to its decision.
    pub consensus_latency: Histogram,
    /// From a request's first arrival from its client to this replica's reply to it.
    pub request_latency: Histogram,
    /// Refused messages by [`crate::Rejection::name`], by the verify workers or the engine.
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        ReplicaMetrics {
            last_decided_cid: Value::default(),
            last_executed_cid: Value::default(),
            last_checkpoint_cid: Value::default(),
            regency: Value::default(),
            leader: Value::default(),
            participating: Value::default(),
            pending_requests: Value::default(),
            ops_executed: Value::default(),
            instances_decided: Value::default(),
            leader_changes: Value::default(),
            proposals: Value::default(),
            retransmissions: Value::default(),
            state_transfers: Value::default(),
            checkpoints: Value::default(),
            signature_verifications: Value::default(),
            client_signature_verifications: Value::default(),
            client_signatures_cached: Value::default(),
            frames_verified_inline: Value::default(),
            decode_errors: Value::default(),
            frames_too_large: Value::default(),
            fsyncs: Value::default(),
            fsync_latency: Histogram::new(LATENCY_BOUNDS_SECONDS, 1e-9),
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS, 1.0),
            consensus_latency: Histogram::new(LATENCY_BOUNDS_SECONDS, 1e-9),
            request_latency: Histogram::new(LATENCY_BOUNDS_SECONDS, 1e-9),
            rejections: Mutex::new(BTreeMap::new()),
        }
    }
}

impl ReplicaMetrics {
    /// Counts one refused message under its reason ([`crate::Rejection::name`]: a fixed set,
    /// so the label's values are bounded).
    pub fn count_rejection(&self, reason: &'static str) {
        let mut rejections = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        *rejections.entry(reason).or_default() += 1;
    }

    /// Refused messages so far, by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Collector for ReplicaMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        let values: [(&str, &str, MetricType, &Value); 21] = [
            (
                "smr_last_decided_cid",
                "Highest cid decided and handed to the service, in cid order.",
                Gauge,
                &self.last_decided_cid,
            ),
            (
                "smr_last_executed_cid",
                "Highest cid whose batch the service finished executing.",
                Gauge,
                &self.last_executed_cid,
            ),
            (
                "smr_last_checkpoint_cid",
                "Cid of the newest checkpoint.",
                Gauge,
                &self.last_checkpoint_cid,
            ),
            (
                "smr_regency",
                "The current regency (leader-change epoch).",
                Gauge,
                &self.regency,
            ),
            (
                "smr_leader",
                "Id of the current regency's leader.",
                Gauge,
                &self.leader,
            ),
            (
                "smr_participating",
                "1 while the replica takes part in votes, 0 while it rejoins.",
                Gauge,
                &self.participating,
            ),
            (
                "smr_pending_requests",
                "Requests waiting in the pool to be ordered.",
                Gauge,
                &self.pending_requests,
            ),
            (
                "smr_ops_executed",
                "Requests handed to the service to execute (duplicates skipped not counted).",
                Counter,
                &self.ops_executed,
            ),
            (
                "smr_instances_decided",
                "Consensus instances decided.",
                Counter,
                &self.instances_decided,
            ),
            (
                "smr_leader_changes",
                "Regencies entered (leader changes).",
                Counter,
                &self.leader_changes,
            ),
            (
                "smr_proposals",
                "PROPOSEs made as leader, retransmissions not counted.",
                Counter,
                &self.proposals,
            ),
            (
                "smr_retransmissions",
                "Expiries of the retransmit timer.",
                Counter,
                &self.retransmissions,
            ),
            (
                "smr_state_transfers",
                "State transfers started.",
                Counter,
                &self.state_transfers,
            ),
            (
                "smr_checkpoints",
                "Checkpoints taken (service snapshots asked for).",
                Counter,
                &self.checkpoints,
            ),
            (
                "smr_signature_verifications",
                "Signatures checked by the verify workers and by the engine.",
                Counter,
                &self.signature_verifications,
            ),
            (
                "smr_client_signature_verifications",
                "Client request signatures verified (verify workers and engine); also in smr_signature_verifications.",
                Counter,
                &self.client_signature_verifications,
            ),
            (
                "smr_client_signatures_cached",
                "Client request signature checks skipped: a byte-identical copy was already authenticated here.",
                Counter,
                &self.client_signatures_cached,
            ),
            (
                "smr_frames_verified_inline",
                "Inbound frames verified by the network reader itself while their verify workers are idle (in BFT a few small client frames, in CFT any batch of small frames), not by a verify worker.",
                Counter,
                &self.frames_verified_inline,
            ),
            (
                "smr_decode_errors",
                "Inbound frames that did not decode into a message.",
                Counter,
                &self.decode_errors,
            ),
            (
                "smr_frames_too_large",
                "Messages not sent because they exceed the frame limit.",
                Counter,
                &self.frames_too_large,
            ),
            (
                "smr_fsyncs",
                "Write-ahead log fsyncs (policy always), checkpoint writes included.",
                Counter,
                &self.fsyncs,
            ),
        ];
        for (name, help, metric_type, value) in values {
            encode_value(e, name, help, metric_type, value.get())?;
        }
        let rejections: Vec<(String, u64)> = self
            .rejections()
            .into_iter()
            .map(|(reason, count)| (reason.to_string(), count))
            .collect();
        encode_labelled(
            e,
            "smr_rejections",
            "Refused messages, by reason.",
            Counter,
            "reason",
            &rejections,
        )?;
        self.fsync_latency.encode_into(
            e,
            "smr_fsync_duration_seconds",
            "Duration of each fsync of smr_fsyncs_total.",
        )?;
        self.batch_size.encode_into(
            e,
            "smr_batch_size",
            "Requests per decided batch handed to the service.",
        )?;
        self.consensus_latency.encode_into(
            e,
            "smr_consensus_latency_seconds",
            "From the PROPOSE for a cid (sent as leader, or first received) to its decision.",
        )?;
        self.request_latency.encode_into(
            e,
            "smr_request_latency_seconds",
            "From a request's first arrival from its client to this replica's reply.",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    fn encode(metrics: &Arc<ReplicaMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn histograms_count_atomically_into_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 2.0], 1.0);
        for v in [0, 1, 2, 3, 7] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        let metrics = Arc::new(ReplicaMetrics::default());
        metrics.batch_size.observe(3);
        metrics.batch_size.observe(40);
        metrics
            .request_latency
            .observe_duration(std::time::Duration::from_millis(3));
        metrics.count_rejection("bad_signature");
        metrics.count_rejection("bad_signature");
        metrics.count_rejection("stale_regency");
        metrics.ops_executed.set(42);
        let text = encode(&metrics);
        let section = |name: &str| -> String {
            text.lines()
                .filter(|l| l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            section("smr_batch_size"),
            "smr_batch_size_sum 43.0\nsmr_batch_size_count 2\n\
             smr_batch_size_bucket{le=\"0.0\"} 0\nsmr_batch_size_bucket{le=\"1.0\"} 0\n\
             smr_batch_size_bucket{le=\"2.0\"} 0\nsmr_batch_size_bucket{le=\"4.0\"} 1\n\
             smr_batch_size_bucket{le=\"8.0\"} 1\nsmr_batch_size_bucket{le=\"16.0\"} 1\n\
             smr_batch_size_bucket{le=\"32.0\"} 1\nsmr_batch_size_bucket{le=\"64.0\"} 2\n\
             smr_batch_size_bucket{le=\"128.0\"} 2\nsmr_batch_size_bucket{le=\"256.0\"} 2\n\
             smr_batch_size_bucket{le=\"512.0\"} 2\nsmr_batch_size_bucket{le=\"1024.0\"} 2\n\
             smr_batch_size_bucket{le=\"+Inf\"} 2"
        );
        assert_eq!(
            section("smr_request_latency_seconds_bucket{le=\"0.005\"}"),
            "smr_request_latency_seconds_bucket{le=\"0.005\"} 1"
        );
        assert_eq!(
            section("smr_request_latency_seconds_bucket{le=\"0.0025\"}"),
            "smr_request_latency_seconds_bucket{le=\"0.0025\"} 0"
        );
        assert_eq!(
            section("smr_rejections"),
            "smr_rejections_total{reason=\"bad_signature\"} 2\n\
             smr_rejections_total{reason=\"stale_regency\"} 1"
        );
        assert_eq!(section("smr_ops_executed"), "smr_ops_executed_total 42");
        assert!(text.contains("# TYPE smr_ops_executed counter\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
