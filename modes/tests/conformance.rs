//! Conformance with the threshold table of docs/design.md §3.3: `tests/data/quorums.tsv` (a copy
//! of `shared/testdata/quorums.tsv`) lists every threshold for n <= 31 in both modes, and the
//! (n, f) pairs that must be refused. Every row is checked.

use std::collections::BTreeSet;

use smr_modes::{Mode, QuorumError, Quorums};

const TABLE: &str = include_str!("data/quorums.tsv");

const COLUMNS: [&str; 14] = [
    "mode",
    "n",
    "f",
    "valid",
    "quorum",
    "writes_to_accept",
    "accepts_to_decide",
    "stops_to_join",
    "stops_to_install",
    "stopdata_to_collect",
    "replies_ordered",
    "replies_ordered_with_unordered_reads",
    "replies_unordered",
    "state_transfer_digests",
];

#[derive(Debug)]
struct Row {
    line: usize,
    mode: Mode,
    n: usize,
    f: usize,
    /// `None` for a row that must be refused; otherwise the thresholds in column order, with
    /// `None` for "-" (CFT has no WRITE phase).
    thresholds: Option<Vec<Option<usize>>>,
}

fn parse_table() -> Vec<Row> {
    let mut lines = TABLE.lines().enumerate();
    let (_, header) = lines.next().expect("table has a header");
    let header: Vec<&str> = header.split('\t').collect();
    assert_eq!(
        header, COLUMNS,
        "the table's columns changed; update this test"
    );

    let mut rows = Vec::new();
    for (index, line) in lines {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        assert_eq!(cells.len(), COLUMNS.len(), "line {line_no}: {line:?}");
        let mode: Mode = cells[0]
            .parse()
            .unwrap_or_else(|e| panic!("line {line_no}: {e}"));
        let number = |i: usize| -> usize {
            cells[i]
                .parse()
                .unwrap_or_else(|e| panic!("line {line_no} column {}: {e}", COLUMNS[i]))
        };
        let (n, f) = (number(1), number(2));
        let thresholds = match cells[3] {
            "yes" => Some(
                (4..COLUMNS.len())
                    .map(|i| {
                        if cells[i] == "-" {
                            None
                        } else {
                            Some(number(i))
                        }
                    })
                    .collect(),
            ),
            "no" => {
                assert!(
                    cells[4..].iter().all(|c| *c == "-"),
                    "line {line_no}: a refused row has thresholds"
                );
                None
            }
            other => panic!("line {line_no}: valid must be yes or no, got {other:?}"),
        };
        rows.push(Row {
            line: line_no,
            mode,
            n,
            f,
            thresholds,
        });
    }
    rows
}

fn actual_thresholds(q: &Quorums) -> Vec<Option<usize>> {
    vec![
        Some(q.quorum()),
        q.writes_to_accept(),
        Some(q.accepts_to_decide()),
        Some(q.stops_to_join()),
        Some(q.stops_to_install()),
        Some(q.stopdata_to_collect()),
        Some(q.replies_ordered(false)),
        Some(q.replies_ordered(true)),
        Some(q.replies_unordered()),
        Some(q.state_transfer_digests()),
    ]
}

#[test]
fn every_row_of_the_quorum_table_matches() {
    let rows = parse_table();
    assert_eq!(rows.len(), 572, "the table should have 572 rows");
    let mut checked_valid = 0;
    let mut checked_refused = 0;
    for row in &rows {
        let result = Quorums::new(row.mode, row.n, row.f);
        match &row.thresholds {
            Some(expected) => {
                let q = result.unwrap_or_else(|e| {
                    panic!("line {}: {:?} must be accepted, got: {e}", row.line, row)
                });
                let actual = actual_thresholds(&q);
                for (i, (want, got)) in expected.iter().zip(&actual).enumerate() {
                    assert_eq!(
                        want,
                        got,
                        "line {}: {} n={} f={}: column {}",
                        row.line,
                        row.mode,
                        row.n,
                        row.f,
                        COLUMNS[4 + i]
                    );
                }
                assert_eq!((q.mode(), q.n(), q.f()), (row.mode, row.n, row.f));
                checked_valid += 1;
            }
            None => {
                match result {
                    Err(QuorumError::TooFewReplicas { mode, n, f, needed }) => {
                        assert_eq!((mode, n, f), (row.mode, row.n, row.f), "line {}", row.line);
                        assert!(n < needed, "line {}", row.line);
                    }
                    other => panic!(
                        "line {}: {:?} must be refused, got {other:?}",
                        row.line, row
                    ),
                }
                checked_refused += 1;
            }
        }
    }
    assert_eq!(checked_valid, 176 + 256);
    assert_eq!(checked_refused, 110 + 30);
}

/// The table lists every valid (mode, n, f) for n <= 31, so anything `Quorums::new` accepts in
/// that range must be in it: no configuration slips through that the table does not vouch for.
#[test]
fn quorums_accepts_exactly_the_valid_rows_of_the_table() {
    let rows = parse_table();
    let valid_in_table: BTreeSet<(String, usize, usize)> = rows
        .iter()
        .filter(|row| row.thresholds.is_some())
        .map(|row| (row.mode.to_string(), row.n, row.f))
        .collect();
    let mut accepted = BTreeSet::new();
    for mode in Mode::ALL {
        for n in 0..=31 {
            for f in 0..=n + 1 {
                if Quorums::new(mode, n, f).is_ok() {
                    accepted.insert((mode.to_string(), n, f));
                }
            }
        }
    }
    assert_eq!(accepted, valid_in_table);
}

#[test]
fn table_rows_are_unique() {
    let rows = parse_table();
    let keys: BTreeSet<(String, usize, usize)> = rows
        .iter()
        .map(|row| (row.mode.to_string(), row.n, row.f))
        .collect();
    assert_eq!(keys.len(), rows.len());
}
