//! One receive round: what the receiver does with the journal frames of the messages it read
//! together, apart from the socket they came on.
//!
//! The receiver reads a message, then every message already buffered behind it, and stores
//! their frames with one append and one fsync before it acknowledges them (one round trip to
//! the disk per round, however many batches the primary sent meanwhile). A [`Round`] gathers
//! those frames and checks them as they come; [`Round::store`] writes them. It reads no socket
//! and no clock, so the simulation feeds it the bytes a primary's hub queued for its backup
//! and stores them with this very code (`crate::simulation::data`).
//!
//! # Invariants
//!
//! - **Contiguous, whole and intact.** Each message's frames follow the previous message's
//!   without a gap or an overlap, and every frame's header and checksum hold for the
//!   positions the message names ([`check_frames`]): a round that breaks off stores nothing.
//! - **After the journal's end.** The round's first record is the one after the member's
//!   journal end: the primary sends each member from where its hello said it ends, so anything
//!   else is a primary that skipped or repeated records, and nothing is stored.
//! - **Durable before acknowledged.** [`Round::store`] returns only after the fsync: the end
//!   it returns is what the member may acknowledge. A failed append or fsync is
//!   [`LinkError::JournalFailed`] (the instance stops: see the receiver's essay), never a
//!   broken link to retry — retrying would count records the system may have dropped.

use crate::error::{Error, Result};
use crate::journal::{Journal, JournalPos};
use crate::mirror::protocol::check_frames;
use crate::mirror::state::LinkError;

/// The frames of one receive round, checked and waiting for one append and one fsync.
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// The first record of the round, once frames came.
    first: Option<JournalPos>,
    /// The last record of the round.
    last: JournalPos,
    /// The frames, as they came (kept across rounds: [`Round::clear`] keeps the allocation).
    frames: Vec<u8>,
}

impl Round {
    /// Takes one message's frames, records `first..=last`: they must follow those taken
    /// before in this round and be whole and intact.
    pub(crate) fn take(&mut self, first: JournalPos, last: JournalPos, bytes: &[u8]) -> Result<()> {
        if self.first.is_some() && first != self.last.next() {
            return Err(Error::Corrupt(format!(
                "received records from {first} where {} was expected",
                self.last.next()
            )));
        }
        check_frames(bytes, first, last)?;
        self.first.get_or_insert(first);
        self.last = last;
        self.frames.extend_from_slice(bytes);
        Ok(())
    }

    /// The first record taken this round, if any.
    pub(crate) fn first(&self) -> Option<JournalPos> {
        self.first
    }

    /// How many bytes of frames were taken this round.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Appends the round's records after `journal`'s end and makes them durable (one fsync);
    /// returns the journal's end, which the member may now acknowledge. A round without
    /// frames stores nothing.
    pub(crate) fn store(
        &self,
        journal: &mut Journal,
    ) -> std::result::Result<JournalPos, LinkError> {
        let Some(first) = self.first else {
            return Ok(journal.end());
        };
        if first != journal.end().next() {
            return Err(Error::Corrupt(format!(
                "received records from {first} but this member's journal ends at {}",
                journal.end()
            ))
            .into());
        }
        journal
            .append(&self.frames, self.last, self.last.0 + 1 - first.0)
            // Acknowledged only once on disk: the primary counts an acknowledged record as
            // one a takeover keeps.
            .and_then(|()| journal.sync())
            .map_err(|e| LinkError::JournalFailed(e.to_string()))?;
        Ok(journal.end())
    }

    /// Empties the round for the next one.
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.last = JournalPos::ZERO;
        self.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{MirrorEvent, Record, RecordBody};
    use crate::journal::{Epoch, JournalOptions, StreamId};

    /// Frames for records `first..=last`, as a primary's journal holds them.
    fn frames(first: u64, last: u64) -> (JournalPos, JournalPos, Vec<u8>) {
        let mut bytes = Vec::new();
        for pos in first..=last {
            Record {
                pos: JournalPos(pos),
                epoch: Epoch(1),
                time_ms: 0,
                body: RecordBody::Event(MirrorEvent {
                    db: None,
                    json: format!("{{\"record\":{pos}}}"),
                }),
            }
            .encode_into(&mut bytes);
        }
        (JournalPos(first), JournalPos(last), bytes)
    }

    #[test]
    fn a_round_stores_contiguous_frames_once_and_refuses_a_gap_or_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions::mirror("M", 1 << 20, JournalPos(1));
        let (mut journal, _) = Journal::open(dir.path(), StreamId::random(), options).unwrap();
        let (a_first, a_last, a) = frames(1, 2);
        let (b_first, b_last, b) = frames(3, 5);
        let (c_first, c_last, c) = frames(6, 6);

        let mut round = Round::default();
        assert_eq!(round.store(&mut journal).unwrap(), JournalPos::ZERO);
        round.take(a_first, a_last, &a).unwrap();
        // A message that skips some: refused, and the round keeps what it had.
        let err = round.take(c_first, c_last, &c).unwrap_err();
        assert!(err.to_string().contains("where 3 was expected"), "{err}");
        round.take(b_first, b_last, &b).unwrap();
        assert_eq!(round.first(), Some(a_first));
        assert_eq!(round.len(), a.len() + b.len());
        assert_eq!(round.store(&mut journal).unwrap(), b_last);
        assert_eq!(journal.shared().durable_end(), b_last, "stored and fsynced");

        // The same records again: they do not follow the journal's end, nothing is stored.
        round.clear();
        round.take(b_first, b_last, &b).unwrap();
        assert!(matches!(
            round.store(&mut journal),
            Err(LinkError::Broken(_))
        ));
        assert_eq!(journal.end(), b_last);
        // Frames that say other positions than the message's are refused as they come.
        round.clear();
        assert!(round.take(c_first, c_last.next(), &c).is_err());
        round.take(c_first, c_last, &c).unwrap();
        assert_eq!(round.store(&mut journal).unwrap(), c_last);
    }
}
