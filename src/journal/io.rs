//! The journal's writes and fsyncs on its write path, behind one small trait with labelled
//! operations, so a test can make one fail or tear on the real file — a failed `fdatasync`, a
//! disk that fills up, a batch cut short by a crash — without a file system of its own.
//!
//! # How
//!
//! [`Journal`](super::Journal) calls [`JournalIo`] for every operation that a group commit
//! depends on: appending a batch ([`JournalOp::Append`]), undoing a failed append
//! ([`JournalOp::UndoAppend`]), filling space ahead of the frames with zeros and making it durable
//! ([`JournalOp::Preallocate`]), and the batch's `fdatasync` ([`JournalOp::Sync`]). [`DirectIo`]
//! makes the file's own calls; it is what every member runs. [`InjectedFaults`] makes the same
//! calls until a test tells it to fail the next operation of a kind with an OS error (`EIO`,
//! `ENOSPC`), or to tear the next append: write only its first bytes and then behave as a process
//! that died there — every later operation fails, so nothing tidies the torn bytes away, and the
//! next open must.
//!
//! # Invariants it lets tests check
//!
//! A failed append or fsync is reported, never retried (the writer then stops: limping on after
//! a failed fsync is how databases lose data); a torn tail is cut at the next open and nothing
//! before it is lost; nothing is acknowledged that the failing operation did not make durable.
//!
//! # Left out
//!
//! Opening, rolling over to a new segment, cutting and prepending files, and purging still call
//! the file system directly: they are rare, each fsyncs before it reports success, and their
//! failures already stop whatever asked for them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// An operation of the journal's write path, as [`JournalIo`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalOp {
    /// Writing a batch of frames after the last one.
    Append,
    /// Cutting the file back to its frames after a failed append.
    UndoAppend,
    /// Writing zeros ahead of the frames, and making them durable.
    Preallocate,
    /// The batch's `fdatasync`: the group commit.
    Sync,
}

/// How the journal writes and syncs its newest segment.
pub trait JournalIo: Send + Sync + std::fmt::Debug {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&self, op: JournalOp, file: &File, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self, op: JournalOp, file: &File) -> io::Result<()>;
    /// Sets the file's length.
    fn set_len(&self, op: JournalOp, file: &File, len: u64) -> io::Result<()>;
}

/// The file's own calls: what every member runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectIo;

impl JournalIo for DirectIo {
    fn write_at(&self, _: JournalOp, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&self, _: JournalOp, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn set_len(&self, _: JournalOp, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
}

/// What [`InjectedFaults`] does to the next operation of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail it with this OS error number (`libc::EIO`, `libc::ENOSPC`, …), doing nothing.
    Fail(i32),
    /// Write only this many bytes of it, then act as a process that died there: this and every
    /// later operation fail with `EIO`.
    Tear(usize),
}

/// [`DirectIo`] with faults a test asks for (see the module essay).
#[derive(Debug, Default)]
pub struct InjectedFaults {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Faults still to come, each for the next operation of its kind.
    planned: Vec<(JournalOp, Fault)>,
    /// A torn write happened: the "process" is gone.
    dead: bool,
    /// Operations that were failed or torn so far.
    injected: usize,
}

impl InjectedFaults {
    /// Makes the next operation `op` suffer `fault`.
    pub fn next(&self, op: JournalOp, fault: Fault) {
        self.state.lock().unwrap().planned.push((op, fault));
    }

    /// How many operations were failed or torn so far.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }

    /// What to do with `op` now: go ahead (`None`), write only this many bytes of it and then
    /// fail (`Some`), or fail at once (`Err`).
    fn check(&self, op: JournalOp) -> io::Result<Option<usize>> {
        let mut state = self.state.lock().unwrap();
        if state.dead {
            state.injected += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let Some(at) = state.planned.iter().position(|(o, _)| *o == op) else {
            return Ok(None);
        };
        let (_, fault) = state.planned.remove(at);
        state.injected += 1;
        match fault {
            Fault::Fail(errno) => Err(io::Error::from_raw_os_error(errno)),
            Fault::Tear(keep) => {
                state.dead = true;
                Ok(Some(keep))
            }
        }
    }

    /// [`InjectedFaults::check`] for an operation that cannot be done in part.
    fn check_whole(&self, op: JournalOp) -> io::Result<()> {
        match self.check(op)? {
            None => Ok(()),
            Some(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

impl JournalIo for InjectedFaults {
    fn write_at(&self, op: JournalOp, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        match self.check(op)? {
            None => file.write_all_at(bytes, offset),
            Some(keep) => {
                file.write_all_at(&bytes[..keep.min(bytes.len())], offset)?;
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
    }

    fn sync_data(&self, op: JournalOp, file: &File) -> io::Result<()> {
        self.check_whole(op)?;
        file.sync_data()
    }

    fn set_len(&self, op: JournalOp, file: &File, len: u64) -> io::Result<()> {
        self.check_whole(op)?;
        file.set_len(len)
    }
}
