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

/// The builder's state before [`ReplicaBuilder::service`]: a replica cannot start without one.
pub struct NoService;

/// Starts a [`Replica`]: made by [`Replica::builder`], given its service with
/// [`ReplicaBuilder::service`], then [`ReplicaBuilder::start`]ed.
///
/// ```no_run
/// # async fn demo(config: smr_core::cluster::ClusterConfig, key: smr_crypto::IdentityKey,
/// #               service: impl smr_core::Service + 'static)
/// #               -> Result<(), smr_transport::StartError> {
/// let replica = smr_transport::Replica::builder(&config, 0, key)
///     .service(service)
///     .data_dir("data-0")
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start`"]
pub struct ReplicaBuilder<'a, S> {
    config: &'a ClusterConfig,
    id: ReplicaId,
    key: IdentityKey,
    service: S,
    data_dir: Option<std::path::PathBuf>,
    empty_start: EmptyStart,
}

impl<'a, S> ReplicaBuilder<'a, S> {
    /// The replicated state machine this replica runs (every replica of the cluster runs the
    /// same one). Required.
    pub fn service(self, service: impl Service + 'static) -> ReplicaBuilder<'a, Box<dyn Service>> {
        self.boxed_service(Box::new(service))
    }

    /// Like [`ReplicaBuilder::service`], for a service already boxed.
    pub fn boxed_service(self, service: Box<dyn Service>) -> ReplicaBuilder<'a, Box<dyn Service>> {
        ReplicaBuilder {
            config: self.config,
            id: self.id,
            key: self.key,
            service,
            data_dir: self.data_dir,
            empty_start: self.empty_start,
        }
    }

    /// Persists to (and recovers from) `dir`, with the config's fsync policy; created if
    /// missing. Without it the replica keeps its state in memory only. A damaged data
    /// directory is refused at [`ReplicaBuilder::start`] with an error that says what is wrong
    /// and where.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// How the replica starts when its data dir is empty (or it has none):
    /// [`EmptyStart::Rejoin`] (the default, safe after a lost disk) or
    /// [`EmptyStart::NewCluster`] (the first start of a brand-new cluster only). A data dir
    /// that holds state is always recovered from.
    pub fn empty_start(mut self, empty_start: EmptyStart) -> Self {
        self.empty_start = empty_start;
        self
    }
}

impl ReplicaBuilder<'_, Box<dyn Service>> {
    /// Opens the data dir (if any), binds the replica's configured address and starts
    /// serving. Nothing is left running after an error.
    ///
    /// # Errors
    /// See [`StartError`]: the id is not in the config, the data dir cannot be opened or
    /// recovered, or the transport cannot start (e.g. `key` is not the key the config lists
    /// for this id, or the address cannot be bound).
    pub async fn start(self) -> Result<Replica, StartError> {
        Replica::start_configured(
            self.config,
            self.id,
            self.key,
            self.service,
            self.data_dir.as_deref(),
            self.empty_start,
        )
        .await
    }
}

impl Replica {
    /// A builder for replica `id` of the cluster `config`, authenticating with `key` (the key
    /// the config lists for `id`): give it a service, optionally a data dir, and start it.
    pub fn builder(
        config: &ClusterConfig,
        id: ReplicaId,
        key: IdentityKey,
    ) -> ReplicaBuilder<'_, NoService> {
        ReplicaBuilder {
            config,
            id,
            key,
            service: NoService,
            data_dir: None,
            empty_start: EmptyStart::default(),
        }
    }

    /// Binds the replica's configured address and starts serving, with its state in memory
    /// only. Fails if `key` is not the key the config lists for `id`.
    pub async fn start(
        config: &ClusterConfig,
        id: ReplicaId,
        key: IdentityKey,
        service: Box<dyn Service>,
    ) -> Result<Replica, StartError> {
        Self::start_configured(config, id, key, service, None, EmptyStart::Rejoin).await
    }

    /// What [`ReplicaBuilder::start`] does: persisting to (and recovering from) `data_dir`
    /// when given, with the config's fsync policy; `empty_start` says how a replica with an
    /// empty data dir (or none) starts.
    async fn start_configured(
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

/// Whether a [`Client`] may read without ordering, and so which reply quorum its ordered
/// requests wait for (docs/design.md §3.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnorderedReads {
    /// [`Client::invoke_unordered`] asks every replica and completes at Q matching replies
    /// (falling back to ordering when they disagree or do not come); ordered requests wait for
    /// Q matching replies too. The default: reads of every client of the cluster are then
    /// linearizable.
    #[default]
    Enabled,
    /// Every read is ordered, and ordered requests complete at f+1 matching replies (BFT) or
    /// one (CFT): a little lower write latency. Only correct if no client of the cluster reads
    /// unordered: an unordered read elsewhere could miss a write this client saw complete.
    Disabled,
}

/// Connects a [`Client`]: made by [`Client::builder`], then [`ClientBuilder::connect`]ed.
///
/// ```no_run
/// # async fn demo(config: smr_core::cluster::ClusterConfig, key: smr_crypto::IdentityKey)
/// #               -> Result<(), smr_transport::StartError> {
/// use std::time::Duration;
/// let client = smr_transport::Client::builder(&config, key)
///     .window(16)
///     .timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `connect`"]
pub struct ClientBuilder<'a> {
    config: &'a ClusterConfig,
    key: IdentityKey,
    window: usize,
    timeout: Duration,
    unordered_reads: UnorderedReads,
}

impl ClientBuilder<'_> {
    /// At most `window` requests in flight (at least 1, capped by the replicas'
    /// `max_pending_per_client`, which is the default).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// How long each invocation waits for its reply quorum ([`Client::DEFAULT_TIMEOUT`] by
    /// default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether reads may skip ordering ([`UnorderedReads::Enabled`] by default).
    pub fn unordered_reads(mut self, unordered_reads: UnorderedReads) -> Self {
        self.unordered_reads = unordered_reads;
        self
    }

    /// Starts the client transport, which dials every replica in the config. Returns once the
    /// endpoint is bound; it does not wait for the replicas, and dials that fail are retried in
    /// the background.
    ///
    /// # Errors
    /// [`StartError::Transport`] if the client endpoint cannot start.
    pub async fn connect(self) -> Result<Client, StartError> {
        let config = self.config;
        let key = Arc::new(self.key);
        // Every client opens a session of its own (docs/design.md §3.7): processes sharing a
        // key neither take each other's replies nor collide in sequence numbers. Its
        // connections announce its routing tag until the session is open.
        let tag = driver::Client::<QuicTransport>::new_tag();
        let mut transport_config = TransportConfig::client(key.clone(), endpoints(config));
        transport_config.client_session = Some(tag);
        apply_frame_limits(&mut transport_config, config);
        let transport = Arc::new(QuicTransport::start(transport_config).await?);
        let client_config = ClientConfig {
            quorums: config.quorums,
            unordered_reads_enabled: self.unordered_reads == UnorderedReads::Enabled,
            max_outstanding: self
                .window
                .clamp(1, config.limits.max_pending_per_client.max(1)),
            max_op_bytes: config.limits.max_op_bytes,
            retry_timeout_ms: config.timeouts.request_timeout_ms,
        };
        let inner = driver::Client::start_with_tag(transport.clone(), client_config, key, tag);
        Ok(Client {
            inner,
            transport,
            timeout: self.timeout,
            unordered_reads: self.unordered_reads,
        })
    }
}

/// A client of the cluster. Clone it to share; many invocations may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: driver::Client<QuicTransport>,
    transport: Arc<QuicTransport>,
    timeout: Duration,
    unordered_reads: UnorderedReads,
}

impl Client {
    /// Default time an invocation waits for its reply quorum.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A builder for a client of the cluster `config` that authenticates with `key` (which the
    /// replicas must admit through `clients`): window, timeout and unordered reads at their
    /// defaults until set.
    pub fn builder(config: &ClusterConfig, key: IdentityKey) -> ClientBuilder<'_> {
        ClientBuilder {
            config,
            key,
            window: config.limits.max_pending_per_client,
            timeout: Self::DEFAULT_TIMEOUT,
            unordered_reads: UnorderedReads::default(),
        }
    }

    /// [`Client::builder`] with every option at its default, connected: a window of
    /// `max_pending_per_client` requests in flight, [`Client::DEFAULT_TIMEOUT`], and
    /// [`UnorderedReads::Enabled`].
    pub async fn connect(config: &ClusterConfig, key: IdentityKey) -> Result<Client, StartError> {
        Self::builder(config, key).connect().await
    }

    /// Like [`Client::connect`], with at most `window` requests in flight (capped by the
    /// replicas' `max_pending_per_client`); the same as `Client::builder(..).window(window)`.
    pub async fn connect_with_window(
        config: &ClusterConfig,
        key: IdentityKey,
        window: usize,
    ) -> Result<Client, StartError> {
        Self::builder(config, key).window(window).connect().await
    }

    /// Sets how long each invocation waits for its reply quorum.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Whether this client reads unordered ([`ClientBuilder::unordered_reads`]).
    pub fn unordered_reads(&self) -> UnorderedReads {
        self.unordered_reads
    }

    /// Runs `op` through consensus and returns the service's result once a reply quorum
    /// replied with the same bytes: Q replicas with [`UnorderedReads::Enabled`] (the default),
    /// else f+1 (BFT) or one (CFT) (docs/design.md §3.7, §3.8). Resends on its own while it
    /// waits; waits for room when `window` requests are already in flight. Fails with
    /// [`InvokeError::TimedOut`] after the client's timeout (the operation may still execute, at
    /// most once), or with an error if `op` exceeds `max_op_bytes`.
    pub async fn invoke(&self, op: Vec<u8>) -> Result<Vec<u8>, InvokeError> {
        self.inner.invoke(op, self.timeout).await
    }

    /// A read-only operation, answered by the service's `query` without ordering: sent to
    /// every replica, it completes once Q replicas (BFT ⌈(n+f+1)/2⌉, 2f+1 at n = 3f+1; CFT a
    /// majority) replied with the same bytes, which makes it linearizable (docs/design.md
    /// §3.8). When the replies disagree (a write is executing meanwhile) or do not come within
    /// the config's `request_timeout_ms`, it is sent again as an ordered request and completes
    /// like [`Client::invoke`]. With [`UnorderedReads::Disabled`] it is ordered from the start.
    /// `op` must not change the state: the replicas run it with `Service::query`, or, when it
    /// falls back, with `Service::execute`.
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
