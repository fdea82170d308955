//! Asking replicas how they are, and printing the answers (`smr status`, `smr cluster`).

use std::time::Duration;

use smr_core::message::{Cid, StatusReport};
use smr_core::ReplicaId;
use smr_transport::Client;

/// Hex characters of the state digest shown per replica.
pub const DIGEST_HEX_CHARS: usize = 16;

/// One replica's answer, or `None` if it did not answer in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaAnswer {
    pub id: ReplicaId,
    pub report: Option<StatusReport>,
}

/// Asks every replica in `ids` at once and waits at most `timeout` for each.
pub async fn query(
    client: &Client,
    ids: impl IntoIterator<Item = ReplicaId>,
    timeout: Duration,
) -> Vec<ReplicaAnswer> {
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let client = client.clone();
            (
                id,
                tokio::spawn(async move { client.status(id, timeout).await }),
            )
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for (id, task) in tasks {
        answers.push(ReplicaAnswer {
            id,
            report: task.await.ok().flatten(),
        });
    }
    answers
}

/// A string a peer supplied (a replica's mode, a service's reply or refusal), made safe to
/// print on a terminal: control characters (ESC and the rest of C0 and C1), Unicode format
/// characters such as bidirectional overrides, backslashes and quotes are shown as Rust escapes
/// (`\u{1b}`, `\"`), so a peer can neither move the cursor, recolour or clear the screen, nor
/// make one line pass for two. Printable text, non-ASCII letters included, is shown as is.
pub fn escape_peer_text(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Bytes a peer supplied as text (a kv value), decoded as UTF-8 (invalid sequences shown as
/// U+FFFD) and escaped by [`escape_peer_text`].
pub fn escape_peer_bytes(bytes: &[u8]) -> String {
    escape_peer_text(&String::from_utf8_lossy(bytes))
}

/// The line `smr status` prints for one replica. Every string in it that the replica supplied
/// is escaped ([`escape_peer_text`]). A replica that abstains from votes while it rejoins says
/// so at the end of its line: it holds the state but does not count towards a quorum.
pub fn format_line(answer: &ReplicaAnswer) -> String {
    match &answer.report {
        None => format!("replica {}  unreachable", answer.id),
        Some(r) => format!(
            "replica {}  up  {}  regency {}  leader {}  decided {}  checkpoint {}  digest {}  pending {}  rejected {}  log {}  client-sigs verified {} cached {}{}{}{}",
            answer.id,
            escape_peer_text(&r.mode),
            r.regency,
            r.leader,
            r.last_decided,
            r.last_checkpoint,
            short_digest(r),
            r.pending_requests,
            r.rejected_messages,
            r.log_entries,
            r.client_signatures_verified,
            r.client_signatures_cached,
            if r.state_over_max_state_bytes {
                // No replica can receive this state by transfer: raise the limit everywhere.
                "  state over max_state_bytes"
            } else {
                ""
            },
            refusals(r),
            if r.participation.participates() {
                String::new()
            } else {
                format!("  {}", r.participation)
            }
        ),
    }
}

/// The replicas a replica refuses because their protocol settings differ, as the end of its
/// status line (`  REFUSES replica 3 (settings differ: limits.max_op_bytes)`); empty if none.
/// The keys are the replica's text, escaped.
fn refusals(report: &StatusReport) -> String {
    report
        .refused_replicas
        .iter()
        .map(|r| {
            let keys: Vec<String> = r.settings.iter().map(|k| escape_peer_text(k)).collect();
            format!(
                "  REFUSES replica {} (settings differ: {})",
                r.replica,
                keys.join(", ")
            )
        })
        .collect()
}

pub fn short_digest(report: &StatusReport) -> String {
    report.state_digest.to_hex()[..DIGEST_HEX_CHARS].to_string()
}

/// True if every replica that answered has decided the same cid and has the same state digest
/// (and at least one answered).
pub fn reachable_agree(answers: &[ReplicaAnswer]) -> bool {
    let mut reports = answers.iter().filter_map(|a| a.report.as_ref());
    let Some(first) = reports.next() else {
        return false;
    };
    reports.all(|r| r.last_decided == first.last_decided && r.state_digest == first.state_digest)
}

/// The summary line under the table.
pub fn summary(answers: &[ReplicaAnswer]) -> String {
    let reports: Vec<&StatusReport> = answers.iter().filter_map(|a| a.report.as_ref()).collect();
    let up = reports.len();
    let total = answers.len();
    if up == 0 {
        return format!("0 of {total} replicas reachable; is the cluster running, and is the client key admitted?");
    }
    let min = reports
        .iter()
        .map(|r| r.last_decided)
        .min()
        .unwrap_or(Cid::ZERO);
    let max = reports
        .iter()
        .map(|r| r.last_decided)
        .max()
        .unwrap_or(Cid::ZERO);
    let agreement = if reachable_agree(answers) {
        format!(
            "all reachable replicas decided {max} with digest {} (equal digests)",
            short_digest(reports[0])
        )
    } else if min == max {
        format!("all reachable replicas decided {max} but their DIGESTS DIFFER")
    } else {
        format!("reachable replicas decided {min}..{max} (some are catching up)")
    };
    let abstaining: Vec<String> = reports
        .iter()
        .filter(|r| !r.participation.participates())
        .map(|r| r.replica.to_string())
        .collect();
    let abstaining = if abstaining.is_empty() {
        String::new()
    } else {
        format!(
            "; ABSTAINING from votes (rejoining, not counted towards a quorum): replica {}",
            abstaining.join(", ")
        )
    };
    format!("{up} of {total} replicas reachable; {agreement}{abstaining}")
}

/// Polls the replicas in `ids` until all answer and agree (same last decided cid and digest),
/// or `timeout` passes. Returns the last answers either way, and whether they agree.
pub async fn wait_until_agree(
    client: &Client,
    ids: &[ReplicaId],
    timeout: Duration,
) -> (Vec<ReplicaAnswer>, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let answers = query(client, ids.iter().copied(), Duration::from_millis(1000)).await;
        let agree =
            answers.iter().all(|a| a.report.is_some()) && reachable_agree(answers.as_slice());
        if agree || tokio::time::Instant::now() >= deadline {
            return (answers, agree);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smr_core::message::{Participation, Regency};
    use smr_crypto::Digest;

    /// A participating BFT replica's report in regency 0 with leader 0, decided up to
    /// `last_decided`, its state digest `digest` repeated, and every counter 0 (the unit tests'
    /// one status-report fixture).
    pub(crate) fn report(replica: ReplicaId, last_decided: u64, digest: u8) -> StatusReport {
        StatusReport {
            replica,
            mode: "bft".into(),
            regency: Regency::ZERO,
            leader: 0,
            last_decided: Cid(last_decided),
            last_checkpoint: Cid::ZERO,
            state_digest: Digest([digest; 32]),
            pending_requests: 0,
            rejected_messages: 0,
            log_entries: 0,
            decided_instances: 0,
            executed_requests: 0,
            client_signatures_verified: 0,
            client_signatures_cached: 0,
            fsyncs: 0,
            refused_replicas: Vec::new(),
            state_over_max_state_bytes: false,
            participation: Participation::Participating,
        }
    }

    /// Issue 17 item 1: a rejoining replica holding the others' state still says that it
    /// abstains, on its line and in the summary.
    #[test]
    fn status_shows_a_replica_that_abstains_while_rejoining() {
        let mut rejoining = report(3, 42, 0x1a);
        rejoining.participation = Participation::CatchingUp { until: Cid(106) };
        let answers = [
            ReplicaAnswer {
                id: 0,
                report: Some(report(0, 42, 0x1a)),
            },
            ReplicaAnswer {
                id: 3,
                report: Some(rejoining),
            },
        ];
        assert_eq!(
            format_line(&answers[1]),
            "replica 3  up  bft  regency 0  leader 0  decided 42  checkpoint 0  digest 1a1a1a1a1a1a1a1a  pending 0  rejected 0  log 0  client-sigs verified 0 cached 0  ABSTAINING (rejoining: catching up to cid 106)"
        );
        assert_eq!(
            summary(&answers),
            "2 of 2 replicas reachable; all reachable replicas decided 42 with digest 1a1a1a1a1a1a1a1a (equal digests); ABSTAINING from votes (rejoining, not counted towards a quorum): replica 3"
        );
        let mut collecting = report(2, 0, 0);
        collecting.participation = Participation::CollectingReports {
            reports: 1,
            needed: 3,
        };
        assert!(format_line(&ReplicaAnswer {
            id: 2,
            report: Some(collecting)
        })
        .ends_with("  ABSTAINING (rejoining: collecting reports, 1 of 3)"));
    }

    #[test]
    fn status_lines_show_every_field_and_unreachable_replicas() {
        let up = ReplicaAnswer {
            id: 0,
            report: Some(report(0, 42, 0x1a)),
        };
        assert_eq!(
            format_line(&up),
            "replica 0  up  bft  regency 0  leader 0  decided 42  checkpoint 0  digest 1a1a1a1a1a1a1a1a  pending 0  rejected 0  log 0  client-sigs verified 0 cached 0"
        );
        let down = ReplicaAnswer {
            id: 3,
            report: None,
        };
        assert_eq!(format_line(&down), "replica 3  unreachable");
        let mut refusing = report(1, 42, 0x1a);
        refusing.refused_replicas = vec![smr_core::message::RefusedReplica {
            replica: 3,
            settings: vec!["limits.max_op_bytes".into(), "x\u{1b}[2J".into()],
        }];
        refusing.state_over_max_state_bytes = true;
        assert_eq!(
            format_line(&ReplicaAnswer {
                id: 1,
                report: Some(refusing),
            }),
            "replica 1  up  bft  regency 0  leader 0  decided 42  checkpoint 0  digest 1a1a1a1a1a1a1a1a  pending 0  rejected 0  log 0  client-sigs verified 0 cached 0  state over max_state_bytes  REFUSES replica 3 (settings differ: limits.max_op_bytes, x\\u{1b}[2J)"
        );
        let mut oversize = report(1, 42, 0x1a);
        oversize.state_over_max_state_bytes = true;
        assert_eq!(
            format_line(&ReplicaAnswer {
                id: 1,
                report: Some(oversize),
            }),
            "replica 1  up  bft  regency 0  leader 0  decided 42  checkpoint 0  digest 1a1a1a1a1a1a1a1a  pending 0  rejected 0  log 0  client-sigs verified 0 cached 0  state over max_state_bytes"
        );
    }

    /// Issue 12 item 11: a replica's mode string carrying terminal escapes (clear the screen,
    /// red text, a bidirectional override) is printed escaped, not interpreted.
    #[test]
    fn status_line_escapes_a_mode_string_with_terminal_escapes() {
        let mut hostile = report(2, 9, 0x1a);
        hostile.mode = "\u{1b}[2J\u{1b}[31mbft\u{9b}0m\u{202e}\r\nreplica 3  up".into();
        let line = format_line(&ReplicaAnswer {
            id: 2,
            report: Some(hostile),
        });
        assert_eq!(
            line,
            "replica 2  up  \\u{1b}[2J\\u{1b}[31mbft\\u{9b}0m\\u{202e}\\r\\nreplica 3  up  regency 0  leader 0  decided 9  checkpoint 0  digest 1a1a1a1a1a1a1a1a  pending 0  rejected 0  log 0  client-sigs verified 0 cached 0"
        );
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    }

    #[test]
    fn peer_bytes_are_shown_escaped_and_plain_text_unchanged() {
        assert_eq!(escape_peer_bytes(b"blue"), "blue");
        assert_eq!(escape_peer_bytes("grüße 中文".as_bytes()), "grüße 中文");
        assert_eq!(
            escape_peer_bytes(b"\x1b]0;owned\x07"),
            "\\u{1b}]0;owned\\u{7}"
        );
        assert_eq!(escape_peer_bytes(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(escape_peer_text("say \"hi\"\\"), "say \\\"hi\\\"\\\\");
    }

    #[test]
    fn summary_reports_agreement_divergence_and_lag() {
        let a = |id, decided, digest| ReplicaAnswer {
            id,
            report: Some(report(id, decided, digest)),
        };
        let down = |id| ReplicaAnswer { id, report: None };
        let same = [a(0, 7, 1), a(1, 7, 1), down(2)];
        assert!(reachable_agree(&same));
        assert!(summary(&same).contains("2 of 3 replicas reachable"));
        assert!(summary(&same).contains("equal digests"));
        let differ = [a(0, 7, 1), a(1, 7, 2)];
        assert!(!reachable_agree(&differ));
        assert!(summary(&differ).contains("DIFFER"));
        let lag = [a(0, 7, 1), a(1, 5, 2)];
        assert!(summary(&lag).contains("5..7"));
        assert!(!reachable_agree(&[down(0)]));
        assert!(summary(&[down(0)]).contains("0 of 1"));
    }
}

/// The answers as one JSON object (`smr status --json`): `replicas`, one object per replica in
/// id order (`reachable: false` and nothing else for one that did not answer), and `summary`
/// (`reachable`, `total`, `agree`: [`reachable_agree`]). Field names are those of
/// [`StatusReport`]; cids and regencies are numbers, the state digest is hex, `participation`
/// is its display text and `participating` a boolean.
pub fn to_json(answers: &[ReplicaAnswer]) -> serde_json::Value {
    use serde_json::json;
    let replicas: Vec<serde_json::Value> = answers
        .iter()
        .map(|answer| match &answer.report {
            None => json!({ "id": answer.id, "reachable": false }),
            Some(r) => json!({
                "id": answer.id,
                "reachable": true,
                "mode": r.mode,
                "regency": r.regency.0,
                "leader": r.leader,
                "last_decided": r.last_decided.0,
                "last_checkpoint": r.last_checkpoint.0,
                "state_digest": r.state_digest.to_hex(),
                "pending_requests": r.pending_requests,
                "rejected_messages": r.rejected_messages,
                "log_entries": r.log_entries,
                "decided_instances": r.decided_instances,
                "executed_requests": r.executed_requests,
                "client_signatures_verified": r.client_signatures_verified,
                "client_signatures_cached": r.client_signatures_cached,
                "fsyncs": r.fsyncs,
                "state_over_max_state_bytes": r.state_over_max_state_bytes,
                "participating": r.participation.participates(),
                "participation": r.participation.to_string(),
                "refused_replicas": r.refused_replicas.iter().map(|refused| json!({
                    "replica": refused.replica,
                    "settings": refused.settings,
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    json!({
        "replicas": replicas,
        "summary": {
            "reachable": answers.iter().filter(|a| a.report.is_some()).count(),
            "total": answers.len(),
            "agree": reachable_agree(answers),
        },
    })
}

/// `value` as one line of JSON in ASCII alone: every character outside printable ASCII (in a
/// peer-supplied string: control characters, bidirectional overrides, any non-ASCII letter)
/// is written as a `\uXXXX` escape (a surrogate pair above U+FFFF). Still exactly the same
/// JSON value, and safe to print on a terminal.
pub fn ascii_json(value: &serde_json::Value) -> String {
    // serde_json escapes quotes, backslashes and C0 controls; what remains outside printable
    // ASCII can only be inside strings, where a \u escape means the same character.
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", unit));
            }
        }
    }
    out
}

#[cfg(test)]
mod json_tests {
    use super::*;
    use smr_core::message::{Participation, Regency, StatusReport};

    #[test]
    fn status_json_escapes_peer_strings_and_parses_back() {
        let report = StatusReport {
            replica: 1,
            mode: "bft\u{1b}[2J\u{202e}\"\\é😀\u{7f}\u{85}".to_string(),
            regency: Regency(3),
            leader: 3,
            last_decided: Cid(42),
            last_checkpoint: Cid(40),
            state_digest: smr_crypto::Digest::default(),
            pending_requests: 2,
            rejected_messages: 1,
            log_entries: 5,
            decided_instances: 42,
            executed_requests: 100,
            client_signatures_verified: 7,
            client_signatures_cached: 93,
            fsyncs: 9,
            refused_replicas: vec![smr_core::message::RefusedReplica {
                replica: 2,
                settings: vec!["limits.\u{0}x".to_string()],
            }],
            state_over_max_state_bytes: false,
            participation: Participation::Participating,
        };
        let answers = [
            ReplicaAnswer {
                id: 0,
                report: None,
            },
            ReplicaAnswer {
                id: 1,
                report: Some(report.clone()),
            },
        ];
        let line = ascii_json(&to_json(&answers));
        assert!(
            line.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["replicas"][1]["mode"], report.mode.as_str());
        assert_eq!(
            parsed["replicas"][1]["refused_replicas"][0]["settings"][0],
            "limits.\u{0}x"
        );
        assert_eq!(
            parsed,
            serde_json::json!({
                "replicas": [
                    { "id": 0, "reachable": false },
                    {
                        "id": 1, "reachable": true, "mode": report.mode, "regency": 3,
                        "leader": 3, "last_decided": 42, "last_checkpoint": 40,
                        "state_digest": smr_crypto::Digest::default().to_hex(),
                        "pending_requests": 2, "rejected_messages": 1, "log_entries": 5,
                        "decided_instances": 42, "executed_requests": 100,
                        "client_signatures_verified": 7, "client_signatures_cached": 93,
                        "fsyncs": 9, "state_over_max_state_bytes": false, "participating": true,
                        "participation": "participating",
                        "refused_replicas": [{ "replica": 2, "settings": ["limits.\u{0}x"] }],
                    },
                ],
                "summary": { "reachable": 1, "total": 2, "agree": true },
            })
        );
    }
}
