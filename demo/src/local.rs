//! A cluster of `smr replica` processes on this machine, in a temporary directory: what
//! `smr cluster` runs and what the process-level tests drive.
//!
//! Every replica is a child process of the given `smr` binary, with its stdout and stderr in
//! `replica-<i>.log` next to the config. Children are killed and reaped when their
//! [`ReplicaProcess`] is dropped, so every exit path of the owner (an error, a panic in a test)
//! cleans up; the temporary directory is removed after them. Children also hold a pipe to their
//! parent on stdin and exit when it closes (`--exit-on-stdin-eof`), so even a parent killed with
//! SIGKILL does not leave replicas behind.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use smr_core::cluster::ClusterConfig;
use smr_core::ReplicaId;
use smr_crypto::IdentityKey;
use smr_transport::Client;

use crate::keygen::{self, Generated, KeygenError, KeygenOptions};
use crate::services::ServiceKind;

/// The line a replica prints once it serves; `smr cluster` and the tests wait for it.
pub const READY_MARKER: &str = " listening on ";

/// Times a bind race (another process taking a port between keygen and the replica's bind)
/// is retried with fresh ports.
const START_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Keygen(#[from] KeygenError),
    #[error("cannot start {binary} for replica {id}: {source}")]
    Spawn {
        binary: PathBuf,
        id: ReplicaId,
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replica {id} exited ({status}) before it was ready; its log is {log}:\n{tail}")]
    Exited {
        id: ReplicaId,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("replica {id} was not ready within {timeout:?}; its log is {log}:\n{tail}")]
    NotReady {
        id: ReplicaId,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot load client key {path}: {source}")]
    ClientKey {
        path: PathBuf,
        source: smr_crypto::KeyFileError,
    },
    #[error("cannot start a client: {0}")]
    Client(#[from] smr_transport::StartError),
    #[error("cannot edit {path}: {reason}")]
    EditConfig { path: PathBuf, reason: String },
}

/// One `smr replica` child. Dropping it kills the process (SIGKILL) and reaps it.
pub struct ReplicaProcess {
    pub id: ReplicaId,
    child: Child,
    /// Closing it tells a child started with `--exit-on-stdin-eof` to shut down.
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl ReplicaProcess {
    /// Starts `binary replica --config CONFIG --id ID --service SERVICE`, with output to `log`.
    pub fn spawn(
        binary: &Path,
        config: &Path,
        id: ReplicaId,
        service: ServiceKind,
        extra_args: &[&str],
        log: PathBuf,
    ) -> Result<ReplicaProcess, LocalClusterError> {
        let out = File::create(&log).map_err(|source| LocalClusterError::Log {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| LocalClusterError::Log {
            path: log.clone(),
            source,
        })?;
        let mut child = Command::new(binary)
            .arg("replica")
            .arg("--config")
            .arg(config)
            .arg("--id")
            .arg(id.to_string())
            .arg("--service")
            .arg(service.as_str())
            .arg("--exit-on-stdin-eof")
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| LocalClusterError::Spawn {
                binary: binary.to_path_buf(),
                id,
                source,
            })?;
        let stdin = child.stdin.take();
        Ok(ReplicaProcess {
            id,
            child,
            stdin,
            log,
        })
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the replica printed its ready line?
    pub fn is_ready(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|text| text.lines().any(|l| l.contains(READY_MARKER)))
            .unwrap_or(false)
    }

    /// The last lines of the replica's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) -> std::io::Result<ExitStatus> {
        self.stdin.take();
        let _ = self.child.kill();
        self.child.wait()
    }

    /// Asks the replica to shut down (closes its stdin) and waits until `deadline`, then kills.
    pub fn stop(mut self, deadline: Instant) -> Option<ExitStatus> {
        self.stdin.take();
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits (blocking) for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.stdin.take();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file (or why it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Err(e) = File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        return format!("(cannot read {}: {e})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What [`LocalCluster::start_with`] does beyond [`LocalCluster::start`].
#[derive(Default)]
pub struct ClusterSetup<'a> {
    /// Rewrites the text of the generated `cluster.toml` before any replica starts (to change
    /// limits, timeouts or the fsync policy).
    pub edit_config: Option<&'a dyn Fn(&str) -> String>,
    /// Starts every replica with `--data-dir` [`LocalCluster::data_dir`]`(id)`.
    pub data_dirs: bool,
    /// Arguments every `smr replica` gets, now and on restarts.
    pub replica_args: &'a [&'a str],
}

/// Replicas of one config as child processes, in a directory of their own.
pub struct LocalCluster {
    // Field order is drop order: the children die before their directory is removed.
    replicas: Vec<Option<ReplicaProcess>>,
    generated: Generated,
    binary: PathBuf,
    service: ServiceKind,
    data_dirs: bool,
    /// Arguments every replica of this cluster gets (e.g. the null service's reply size).
    replica_args: Vec<String>,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Generates keys and a config in a new temporary directory and starts every replica, then
    /// waits until each has printed its ready line. A replica that loses its port to another
    /// process before binding it makes the whole attempt restart with fresh ports.
    ///
    /// If `keep_dir_on_error`, a failed start leaves the directory (with the replicas' logs) in
    /// place for inspection; otherwise it is removed.
    pub fn start(
        binary: &Path,
        options: &KeygenOptions,
        service: ServiceKind,
        ready_timeout: Duration,
        keep_dir_on_error: bool,
    ) -> Result<LocalCluster, LocalClusterError> {
        Self::start_with(
            binary,
            options,
            service,
            ready_timeout,
            keep_dir_on_error,
            &ClusterSetup::default(),
        )
    }

    /// Like [`LocalCluster::start`], passing `replica_args` to every `smr replica` it starts
    /// (now and on restarts).
    pub fn start_with_args(
        binary: &Path,
        options: &KeygenOptions,
        service: ServiceKind,
        replica_args: &[&str],
        ready_timeout: Duration,
        keep_dir_on_error: bool,
    ) -> Result<LocalCluster, LocalClusterError> {
        let setup = ClusterSetup {
            replica_args,
            ..ClusterSetup::default()
        };
        Self::start_with(
            binary,
            options,
            service,
            ready_timeout,
            keep_dir_on_error,
            &setup,
        )
    }

    /// Like [`LocalCluster::start`], with the config edited, data directories and extra
    /// replica arguments as `setup` says.
    pub fn start_with(
        binary: &Path,
        options: &KeygenOptions,
        service: ServiceKind,
        ready_timeout: Duration,
        keep_dir_on_error: bool,
        setup: &ClusterSetup<'_>,
    ) -> Result<LocalCluster, LocalClusterError> {
        let temp = tempfile::Builder::new()
            .prefix("smr-cluster-")
            .tempdir()
            .map_err(LocalClusterError::TempDir)?;
        let mut options = options.clone();
        options.force = true;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut generated = keygen::generate(temp.path(), &options)?;
            if let Some(edit) = setup.edit_config {
                let path = &generated.config_path;
                let edit_error = |reason: String| LocalClusterError::EditConfig {
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| edit_error(e.to_string()))?;
                std::fs::write(path, edit(&text)).map_err(|e| edit_error(e.to_string()))?;
                generated.config =
                    ClusterConfig::load(path).map_err(|e| edit_error(e.to_string()))?;
            }
            let mut cluster = LocalCluster {
                replicas: Vec::new(),
                generated,
                binary: binary.to_path_buf(),
                service,
                data_dirs: setup.data_dirs,
                replica_args: setup.replica_args.iter().map(|a| a.to_string()).collect(),
                dir: temp.path().to_path_buf(),
                temp: None,
            };
            let result = cluster
                .start_all()
                .and_then(|()| cluster.wait_ready(ready_timeout));
            match result {
                Ok(()) => {
                    cluster.temp = Some(temp);
                    return Ok(cluster);
                }
                Err(LocalClusterError::Exited { ref tail, .. })
                    if attempt < START_ATTEMPTS && is_bind_failure(tail) =>
                {
                    tracing::warn!(
                        attempt,
                        "a replica's port was taken; retrying with new ports"
                    );
                    drop(cluster);
                }
                Err(e) => {
                    drop(cluster);
                    if keep_dir_on_error {
                        let _ = temp.keep();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The first start of a brand-new cluster: every replica gets `--new-cluster`, so the
    /// cluster starts once any n−f run (restarts, [`LocalCluster::start_replica`], do not: an
    /// empty data dir then rejoins).
    fn start_all(&mut self) -> Result<(), LocalClusterError> {
        for id in 0..self.n() as ReplicaId {
            if self.data_dirs {
                // A retry after a bind race starts over with new keys: no state survives it.
                let data_dir = self.data_dir(id);
                let _ = std::fs::remove_dir_all(&data_dir);
                self.start_replica(
                    id,
                    &["--data-dir", &data_dir.to_string_lossy(), "--new-cluster"],
                )?;
            } else {
                self.start_replica(id, &["--new-cluster"])?;
            }
        }
        Ok(())
    }

    /// Starts (or restarts) replica `id` with extra command-line arguments.
    pub fn start_replica(
        &mut self,
        id: ReplicaId,
        extra_args: &[&str],
    ) -> Result<(), LocalClusterError> {
        let args: Vec<&str> = self
            .replica_args
            .iter()
            .map(String::as_str)
            .chain(extra_args.iter().copied())
            .collect();
        let process = ReplicaProcess::spawn(
            &self.binary,
            &self.generated.config_path,
            id,
            self.service,
            &args,
            self.log_path(id),
        )?;
        if self.replicas.len() <= id as usize {
            self.replicas.resize_with(id as usize + 1, || None);
        }
        self.replicas[id as usize] = Some(process);
        Ok(())
    }

    /// Waits until every running replica has printed its ready line; fails early, with its log,
    /// if one exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), LocalClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all_ready = true;
            for process in self.replicas.iter_mut().flatten() {
                if let Some(status) = process.try_exit_status() {
                    return Err(LocalClusterError::Exited {
                        id: process.id,
                        status,
                        log: process.log.clone(),
                        tail: process.log_tail(),
                    });
                }
                if !process.is_ready() {
                    all_ready = false;
                    if Instant::now() >= deadline {
                        return Err(LocalClusterError::NotReady {
                            id: process.id,
                            timeout,
                            log: process.log.clone(),
                            tail: process.log_tail(),
                        });
                    }
                }
            }
            if all_ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn n(&self) -> usize {
        self.generated.config.replicas.len()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.generated.config
    }

    pub fn config_path(&self) -> &Path {
        &self.generated.config_path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, id: ReplicaId) -> PathBuf {
        self.dir.join(format!("replica-{id}.log"))
    }

    /// The data directory replica `id` gets with [`ClusterSetup::data_dirs`] (in the cluster's
    /// directory, so it is removed with it).
    pub fn data_dir(&self, id: ReplicaId) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// Client key file `index` (0 is `client.key`).
    pub fn client_key_path(&self, index: usize) -> &Path {
        &self.generated.client_keys[index]
    }

    /// A replica process, if it is running (or has exited but was not reaped yet).
    pub fn replica(&mut self, id: ReplicaId) -> Option<&mut ReplicaProcess> {
        self.replicas.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Ids of the replicas this cluster has not killed or stopped.
    pub fn live_ids(&self) -> Vec<ReplicaId> {
        self.replicas.iter().flatten().map(|p| p.id).collect()
    }

    /// Kills replica `id` with SIGKILL (no chance to clean up), as a crash would.
    pub fn kill(&mut self, id: ReplicaId) -> Option<std::io::Result<ExitStatus>> {
        let process = self.replicas.get_mut(id as usize)?.take()?;
        Some(process.kill())
    }

    /// Checks that every started replica is still running; returns the first that exited.
    pub fn check_running(&mut self) -> Result<(), LocalClusterError> {
        for process in self.replicas.iter_mut().flatten() {
            if let Some(status) = process.try_exit_status() {
                return Err(LocalClusterError::Exited {
                    id: process.id,
                    status,
                    log: process.log.clone(),
                    tail: process.log_tail(),
                });
            }
        }
        Ok(())
    }

    /// Asks every replica to shut down and waits up to `grace` for all of them together, then
    /// kills the rest.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for process in self.replicas.iter_mut().flatten() {
            process.stdin.take();
        }
        for process in self.replicas.drain(..).flatten() {
            // Dropping a process that did not exit in time kills it.
            process.stop(deadline);
        }
    }

    /// Keeps the directory (config, keys, logs) after the cluster is dropped; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            let _ = temp.keep();
        }
        self.dir.clone()
    }

    /// A client connected with client key `index`.
    pub async fn client(&self, index: usize) -> Result<Client, LocalClusterError> {
        let path = self.client_key_path(index);
        let key = IdentityKey::load(path).map_err(|source| LocalClusterError::ClientKey {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client::connect(&self.generated.config, key).await?)
    }
}

fn is_bind_failure(log: &str) -> bool {
    log.contains("cannot bind") || log.contains("Address already in use")
}
