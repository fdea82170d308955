//! smr-fuzz: mutation fuzzing of every smr decoder and parser, and of the engine against one
//! arbitrary peer, on stable Rust, as ordinary tests (`cargo test -p smr-fuzz`, part of
//! `cargo test --workspace`).
//!
//! Each target (one `#[test]` in `tests/`) is a function that takes bytes and panics on a
//! violation. [`run`] feeds it, in this order: every input kept in `corpus/<target>/` (found
//! interesting earlier, so a crash once found stays a regression), the target's seeds (valid
//! encodings generated from the real types, so they track the current format), and then
//! mutants of both: bit flips, byte overwrites, inserts and deletes, integers of 1, 2, 4 or 8
//! bytes set to edge values (0, 1, the bytes left in the input, `u32::MAX`, `u64::MAX`, ...),
//! truncation, duplication and splices of two inputs. For every input it checks:
//! - **no panic** (a violation of an invariant the target asserts is a panic too);
//! - **no allocation beyond the input**: the bytes allocated while the input runs (every
//!   allocation and every growth by reallocation, summed) stay within [`AllocBudget`] (a
//!   constant plus a multiple of the input's length), plus what the input's content paid
//!   for that its length does not show, declared by the target ([`allow_paid_bytes`]). That sum bounds from above how far the
//!   heap's peak rose during the input, so an input's peak is never unseen;
//! - **no growth across inputs**: the heap holds no more after the mutants than before them,
//!   up to [`MAX_GROWTH_BYTES`] (bounded caches filling up).
//!
//! **Why proptest drives the mutations.** cargo-fuzz (libFuzzer) and AFL need nightly or an
//! instrumented build; bolero falls back to random bytes without a corpus on stable; arbtest
//! generates from `arbitrary` without mutating a corpus. proptest (already the workspace's
//! property-test crate) gives what matters here on stable: a seeded, reproducible RNG, a case
//! count, and shrinking, so a failure is reported as a short list of mutations of one corpus
//! input, minimal, with its bytes in hex. The mutations themselves are strategies in this file.
//!
//! **Run length.** Each target has a default number of mutants sized for CI (all targets
//! together in about 15 s on 2 cores, beside the rest of the test run). `SMR_FUZZ_ITERS=N` runs
//! N mutants per target, `SMR_FUZZ_SECS=S` runs mutants for S seconds per target instead (for long runs), and
//! `SMR_FUZZ_SEED=N` changes the fixed seed (default 0). A failure prints the minimal input in
//! hex: add it to `corpus/<target>/` as a `.hex` file to keep it as a regression.
//!
//! **How the heap is measured.** The crate installs [`stats_alloc::StatsAlloc`] over the system
//! allocator as the global allocator of every test binary that links it (no unsafe code of
//! ours). It counts bytes allocated and deallocated; a [`stats_alloc::Region`] opened before an
//! input and read after it gives the bytes that input allocated, on its own, whatever earlier
//! inputs did (the sum over its allocations, not its peak: an input that allocates and frees
//! the same buffer in a loop counts every time, which the per-target budgets, measured, allow
//! for). The counters are process-wide, so each target runs alone in a process of its own (see
//! [`run`]) and targets are serialized by a lock besides.

use std::alloc::System;
use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use stats_alloc::{Region, StatsAlloc};

pub mod engine;
pub mod seeds;

#[global_allocator]
static ALLOCATOR: StatsAlloc<System> = StatsAlloc::system();

/// Bytes the heap holds now (allocated minus freed, since the process started).
fn heap_bytes() -> i64 {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// Targets run one at a time, so that the allocator's counts belong to one input.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where and why the last panic happened (the quiet hook below stores it).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the panic hook for the duration of a run: a target's panics are expected while
/// shrinking and are reported once, with their location, by [`run`].
fn install_quiet_hook() {
    panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("{message} (at {location})"));
    }));
}

/// Most bytes the heap may hold after a target's mutants beyond what it held before them.
pub const MAX_GROWTH_BYTES: usize = 256 * 1024;

/// The default seed of the mutation RNG.
const DEFAULT_SEED: u64 = 0;

/// How much one input may make a target allocate: `constant_bytes + per_input_byte * len`
/// bytes in total while it runs (every allocation and every growth by reallocation, summed;
/// an upper bound on how far the heap's peak rises during the input).
#[derive(Clone, Copy, Debug)]
pub struct AllocBudget {
    /// Bytes allowed whatever the input.
    pub constant_bytes: usize,
    /// Bytes allowed per byte of input (decoded structures are larger than their encoding).
    pub per_input_byte: usize,
}

impl AllocBudget {
    /// The bound for an input of `len` bytes.
    pub fn for_len(&self, len: usize) -> usize {
        self.constant_bytes
            .saturating_add(self.per_input_byte.saturating_mul(len))
    }
}

thread_local! {
    /// Bytes the running input paid for beyond what its length buys ([`allow_paid_bytes`]).
    static PAID_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Declares, from inside a target's check, that the input being run paid for `bytes` more
/// allocation than [`AllocBudget::for_len`] grants: work the input's content bought that its
/// length does not show, such as one 11-byte Byzantine STOPDATA making a CFT cluster re-propose
/// a whole window of instances (`tests/engine.rs` derives what each unit costs from the
/// cluster's configured limits). Calls add up; [`run`] resets the sum before every input.
pub fn allow_paid_bytes(bytes: usize) {
    PAID_BYTES.with(|paid| paid.set(paid.get().saturating_add(bytes)));
}

/// A violation this target is known to find on this branch because the fix belongs to another
/// change of the same issue. Matching violations are reported and counted but do not fail the
/// run; an entry that no longer matches anything fails it, so it is deleted as soon as the fix
/// lands (the corpus holds the input that triggers it, so whether it triggers is deterministic).
#[derive(Clone, Copy, Debug)]
pub struct KnownOpen {
    /// Where it is fixed, e.g. "issue 12 item 1 (codec)".
    pub fixed_by: &'static str,
    /// A substring of the violation's description ("allocated up to", a panic message).
    pub violation: &'static str,
}

/// One fuzz target.
pub struct Target<'a> {
    /// Violations known to be fixed elsewhere (see [`KnownOpen`]); empty once they landed.
    pub known_open: &'a [KnownOpen],
    /// Its name: the corpus directory `corpus/<name>/` and what failures are reported as.
    pub name: &'static str,
    /// Valid inputs generated from the real types.
    pub seeds: Vec<Vec<u8>>,
    /// Mutants per CI run (overridden by `SMR_FUZZ_ITERS` / `SMR_FUZZ_SECS`).
    pub default_iters: u32,
    /// The allocation bound per input.
    pub budget: AllocBudget,
    /// Runs one input; panics on any violation.
    pub check: &'a dyn Fn(&[u8]),
}

/// What a run did, for the report line.
#[derive(Debug, Default)]
pub struct Report {
    /// Corpus inputs run.
    pub corpus: usize,
    /// Seeds run.
    pub seeds: usize,
    /// Mutants run.
    pub mutants: u64,
    /// Most bytes one input allocated in total while it ran.
    pub max_allocated_bytes: usize,
    /// The length of that input.
    pub max_allocated_input_len: usize,
    /// Most bytes one input allocated beyond `per_input_byte * len` and what it paid for
    /// ([`allow_paid_bytes`]): what `constant_bytes` must cover.
    pub max_beyond_per_byte_bytes: usize,
    /// Heap growth across the mutants, in bytes (negative: shrank).
    pub growth_bytes: i64,
}

/// The directory holding `target`'s kept inputs.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Reads every `.hex` file of a corpus directory, sorted by name: hex digits, with whitespace
/// and `#` comment lines ignored.
pub fn read_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let digits: String = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
                .collect();
            let bytes = hex::decode(&digits).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), bytes)
        })
        .collect()
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The most any one input allocated, for the report line.
#[derive(Debug, Default)]
struct Measured {
    /// Most bytes one input allocated, and that input's length.
    max: Cell<(usize, usize)>,
    /// Most bytes one input allocated beyond `per_input_byte * len` and what it paid for.
    beyond_per_byte: Cell<usize>,
}

/// Runs `check` on `input` and counts the bytes it allocates. `Err` names the violation.
fn run_one(target: &Target<'_>, input: &[u8], measured: &Measured) -> Result<(), String> {
    PAID_BYTES.with(|paid| paid.set(0));
    let region = Region::new(&ALLOCATOR);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(input)));
    let allocated = region.change().bytes_allocated;
    let paid = PAID_BYTES.with(|paid| paid.get());
    if result.is_err() {
        let message = LAST_PANIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "a panic".to_string());
        return Err(format!("panicked: {message}"));
    }
    if allocated > measured.max.get().0 {
        measured.max.set((allocated, input.len()));
    }
    let per_byte = target.budget.per_input_byte.saturating_mul(input.len());
    measured.beyond_per_byte.set(
        measured
            .beyond_per_byte
            .get()
            .max(allocated.saturating_sub(per_byte).saturating_sub(paid)),
    );
    let bound = target.budget.for_len(input.len()).saturating_add(paid);
    if allocated > bound {
        return Err(format!(
            "allocated {allocated} bytes for a {}-byte input; the bound is {bound} ({paid} of it paid for by the input's content)",
            input.len()
        ));
    }
    Ok(())
}

fn failure(target: &str, what: &str, input: &[u8], detail: &str) -> ! {
    panic!(
        "fuzz target {target}: {what} {detail}\ninput ({} bytes), keep it as corpus/{target}/<name>.hex:\n{}",
        input.len(),
        hex::encode(input)
    )
}

/// Runs a target: the corpus, the seeds, then the mutants; panics on the first violation
/// (after shrinking it, for mutants) and returns what it did otherwise.
///
/// Each target runs in a process of its own, so that no other test's allocations (the
/// allocator's counters are process-wide) count as the target's: unless `SMR_FUZZ_CHILD` is set, this runs the test binary again with only the
/// test named like the target (so a target's `#[test]` function must carry the target's name)
/// and fails if that child fails. The child returns a default [`Report`] to the parent.
pub fn run(target: Target<'_>) -> Report {
    if std::env::var_os("SMR_FUZZ_CHILD").is_none() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let output = std::process::Command::new(exe)
            .args([target.name, "--exact", "--nocapture", "--test-threads", "1"])
            .env("SMR_FUZZ_CHILD", "1")
            .output()
            .expect("run the fuzz target in a child process");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprint!("{stderr}");
        assert!(
            output.status.success(),
            "fuzz target {} failed:\n{stdout}",
            target.name
        );
        assert!(
            stdout.contains("1 passed"),
            "fuzz target {} did not run in its child process (is its #[test] function named {0}?):\n{stdout}",
            target.name
        );
        return Report::default();
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let previous_hook = panic::take_hook();
    install_quiet_hook();
    let result = panic::catch_unwind(AssertUnwindSafe(|| run_locked(target)));
    panic::set_hook(previous_hook);
    match result {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            panic!("{message}")
        }
    }
}

fn run_locked(target: Target<'_>) -> Report {
    let started = Instant::now();
    let known_hits: Vec<Cell<u64>> = target.known_open.iter().map(|_| Cell::new(0)).collect();
    let first_hit: Vec<Cell<bool>> = target.known_open.iter().map(|_| Cell::new(false)).collect();
    let measured = Measured::default();
    let check_one = |input: &[u8]| -> Result<(), String> {
        let Err(violation) = run_one(&target, input, &measured) else {
            return Ok(());
        };
        match target
            .known_open
            .iter()
            .position(|k| violation.contains(k.violation))
        {
            Some(i) => {
                known_hits[i].set(known_hits[i].get() + 1);
                if !first_hit[i].replace(true) {
                    eprintln!(
                        "fuzz target {}: known open, fixed by {}: {violation}\n  input: {}",
                        target.name,
                        target.known_open[i].fixed_by,
                        hex::encode(input)
                    );
                }
                Ok(())
            }
            None => Err(violation),
        }
    };
    let corpus = read_corpus(&corpus_dir(target.name));
    let mut report = Report {
        corpus: corpus.len(),
        seeds: target.seeds.len(),
        ..Report::default()
    };

    // Kept inputs and seeds first, exactly as they are. Lazily built statics (a verifier
    // cache, tracing's callsites) are allocated here, before growth is measured.
    for (name, input) in &corpus {
        if let Err(e) = check_one(input) {
            failure(target.name, &format!("corpus input {name}"), input, &e);
        }
    }
    for (i, input) in target.seeds.iter().enumerate() {
        if let Err(e) = check_one(input) {
            failure(target.name, &format!("seed {i}"), input, &e);
        }
    }
    let mut pool: Vec<Vec<u8>> = corpus.into_iter().map(|(_, bytes)| bytes).collect();
    pool.extend(target.seeds.iter().cloned());
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let seed = env_number("SMR_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let deadline = env_number("SMR_FUZZ_SECS").map(|s| started + Duration::from_secs(s));
    let total = match (env_number("SMR_FUZZ_ITERS"), deadline) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => u64::from(target.default_iters),
    };

    let heap_before_mutants = heap_bytes();
    let mut chunk = 0u64;
    while report.mutants < total && deadline.is_none_or(|d| Instant::now() < d) {
        let cases = (total - report.mutants).min(500) as u32;
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
        rng_seed[8..16].copy_from_slice(&chunk.to_le_bytes());
        rng_seed[16..16 + target.name.len().min(16)]
            .copy_from_slice(&target.name.as_bytes()[..target.name.len().min(16)]);
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed));
        let strategy = mutant_strategy(pool.len());
        let result = runner.run(&strategy, |(base, mutations)| {
            let input = apply(&pool[base.index(pool.len())], &mutations, &pool);
            check_one(&input).map_err(TestCaseError::fail)
        });
        if let Err(e) = result {
            let (message, input) = match e {
                proptest::test_runner::TestError::Fail(reason, (base, mutations)) => (
                    reason.to_string(),
                    apply(&pool[base.index(pool.len())], &mutations, &pool),
                ),
                proptest::test_runner::TestError::Abort(reason) => (reason.to_string(), Vec::new()),
            };
            let input = minimize(input, |bytes| check_one(bytes).is_err());
            let message = check_one(&input).err().unwrap_or(message);
            failure(
                target.name,
                &format!("mutant (seed {seed}, chunk {chunk})"),
                &input,
                &message,
            );
        }
        report.mutants += u64::from(cases);
        chunk += 1;
    }
    report.growth_bytes = heap_bytes() - heap_before_mutants;
    (report.max_allocated_bytes, report.max_allocated_input_len) = measured.max.get();
    report.max_beyond_per_byte_bytes = measured.beyond_per_byte.get();
    eprintln!(
        "fuzz target {}: {} corpus inputs, {} seeds, {} mutants in {:.1} s; most allocated by one input {} bytes (a {}-byte input), most beyond {} bytes per input byte and what it paid for {} bytes (bound {}); heap growth across mutants {} bytes",
        target.name,
        report.corpus,
        report.seeds,
        report.mutants,
        started.elapsed().as_secs_f64(),
        report.max_allocated_bytes,
        report.max_allocated_input_len,
        target.budget.per_input_byte,
        report.max_beyond_per_byte_bytes,
        target.budget.constant_bytes,
        report.growth_bytes
    );
    for (known, hits) in target.known_open.iter().zip(&known_hits) {
        eprintln!(
            "fuzz target {}: known open ({}) hit by {} inputs",
            target.name,
            known.fixed_by,
            hits.get()
        );
        assert!(
            hits.get() > 0,
            "fuzz target {}: the known-open violation {:?} ({}) no longer occurs: delete its KnownOpen entry",
            target.name,
            known.violation,
            known.fixed_by
        );
    }
    assert!(
        report.growth_bytes <= MAX_GROWTH_BYTES as i64,
        "fuzz target {}: the heap grew by {} bytes across {} mutants (bound {MAX_GROWTH_BYTES})",
        target.name,
        report.growth_bytes,
        report.mutants
    );
    report
}

/// Shrinks a failing input by deleting spans (halving their size down to one byte) while it
/// still fails: what a failure reports is close to minimal.
fn minimize(mut input: Vec<u8>, fails: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut attempts = 0;
    let mut span = (input.len() / 2).max(1);
    while span >= 1 && attempts < 4000 {
        let mut at = 0;
        while at < input.len() && attempts < 4000 {
            attempts += 1;
            let mut candidate = input.clone();
            candidate.drain(at..(at + span).min(input.len()));
            if fails(&candidate) {
                input = candidate;
            } else {
                at += span;
            }
        }
        if span == 1 {
            break;
        }
        span /= 2;
    }
    input
}

/// One edit of an input.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, u8),
    /// Overwrite a little-endian integer of 1, 2, 4 or 8 bytes with an edge value.
    EdgeInt(Index, u8, Edge),
    /// Cut the input here.
    Truncate(Index),
    /// Repeat a span of up to this many bytes in place.
    Duplicate(Index, u8),
    /// Replace the rest of the input, from the first index, with the tail of another pool
    /// input from the third index.
    Splice(Index, Index, Index),
}

/// The integer values a length, count, cid or regency field is most likely to mishandle.
#[derive(Clone, Copy, Debug)]
pub enum Edge {
    /// 0
    Zero,
    /// 1
    One,
    /// The maximum of the width.
    Max,
    /// The maximum minus one.
    MaxMinusOne,
    /// The top bit alone (i64::MIN for 8 bytes).
    TopBit,
    /// The top bit minus one (i32::MAX, i64::MAX).
    TopBitMinusOne,
    /// The number of bytes left in the input after the field.
    Remaining,
    /// That plus one.
    RemainingPlusOne,
    /// Any value.
    Any(u64),
}

fn edge_strategy() -> impl Strategy<Value = Edge> {
    prop_oneof![
        Just(Edge::Zero),
        Just(Edge::One),
        Just(Edge::Max),
        Just(Edge::MaxMinusOne),
        Just(Edge::TopBit),
        Just(Edge::TopBitMinusOne),
        Just(Edge::Remaining),
        Just(Edge::RemainingPlusOne),
        any::<u64>().prop_map(Edge::Any),
    ]
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u8..17).prop_map(|(i, n)| Mutation::Delete(i, n)),
        4 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), edge_strategy())
            .prop_map(|(i, w, e)| Mutation::EdgeInt(i, w, e)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1u8..65).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

/// A base input (an index into the pool) and the mutations to apply to it.
pub fn mutant_strategy(_pool_len: usize) -> impl Strategy<Value = (Index, Vec<Mutation>)> {
    (
        any::<Index>(),
        prop::collection::vec(mutation_strategy(), 1..6),
    )
}

fn edge_value(edge: Edge, width: u8, remaining: usize) -> u64 {
    let bits = u32::from(width) * 8;
    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let value = match edge {
        Edge::Zero => 0,
        Edge::One => 1,
        Edge::Max => max,
        Edge::MaxMinusOne => max - 1,
        Edge::TopBit => 1u64 << (bits - 1),
        Edge::TopBitMinusOne => (1u64 << (bits - 1)) - 1,
        Edge::Remaining => remaining as u64,
        Edge::RemainingPlusOne => remaining as u64 + 1,
        Edge::Any(v) => v,
    };
    value & max
}

/// Applies `mutations` to `base` (`pool` supplies splice partners).
pub fn apply(base: &[u8], mutations: &[Mutation], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::FlipBit(at, bit) if len > 0 => bytes[at.index(len)] ^= 1 << bit,
            Mutation::SetByte(at, value) if len > 0 => bytes[at.index(len)] = *value,
            Mutation::Insert(at, new) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Delete(at, n) if len > 0 => {
                let at = at.index(len);
                let end = (at + usize::from(*n)).min(len);
                bytes.drain(at..end);
            }
            Mutation::EdgeInt(at, width, edge) => {
                let width_bytes = usize::from(*width);
                if len >= width_bytes {
                    let at = at.index(len - width_bytes + 1);
                    let value = edge_value(*edge, *width, len - at - width_bytes);
                    bytes[at..at + width_bytes]
                        .copy_from_slice(&value.to_le_bytes()[..width_bytes]);
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
            Mutation::Duplicate(at, n) if len > 0 => {
                let at = at.index(len);
                let end = (at + usize::from(*n)).min(len);
                let span = bytes[at..end].to_vec();
                bytes.splice(end..end, span);
            }
            Mutation::Splice(at, other, from) if !pool.is_empty() => {
                let other = &pool[other.index(pool.len())];
                let at = at.index(len + 1);
                let from = from.index(other.len() + 1);
                bytes.truncate(at);
                bytes.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    bytes
}

/// Reads structure from fuzz bytes: what an engine-level target builds its script of actions
/// with. Past the end it reads zeros, so every input means something.
#[derive(Debug)]
pub struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    /// Reads from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> ByteReader<'a> {
        ByteReader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        let byte = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    /// The next 8 bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        for byte in &mut out {
            *byte = self.u8();
        }
        u64::from_le_bytes(out)
    }

    /// A number biased to the edges around `near` (a current cid or regency): one byte picks
    /// near - 1, near, near + 1, near + small, 0, 1, `u64::MAX`, `u64::MAX - 1`, 2^63, or a raw
    /// 8-byte value.
    pub fn edgy(&mut self, near: u64) -> u64 {
        match self.u8() % 10 {
            0 => near.saturating_sub(1),
            1 => near,
            2 => near.saturating_add(1),
            3 => near.saturating_add(u64::from(self.u8() % 64)),
            4 => 0,
            5 => 1,
            6 => u64::MAX,
            7 => u64::MAX - 1,
            8 => 1 << 63,
            _ => self.u64(),
        }
    }

    /// Up to `max` bytes (a length byte, then the bytes).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::from(self.u8()).min(max);
        (0..len).map(|_| self.u8()).collect()
    }
}

/// Hex of `bytes`, 32 bytes per line (for corpus files).
pub fn hex_lines(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(32) {
        let _ = writeln!(out, "{}", hex::encode(chunk));
    }
    out
}
