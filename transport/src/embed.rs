//! The embedding API: a replica or a client of a cluster described by a [`ClusterConfig`],
//! running core's driver over QUIC.
//!
//! ```no_run
//! # async fn demo(config: smr_core::cluster::ClusterConfig, key: smr_crypto::IdentityKey,
//! #               service: Box<dyn smr_core::Service>, client_key: smr_crypto::IdentityKey) {
//! let replica = smr_transport::Replica::start(&config, 0, key, service).await.unwrap();
//! let client = smr_transport::Client::connect(&config, client_key).await.unwrap();
//! let reply = client.invoke(b"op".to_vec()).await.unwrap();
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smr_core::client::ClientConfig;
use smr_core::cluster::ClusterConfig;
use smr_core::driver::{
    self, DriverOptions, EmptyStart, InvokeError, ReplicaError, ReplicaHandle, ReplicaStatus,
};
use smr_core::message::StatusReport;
use smr_core::storage::Wal;
use smr_core::{ReplicaId, Service};
use smr_crypto::{Ed25519Verifier, IdentityKey};

use crate::{QuicTransport, ReplicaEndpoint, TransportConfig, TransportError, TransportStats};

/// Why a [`Replica`] could not start or a [`Client`] could not connect. Each variant's message
/// says what to fix; nothing is left running after an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The id is not one of the `[[replicas]]` of the cluster config.
    #[error("replica {0} is not in the cluster config")]
    UnknownReplica(ReplicaId),
    /// The data directory could not be opened: an I/O error, a corrupt or missing file, an
    /// unsupported format version, or another process holding its lock. Checked before the
    /// replica binds its port.
    #[error(transparent)]
    Storage(#[from] smr_core::storage::StorageError),
    /// The data directory opened, but the replica could not be rebuilt from its records (an
    /// undecodable or inconsistent record); or the engine configuration breaks a rule
    /// ([`smr_core::InvalidConfig`]), which a cluster config that loaded never does.
    #[error(transparent)]
    Recovery(#[from] smr_core::driver::StartError),
    /// The QUIC transport could not start (see [`TransportError`]): e.g. the key is not the one
    /// configured for this id, or the address cannot be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

fn endpoints(config: &ClusterConfig) -> Vec<ReplicaEndpoint> {
    config
        .replicas
        .iter()
        .map(|r| ReplicaEndpoint {
            id: r.id,
            addr: r.address,
            public_key: r.public_key,
        })
        .collect()
}

/// Frames between replicas fit the largest message the config allows (a SYNC, a reply of
/// decisions, ...; [`smr_core::frame_limits`]); frames from clients fit the largest request,
/// and the budget of partial client frames holds at least [`partial_frame_budget`] of them.
fn apply_frame_limits(transport_config: &mut TransportConfig, config: &ClusterConfig) {
    transport_config.max_frame_bytes =
        smr_core::frame_limits::replica_frame_bytes(&config.quorums, &config.limits);
    transport_config.max_client_frame_bytes =
        smr_core::frame_limits::client_frame_bytes(&config.quorums, &config.limits);
    transport_config.client_partial_frame_bytes = partial_frame_budget(
        transport_config.max_client_frame_bytes,
        transport_config.client_partial_frame_bytes,
    );
}

/// The partial-frame budget for client frames of `max_client_frame_bytes`: at least
/// `configured`, and at least one frame per source network's share (an eighth), so that a
/// large `max_op_bytes` does not let two or three networks hold the whole budget; at most
/// `u32::MAX`, which still holds one frame of any limit the engine config allows (1 GiB ops).
pub(crate) fn partial_frame_budget(max_client_frame_bytes: usize, configured: usize) -> usize {
    let eighth_each = max_client_frame_bytes
        .saturating_add(crate::link::LENGTH_PREFIX_BYTES)
        .saturating_mul(crate::link::PARTIAL_FRAME_SOURCE_SHARES);
    configured.max(eighth_each).min(u32::MAX as usize)
}

/// A running replica: the engine driver over its QUIC transport.
pub struct Replica {
    handle: ReplicaHandle,
    transport: Arc<QuicTransport>,
}

impl Replica {
    /// Binds the replica's configured address and starts serving, with its state in memory
    /// only. Fails if `key` is not the key the config lists for `id`.
    pub async fn start(
        config: &ClusterConfig,
        id: ReplicaId,
        key: IdentityKey,
        service: Box<dyn Service>,
    ) -> Result<Replica, StartError> {
        Self::start_with_data_dir(config, id, key, service, None, EmptyStart::Rejoin).await
    }

    /// Like [`Replica::start`], persisting to (and recovering from) `data_dir` when given,
    /// with the config's fsync policy. A damaged data directory is refused with an error that
    /// says what is wrong and where. `empty_start` says how a replica with an empty data dir
    /// (or none) starts: [`EmptyStart::Rejoin`] (the safe default: it may have lost its state,
    /// so it takes no part in votes until it has caught up past anything it can have voted on
    /// before) or [`EmptyStart::NewCluster`] (the first start of a brand-new cluster only).
    pub async fn start_with_data_dir(
        config: &ClusterConfig,
        id: ReplicaId,
        key: IdentityKey,
        service: Box<dyn Service>,
        data_dir: Option<&Path>,
        empty_start: EmptyStart,
    ) -> Result<Replica, StartError> {
        let engine_config = config
            .engine_config(id)
            .map_err(|_| StartError::UnknownReplica(id))?;
        // Open the store first: a replica with a damaged or locked store must not even listen.
        let storage = data_dir
            .map(|dir| Wal::open(dir, config.fsync))
            .transpose()?;
        let key = Arc::new(key);
        let mut transport_config =
            TransportConfig::replica(id, key.clone(), endpoints(config), config.clients.clone());
        apply_frame_limits(&mut transport_config, config);
        transport_config.protocol_settings = Some(Arc::new(
            smr_core::settings::ProtocolSettings::of(&engine_config),
        ));
        let transport = Arc::new(QuicTransport::start(transport_config).await?);
        let handle = driver::start_replica(
            engine_config,
            key,
            Arc::new(Ed25519Verifier),
            transport.clone(),
            service,
            DriverOptions {
                empty_start,
                ..DriverOptions::default()
            },
            storage,
        );
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                transport.shutdown().await;
                return Err(e.into());
            }
        };
        Ok(Replica { handle, transport })
    }

    /// The engine's latest published status (regency, leader, last decided cid, pending
    /// requests, rejected and undecodable messages). Cheap: it reads a value the engine task
    /// updates after each input, and never waits for the engine.
    pub fn status(&self) -> ReplicaStatus {
        self.handle.status()
    }

    /// The transport's counters (frames, bytes, drops, connections, refusals) since start.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.stats()
    }

    /// Registers every metric of this replica (docs/metrics.md: the engine's, the driver's
    /// latencies and fsyncs, the transport's traffic by peer) in `registry`, as collectors
    /// read at each scrape. Use it to serve them with your own HTTP stack, beside your own
    /// metrics:
    ///
    /// ```no_run
    /// # fn demo(replica: &smr_transport::Replica) {
    /// use smr_transport::prometheus_client::{encoding::text::encode, registry::Registry};
    /// let mut registry = Registry::default();
    /// replica.register_metrics(&mut registry);
    /// let mut body = String::new();
    /// encode(&mut body, &registry).unwrap(); // serve with content type OPENMETRICS_CONTENT_TYPE
    /// # }
    /// ```
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(self.handle.metrics()));
        self.transport.register_metrics(registry);
    }

    /// A registry with this replica's metrics alone ([`Replica::register_metrics`]).
    pub fn metrics_registry(&self) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        self.register_metrics(&mut registry);
        registry
    }

    /// Appends this replica's metrics to `out` in the OpenMetrics text format (which
    /// Prometheus scrapes; serve it as [`crate::OPENMETRICS_CONTENT_TYPE`]), `# EOF` line
    /// included. Reads atomics and the transport's connection tables; never waits for the
    /// engine.
    pub fn encode_metrics(&self, out: &mut String) {
        crate::encode_registry(out, &self.metrics_registry());
    }

    /// Resolves once the replica has stopped on its own, with the reason (fail-stop): its
    /// storage failed (an I/O error, a full disk), its service panicked, a broken invariant
    /// stopped the engine, or the transport failed. The reason is already logged. Await it
    /// beside your own stop signal, then [`Replica::shutdown`] and exit non-zero, so that a
    /// supervisor restarts the process (it recovers from its data dir). Resolves to `Ok` only
    /// if the engine was stopped by [`Replica::shutdown`].
    ///
    /// ```no_run
    /// # async fn demo(replica: smr_transport::Replica) -> std::process::ExitCode {
    /// tokio::select! {
    ///     _ = tokio::signal::ctrl_c() => {
    ///         replica.shutdown().await;
    ///         std::process::ExitCode::SUCCESS
    ///     }
    ///     failed = replica.closed() => {
    ///         eprintln!("replica stopped: {failed:?}");
    ///         replica.shutdown().await;
    ///         std::process::ExitCode::FAILURE
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn closed(&self) -> Result<(), ReplicaError> {
        tokio::select! {
            outcome = self.handle.closed() => outcome,
            reason = self.transport.failed() => Err(ReplicaError::Transport(reason)),
        }
    }

    /// Stops the engine task, then closes the transport and waits until the UDP port is free
    /// again, so a replica can be restarted on the same address at once. What was persisted
    /// stays in the data directory.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        self.transport.shutdown().await;
    }
}

/// A client of the cluster. Clone it to share; many invocations may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: driver::Client<QuicTransport>,
    transport: Arc<QuicTransport>,
    timeout: Duration,
}

impl Client {
    /// Default time an invocation waits for its reply quorum.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Starts a client transport that dials every replica in the config, authenticating with
    /// `key` (which the replicas must admit through `clients`), with a window of
    /// `max_pending_per_client` requests in flight. Returns once the endpoint is bound; it does
    /// not wait for the replicas, and dials that fail are retried in the background.
    pub async fn connect(config: &ClusterConfig, key: IdentityKey) -> Result<Client, StartError> {
        Self::connect_with_window(config, key, config.limits.max_pending_per_client).await
    }

    /// Like [`Client::connect`], with at most `window` requests in flight (capped by the
    /// replicas' `max_pending_per_client`).
    pub async fn connect_with_window(
        config: &ClusterConfig,
        key: IdentityKey,
        window: usize,
    ) -> Result<Client, StartError> {
        let key = Arc::new(key);
        // Every client is a session of its own (docs/design.md §3.7): processes sharing a key
        // neither take each other's replies nor collide in sequence numbers.
        let session = driver::Client::<QuicTransport>::new_session();
        let mut transport_config = TransportConfig::client(key.clone(), endpoints(config));
        transport_config.client_session = Some(session);
        apply_frame_limits(&mut transport_config, config);
        let transport = Arc::new(QuicTransport::start(transport_config).await?);
        let client_config = ClientConfig {
            quorums: config.quorums,
            unordered_reads_enabled: false,
            max_outstanding: window.clamp(1, config.limits.max_pending_per_client),
            max_op_bytes: config.limits.max_op_bytes,
            retry_timeout_ms: config.timeouts.request_timeout_ms,
        };
        let inner =
            driver::Client::start_in_session(transport.clone(), client_config, key, session);
        Ok(Client {
            inner,
            transport,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long each invocation waits for its reply quorum.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Runs `op` through consensus and returns the service's result once f+1 replicas (BFT) or
    /// one (CFT) replied with the same bytes (docs/design.md §3.7). Resends on its own while it
    /// waits; waits for room when `window` requests are already in flight. Fails with
    /// [`InvokeError::TimedOut`] after the client's timeout (the operation may still execute, at
    /// most once), or with an error if `op` exceeds `max_op_bytes`.
    pub async fn invoke(&self, op: Vec<u8>) -> Result<Vec<u8>, InvokeError> {
        self.inner.invoke(op, self.timeout).await
    }

    /// A read-only operation. This client is connected with unordered reads disabled, so the
    /// read is ordered like [`Client::invoke`]: an unordered read would be linearizable only if
    /// every ordered request waited for Q replies instead of f+1 (docs/design.md §3.8).
    pub async fn invoke_unordered(&self, op: Vec<u8>) -> Result<Vec<u8>, InvokeError> {
        self.inner.invoke_unordered(op, self.timeout).await
    }

    /// Asks one replica for its status report (mode, regency, leader, decided and checkpoint
    /// cids, state digest), as `smr status` prints it. `None` if no answer comes within
    /// `timeout`; a replica that is down or unreachable looks the same as a slow one.
    pub async fn status(&self, replica: ReplicaId, timeout: Duration) -> Option<StatusReport> {
        self.inner.status(replica, timeout).await
    }

    /// The counters of this client's transport (shared by all clones) since it connected.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.stats()
    }

    /// Stops the client's tasks and closes its connections, for every clone. Invocations in
    /// flight and new ones fail with [`InvokeError::Closed`] (a request in flight may still
    /// execute).
    pub async fn shutdown(&self) {
        self.inner.shutdown();
        self.transport.shutdown().await;
    }
}
