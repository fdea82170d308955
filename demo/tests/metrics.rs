//! Metrics and health: `smr replica --metrics-addr` on a real cluster, the endpoint under
//! hostile input, `smr status --json`, and the docs (docs/metrics.md, the Grafana dashboard)
//! against what a replica really exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use smr_demo::keygen::KeygenOptions;
use smr_demo::local::{ClusterSetup, LocalCluster};
use smr_demo::{CounterOp, ServiceKind};
use smr_modes::Mode;

mod common;

use common::{counter, smr_async, within, READY_TIMEOUT, SMR};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const OPS: usize = 30;

/// The documented metrics (docs/metrics.md's table): name as queried, and type.
fn documented() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `smr_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let kind = cells[2].to_string();
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{line}"
        );
        assert!(
            !cells[4].is_empty(),
            "{name} has no meaning in docs/metrics.md"
        );
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name}: counters, and only they, end in _total"
        );
        assert!(
            metrics.insert(name.clone(), kind).is_none(),
            "{name} documented twice"
        );
    }
    assert!(metrics.len() > 20, "docs/metrics.md's table not found");
    metrics
}

/// Whether `series` (a name a query uses) is a documented metric or a series of a documented
/// histogram.
fn is_documented(documented: &BTreeMap<String, String>, series: &str) -> bool {
    if documented.contains_key(series) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        series
            .strip_suffix(suffix)
            .is_some_and(|base| documented.get(base).is_some_and(|k| k == "histogram"))
    })
}

/// Every `smr_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("smr_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_is_valid_json_with_named_panels_using_documented_metrics() {
    let documented = documented();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")));
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {title}: {expr} uses no smr metric"
            );
            // rate()/increase() only over counters and histogram series, and quantiles only
            // from buckets; a gauge is plotted as is.
            let over_time = expr.contains("rate(") || expr.contains("increase(");
            for name in &names {
                let counted = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.ends_with(suffix));
                assert_eq!(
                    over_time, counted,
                    "panel {title}: {expr}: {name} under rate() must be a counter or histogram series, and only those"
                );
            }
            if expr.contains("histogram_quantile(") {
                assert!(
                    names.iter().all(|n| n.ends_with("_bucket")),
                    "panel {title}: {expr}"
                );
            }
            used.extend(names);
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        used.extend(metric_names(variable["query"].as_str().unwrap_or("")));
    }
    let undocumented: Vec<&String> = used
        .iter()
        .filter(|m| !is_documented(&documented, m))
        .collect();
    assert!(
        undocumented.is_empty(),
        "the dashboard uses metrics not in docs/metrics.md: {undocumented:?}"
    );
}

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the families (`# TYPE name kind`) and the samples.
#[derive(Debug)]
struct Scrape {
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "no EOF line:\n{text}");
        let mut families = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            });
        }
        Scrape { families, samples }
    }

    /// The one unlabelled sample `name`.
    fn value(&self, name: &str) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels.is_empty())
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0].value
    }

    /// The sample `name` with label `key="value"`.
    fn labelled(&self, name: &str, key: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.get(key).map(String::as_str) == Some(value))
            .unwrap_or_else(|| panic!("no {name}{{{key}=\"{value}\"}}"))
            .value
    }
}

/// Sends SIGINT to process `pid`, as Ctrl-C would (with kill(1)); whether it was sent.
fn sigint(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `request` and reads the whole response (the server closes after one).
fn http(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    Scrape::parse(body)
}

/// The metrics address replica `id` printed in its log.
fn metrics_addr(cluster: &LocalCluster, id: u32) -> SocketAddr {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("serves metrics on http://"))
        {
            let url = line.split("http://").nth(1).unwrap();
            return url.trim_end_matches("/metrics").parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "replica {id} printed no metrics address:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_metrics_that_match_their_status_and_survive_hostile_scrapers() {
    within(TEST_TIMEOUT, async {
        common::init_tracing();
        let options = KeygenOptions::new(Mode::Bft, 4);
        // Port 0: each replica binds a free port, and prints it.
        let setup = ClusterSetup {
            data_dirs: true,
            replica_args: &["--metrics-addr", "127.0.0.1:0"],
            ..ClusterSetup::default()
        };
        let cluster = tokio::task::block_in_place(|| {
            LocalCluster::start_with(
                Path::new(SMR),
                &options,
                ServiceKind::Counter,
                READY_TIMEOUT,
                false,
                &setup,
            )
        })
        .unwrap_or_else(|e| panic!("cluster did not start: {e}"));
        let addrs: Vec<SocketAddr> = (0..4).map(|id| metrics_addr(&cluster, id)).collect();
        for addr in &addrs {
            assert!(addr.ip().is_loopback(), "bound {addr}, not where told");
        }

        let client = common::client(&cluster, 0, Duration::from_secs(20)).await;
        for _ in 0..OPS {
            counter(&client, CounterOp::Add(1)).await;
        }
        let reports = common::wait_agree(&client, &[0, 1, 2, 3], Duration::from_secs(20)).await;
        let leader = reports[0].leader;

        // `smr status --json`: one line of JSON, answers equal to the reports.
        let config = cluster.config_path().to_string_lossy().into_owned();
        let key = cluster.client_key_path(0).to_string_lossy().into_owned();
        let run = smr_async(
            &["status", "--config", &config, "--key", &key, "--json"],
            Duration::from_secs(30),
        )
        .await;
        assert!(run.status.success(), "{run}");
        assert_eq!(run.stdout.lines().count(), 1, "{run}");
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(json["summary"]["total"], 4);
        assert_eq!(json["summary"]["reachable"], 4);
        assert_eq!(json["summary"]["agree"], true);
        for (i, replica) in json["replicas"].as_array().unwrap().iter().enumerate() {
            assert_eq!(replica["id"], i);
            assert_eq!(replica["reachable"], true);
            assert_eq!(replica["leader"], leader);
            assert_eq!(replica["mode"], "bft");
            assert_eq!(replica["last_decided"], reports[i].last_decided.0);
            assert_eq!(replica["state_digest"], reports[i].state_digest.to_hex());
            assert_eq!(replica["participating"], true);
        }

        // `smr status --watch --json` into a pipe: a line of JSON per second, no screen
        // clearing (stdout is not a terminal), and Ctrl-C (SIGINT) ends it with status 0.
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut watch = std::process::Command::new(SMR)
            .args([
                "status", "--config", &config, "--key", &key, "--watch", "--json",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(sigint(watch.id()));
        let exit = tokio::task::block_in_place(|| watch.wait()).unwrap();
        assert!(exit.success(), "{exit}");
        let text = std::fs::read_to_string(out.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!((2..=4).contains(&lines.len()), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "cleared the screen of a pipe: {text:?}"
        );
        for line in lines {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["summary"]["reachable"], 4);
        }

        // Into a reader that stops after the first line (`| head -n1`, a `jq` that exits):
        // the watch ends quietly with 0. It panicked ("failed printing to stdout: Broken
        // pipe", exit 101) at the next line it printed.
        let (watch, first) = common::smr_into_head(
            &[
                "status", "--config", &config, "--key", &key, "--watch", "--json",
            ],
            &[],
        );
        assert!(first.starts_with("{\"replicas\""), "{first}");
        // The reader is gone; the next line (within a second) finds the pipe closed.
        tokio::task::block_in_place(|| common::assert_quiet_exit(watch, Duration::from_secs(10)));

        let documented = documented();
        let mut request_latencies = 0.0;
        let mut client_frames = 0.0;
        let mut proposals = 0.0;
        tokio::task::block_in_place(|| {
            for (id, addr) in addrs.iter().enumerate() {
                let m = scrape(*addr);
                // Every metric exposed is documented, and every documented one is exposed.
                let exposed: BTreeMap<String, String> = m
                    .families
                    .iter()
                    .map(|(name, kind)| {
                        let name = if kind == "counter" {
                            format!("{name}_total")
                        } else {
                            name.clone()
                        };
                        (name, kind.clone())
                    })
                    .collect();
                assert_eq!(
                    exposed, documented,
                    "replica {id}: /metrics and docs/metrics.md differ"
                );

                assert!(
                    m.value("smr_ops_executed_total") >= OPS as f64,
                    "replica {id}"
                );
                assert!(m.value("smr_instances_decided_total") >= 1.0);
                assert!(m.value("smr_last_executed_cid") > 0.0);
                assert_eq!(
                    m.value("smr_last_decided_cid"),
                    reports[id].last_decided.0 as f64
                );
                assert_eq!(m.value("smr_leader"), f64::from(leader));
                assert_eq!(m.value("smr_regency"), reports[id].regency.0 as f64);
                assert_eq!(m.value("smr_participating"), 1.0);
                // A loaded machine may change the leader once or more; each counts.
                assert_eq!(
                    m.value("smr_leader_changes_total") > 0.0,
                    reports[id].regency.0 > 0,
                    "replica {id}"
                );
                assert!(m.value("smr_batch_size_count") >= 1.0);
                assert!(m.value("smr_batch_size_sum") >= OPS as f64);
                // The leader times each PROPOSE it sends; a follower only those it received
                // from the leader of its regency before it executed their cids, so one that
                // decided them through a leader change's SYNC or caught up by decisions on a
                // loaded machine may have timed none (seen once in CI: replica 1, count 0).
                if id == leader as usize && reports[id].regency.0 == 0 {
                    assert!(
                        m.value("smr_consensus_latency_seconds_count") >= 1.0,
                        "the leader"
                    );
                }
                assert!(m.value("smr_signature_verifications_total") > 0.0);
                // A leader that proposed every request verified each one before its PROPOSE
                // (docs/design.md §5 rule 3); a follower's count depends on which copy came
                // first, and one that caught up by decisions checked none.
                if id == leader as usize && reports[id].regency.0 == 0 {
                    assert!(
                        m.value("smr_client_signature_verifications_total") >= OPS as f64,
                        "the leader"
                    );
                }
                // Data dirs with the default fsync policy (always).
                assert!(m.value("smr_fsyncs_total") > 0.0);
                assert!(m.value("smr_fsync_duration_seconds_count") > 0.0);
                assert_eq!(m.labelled("smr_connected_peers", "kind", "replica"), 3.0);
                for peer in (0..4).filter(|p| *p != id) {
                    let peer = peer.to_string();
                    assert!(m.labelled("smr_peer_sent_bytes_total", "peer", &peer) > 0.0);
                    assert!(m.labelled("smr_peer_frames_received_total", "peer", &peer) > 0.0);
                }
                // Clients send to the leader (to all replicas only when it is slow).
                client_frames += m.labelled("smr_peer_frames_received_total", "peer", "clients");
                proposals += m.value("smr_proposals_total");
                request_latencies += m.value("smr_request_latency_seconds_count");
            }
        });
        assert!(
            request_latencies >= OPS as f64,
            "{request_latencies} request latencies timed"
        );
        assert!(
            client_frames >= OPS as f64,
            "{client_frames} frames from clients"
        );
        assert!(proposals >= 1.0);

        // Hostile scrapers: the endpoint answers or closes, and serves on.
        let addr = addrs[0];
        tokio::task::block_in_place(|| {
            let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
            match http(addr, long_line.as_bytes()) {
                Ok(response) => assert!(
                    response.is_empty() || response.starts_with("HTTP/1.1 431 "),
                    "{response}"
                ),
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ),
                    "{e}"
                ),
            }
            let post = http(
                addr,
                b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            )
            .unwrap();
            assert!(
                post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                "{post}"
            );
            let other = http(addr, b"GET /admin HTTP/1.1\r\n\r\n").unwrap();
            assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
            // Slowloris: partial heads on more connections than the endpoint serves at once.
            let slow: Vec<TcpStream> = (0..20)
                .map(|_| {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(b"GET /metr").unwrap();
                    s
                })
                .collect();
            // Within the 5 s request timeout they are all closed, and a scrape is served.
            std::thread::sleep(Duration::from_secs(6));
            for mut s in slow {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut byte = [0u8; 1];
                assert!(
                    matches!(s.read(&mut byte), Ok(0) | Err(_)),
                    "a partial request held its connection past the request timeout"
                );
            }
            assert!(scrape(addr).value("smr_ops_executed_total") >= OPS as f64);
        });
        client.shutdown().await;
    })
    .await;
}

/// The embedding API: an embedded replica's metrics go into the embedder's own registry, beside
/// its own metrics, and `encode_metrics` renders the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_replica_exposes_its_metrics_in_the_embedders_registry() {
    use smr_transport::prometheus_client::{self, metrics::counter::Counter, registry::Registry};
    use smr_transport::{Client, EmptyStart, Replica};
    within(TEST_TIMEOUT, async {
        common::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let generated = smr_demo::keygen::generate(dir.path(), &KeygenOptions::new(Mode::Cft, 3))
            .expect("keygen");
        let config = generated.config.clone();
        let mut replicas = Vec::new();
        for entry in &config.replicas {
            let key = smr_crypto::IdentityKey::load(entry.key_file.as_ref().unwrap()).unwrap();
            replicas.push(
                Replica::builder(&config, entry.id, key)
                    .boxed_service(ServiceKind::Counter.create())
                    .empty_start(EmptyStart::NewCluster)
                    .start()
                    .await
                    .expect("replica starts"),
            );
        }
        let client_key = smr_crypto::IdentityKey::load(&generated.client_keys[0]).unwrap();
        let client = Client::connect(&config, client_key)
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(20));
        for _ in 0..5 {
            counter(&client, CounterOp::Add(1)).await;
        }
        let leader = replicas[0].status().leader as usize;
        // CFT completes at one reply: the leader may execute the last add a moment later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while replicas[leader].status().last_decided.0 < 5 {
            assert!(
                Instant::now() < deadline,
                "the leader did not execute the adds"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A request is timed when this replica sends its reply, which follows the execution
        // that `last_decided` shows (and a CFT client may complete on another replica's reply).
        // The session's open is decided and timed too, so `last_decided` and the latency count
        // can reach 5 with the fifth add still to execute: wait for the adds themselves.
        loop {
            let mut text = String::new();
            replicas[leader].encode_metrics(&mut text);
            let scrape = Scrape::parse(&text);
            if scrape.value("smr_request_latency_seconds_count") >= 5.0
                && scrape.value("smr_ops_executed_total") >= 5.0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the leader did not time the replies of the adds"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut registry = Registry::default();
        let mine: Counter = Counter::default();
        mine.inc();
        registry.register("embedder_requests", "The embedder's own metric.", mine);
        replicas[leader].register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let m = Scrape::parse(&text);
        assert_eq!(m.value("embedder_requests_total"), 1.0);
        assert_eq!(m.value("smr_ops_executed_total"), 5.0);
        assert_eq!(m.value("smr_leader"), leader as f64);
        assert_eq!(m.value("smr_fsyncs_total"), 0.0, "no data dir, no fsync");
        assert!(m.value("smr_request_latency_seconds_count") >= 5.0);

        let mut alone = String::new();
        replicas[leader].encode_metrics(&mut alone);
        let alone = Scrape::parse(&alone);
        let mut expected = m.families.clone();
        expected.remove("embedder_requests");
        assert_eq!(alone.families, expected);
        assert_eq!(alone.value("smr_ops_executed_total"), 5.0);

        client.shutdown().await;
        for replica in replicas {
            replica.shutdown().await;
        }
    })
    .await;
}
