//! Printing for a reader that may go away.
//!
//! `println!` panics when stdout is a pipe whose reader has closed it (`smr cluster | head`,
//! a `jq` that exits): Rust ignores SIGPIPE, so the write fails with `EPIPE` and the macro
//! panics on the error. Every `smr` print site goes through [`outln!`](crate::outln) instead,
//! which returns the failure as an [`OutputError`]; the command stops where it is (cleaning up
//! what it started, such as the replicas of `smr cluster`) and `main` exits quietly with status
//! 0 when [`reader_gone`] says that is why (status 0, not 141: the reader chose to stop
//! reading, which is no failure of the command, and `set -o pipefail` scripts piping into
//! `head` keep working).
//!
//! Messages on stderr ([`errln!`](crate::errln)) are best effort: they are diagnostics, not
//! the output the reader asked for, and a command does not stop because nobody reads them
//! (as `tracing` drops its lines on a closed stderr).

use std::fmt;
use std::io::{self, Write};

/// Why a line could not be written to stdout.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader of stdout closed its end of the pipe (`EPIPE`).
    #[error("the reader of stdout went away")]
    ReaderGone,
    /// Any other write failure (a full disk behind a redirect, say).
    #[error("cannot write to stdout: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe => OutputError::ReaderGone,
            _ => OutputError::Io(e),
        }
    }
}

/// Writes `text` to stdout and flushes it.
pub fn stdout_text(text: &str) -> Result<(), OutputError> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes `args` and a newline to stdout (what [`outln!`](crate::outln) expands to).
pub fn stdout_line(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// Writes `args` and a newline to stderr if it can (what [`errln!`](crate::errln) expands to).
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    // Best effort: see the module docs.
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Whether `error` (or one of its causes) is an [`OutputError::ReaderGone`]: the command
/// stopped because the reader of its output went away.
pub fn reader_gone(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(OutputError::ReaderGone)))
}

/// `println!` that returns `Result<(), OutputError>` instead of panicking when stdout is
/// closed.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a line nobody can read on stderr is dropped.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_is_the_reader_gone() {
        let gone: anyhow::Error =
            OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe)).into();
        assert!(reader_gone(&gone));
        assert!(reader_gone(
            &gone.context("while printing the status table")
        ));
        let full: anyhow::Error = OutputError::from(io::Error::from(io::ErrorKind::Other)).into();
        assert!(!reader_gone(&full));
        // A broken pipe elsewhere (a child's stdin, a socket) is a failure, not a reader gone.
        let other: anyhow::Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(!reader_gone(&other));
    }
}
