//! The journal: the durable, ordered history of every committed transaction.
//!
//! # What it is
//!
//! Like the IRIS journal, this is where a write becomes durable. The SQLite database files are
//! derived state: each one records, inside itself, the journal position it has applied up to,
//! and anything the journal holds beyond that position is replayed into it at start-up. So the
//! rule of the write path is simple: **a transaction is acknowledged only after its record is in
//! the journal and fsynced**. The database files themselves are written without waiting for the
//! disk; losing their newest pages in a crash costs nothing because the journal has them.
//!
//! # How it is laid out
//!
//! The journal is a folder of *segments* (`mgr/journal/20261126.001`, `…002`, IRIS-style names).
//! Each segment starts with a header (see [`segment`]) naming the journal's stream id and the
//! position of its first record, followed by *frames*, one per record (see [`record`]). A record
//! carries its position, the mirror epoch, its commit time and the transaction's row changes per
//! database, as SQLite session changesets — never SQL text, so replay is deterministic. Positions
//! start at 1 and rise by exactly one per record, across segments; a gap is corruption.
//!
//! # Durability and group commit
//!
//! One thread owns the [`Journal`] (the instance's writer). It collects every transaction that
//! arrived while the previous batch was being flushed, writes their frames with one `write` and
//! makes them durable with one `fdatasync` ([`Journal::sync`]): many writers, one fsync. Mirroring
//! adds one step at the same point — the batch waits for the backup's acknowledgement before its
//! writers are answered — without changing anything here.
//!
//! # Crashes
//!
//! On start-up [`Journal::open`] scans every segment:
//! - a *torn tail* (the newest segment ends in an incomplete or unreadable frame with nothing valid
//!   after it) is cut off: it was never fsynced, so never acknowledged;
//! - damage anywhere else (a bad CRC with valid frames after it, a missing position, a segment that
//!   does not continue the previous one) is *corruption*: start-up stops and names the file and
//!   byte offset. Nothing is skipped silently.
//!
//! The write path's file operations (append, its undo, preallocation, the batch's fsync) go
//! through [`io::JournalIo`], so tests fail or tear them on the real files: a failed fsync is
//! reported and never counted durable, a torn append is cut at the next open, a full disk leaves
//! no half batch.
//!
//! # Left out
//!
//! Compression and encryption. (Old segments are purged by whoever knows what every reader still
//! needs: [`JournalShared::purge_before`].)

pub(crate) mod io;
pub mod record;
pub mod segment;
pub(crate) mod store;

pub use io::{DirectIo, Fault, InjectedFaults, JournalIo, JournalOp};
pub use record::{
    DbChanges, Epoch, FrameBuilder, JournalPos, MirrorEvent, Record, RecordBody, SchemaChange,
};
pub use segment::StreamId;
pub use store::{
    DEFAULT_MAX_SEGMENT_BYTES, Journal, JournalIter, JournalOptions, JournalShared, OpenReport,
    ReadResume, SegmentInfo, files_exist,
};

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::sync::Arc;

    use super::*;
    use crate::error::Error;

    const STREAM: StreamId = StreamId([42; 16]);

    fn record(pos: u64, payload: u8) -> Record {
        Record {
            pos: JournalPos(pos),
            epoch: Epoch(1),
            time_ms: 1_000 + pos as i64,
            body: RecordBody::Changes(vec![DbChanges {
                db: "COMPANY".into(),
                changeset: vec![payload; 100],
            }]),
        }
    }

    /// Appends records `from..=to` as one batch and syncs it.
    fn append_batch(journal: &mut Journal, from: u64, to: u64) {
        let mut buf = Vec::new();
        for pos in from..=to {
            record(pos, pos as u8).encode_into(&mut buf);
        }
        journal.append(&buf, JournalPos(to), to - from + 1).unwrap();
        journal.sync().unwrap();
    }

    fn read_all(shared: &JournalShared) -> Vec<Record> {
        shared
            .read_after(JournalPos::ZERO)
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.pop().unwrap()
    }

    /// Records `from..=to` as one batch of frames.
    fn batch(from: u64, to: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for pos in from..=to {
            record(pos, pos as u8).encode_into(&mut buf);
        }
        buf
    }

    /// A journal whose write path suffers the faults the test plans.
    fn faulty(dir: &std::path::Path) -> (Journal, Arc<InjectedFaults>) {
        let faults = Arc::new(InjectedFaults::default());
        let options = JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES).with_io(faults.clone());
        (Journal::open(dir, STREAM, options).unwrap().0, faults)
    }

    fn reopen(dir: &std::path::Path) -> (Journal, OpenReport) {
        Journal::open(
            dir,
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap()
    }

    #[test]
    fn a_failed_fsync_is_reported_and_leaves_the_durable_end_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, faults) = faulty(dir.path());
        append_batch(&mut journal, 1, 5);
        faults.next(JournalOp::Sync, Fault::Fail(libc::EIO));
        journal.append(&batch(6, 10), JournalPos(10), 5).unwrap();
        let err = journal.sync().unwrap_err();
        assert!(err.to_string().contains("fsync journal"), "{err}");
        assert_eq!(faults.injected(), 1);
        // Nobody may be told that 6..=10 are durable.
        assert_eq!(journal.shared().durable_end(), JournalPos(5));
        assert_eq!(journal.shared().appended_end(), JournalPos(10));
    }

    #[test]
    fn a_torn_append_is_cut_at_the_next_open_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, faults) = faulty(dir.path());
        append_batch(&mut journal, 1, 5);
        // The process dies 150 bytes into the next batch: the undo fails as well, so the torn
        // bytes stay on disk.
        faults.next(JournalOp::Append, Fault::Tear(150));
        let err = journal
            .append(&batch(6, 10), JournalPos(10), 5)
            .unwrap_err();
        assert!(err.to_string().contains("append to journal"), "{err}");
        assert!(journal.sync().is_err(), "a dead process syncs nothing");
        drop(journal);
        let (mut journal, report) = reopen(dir.path());
        // Cut: the torn frame's 150 bytes and the zeros made ready after them.
        let (_, _, cut) = report.truncated.expect("the torn tail is cut");
        assert!(cut >= 150, "cut {cut} bytes");
        assert_eq!(report.end, JournalPos(5));
        let positions: Vec<u64> = read_all(&journal.shared())
            .iter()
            .map(|r| r.pos.0)
            .collect();
        assert_eq!(positions, vec![1, 2, 3, 4, 5]);
        // The journal goes on from there.
        append_batch(&mut journal, 6, 10);
        assert_eq!(read_all(&journal.shared()).len(), 10);
    }

    #[test]
    fn a_full_disk_fails_the_append_without_leaving_half_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, faults) = faulty(dir.path());
        append_batch(&mut journal, 1, 5);
        faults.next(JournalOp::Append, Fault::Fail(libc::ENOSPC));
        let err = journal
            .append(&batch(6, 10), JournalPos(10), 5)
            .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(journal.end(), JournalPos(5));
        drop(journal);
        let (_, report) = reopen(dir.path());
        assert_eq!(report.truncated, None, "nothing torn to cut");
        assert_eq!(report.end, JournalPos(5));
    }

    #[test]
    fn records_round_trip_through_files_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, report) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        assert_eq!(report.end, JournalPos::ZERO);
        append_batch(&mut journal, 1, 3);
        append_batch(&mut journal, 4, 10);
        let shared = journal.shared();
        assert_eq!(shared.durable_end(), JournalPos(10));
        assert_eq!(
            read_all(&shared),
            (1..=10).map(|p| record(p, p as u8)).collect::<Vec<_>>()
        );
        drop(journal);

        let (journal, report) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        assert_eq!(report.end, JournalPos(10));
        assert_eq!(report.truncated, None);
        let from_seven: Vec<_> = journal
            .shared()
            .read_after(JournalPos(7))
            .map(|r| r.unwrap().pos.0)
            .collect();
        assert_eq!(from_seven, vec![8, 9, 10]);
    }

    #[test]
    fn positions_stay_ordered_across_segment_rollover() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: every couple of batches starts a new file.
        let (mut journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(600)).unwrap();
        for batch in 0..10 {
            append_batch(&mut journal, batch * 3 + 1, batch * 3 + 3);
        }
        let shared = journal.shared();
        let segments = shared.segments();
        assert!(
            segments.len() >= 5,
            "expected rollover, got {} segments",
            segments.len()
        );
        for pair in segments.windows(2) {
            assert!(pair[0].first_pos < pair[1].first_pos);
        }
        let positions: Vec<u64> = read_all(&shared).iter().map(|r| r.pos.0).collect();
        assert_eq!(positions, (1..=30).collect::<Vec<_>>());
        // Reading from the middle of a later segment starts at the right place.
        let tail: Vec<u64> = shared
            .read_after(JournalPos(22))
            .map(|r| r.unwrap().pos.0)
            .collect();
        assert_eq!(tail, (23..=30).collect::<Vec<_>>());
        drop(journal);
        let (_, report) = Journal::open(dir.path(), STREAM, JournalOptions::local(600)).unwrap();
        assert_eq!(report.end, JournalPos(30));
        assert_eq!(report.segments, segments.len());
    }

    #[test]
    fn preallocated_zeros_are_room_not_records() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions::local(4096);
        let (mut journal, _) = Journal::open(dir.path(), STREAM, options.clone()).unwrap();
        append_batch(&mut journal, 1, 3);
        let newest = newest_segment(dir.path());
        let frames_end = journal.shared().segments().last().unwrap().bytes;
        assert!(fs::metadata(&newest).unwrap().len() >= frames_end + store::PREALLOCATE_BYTES);
        drop(journal);
        // Reopened: no torn tail reported, the zeros kept as room, appending goes on after the
        // frames.
        let (mut journal, report) = Journal::open(dir.path(), STREAM, options.clone()).unwrap();
        assert_eq!(report.end, JournalPos(3));
        assert!(report.truncated.is_none(), "{report:?}");
        assert_eq!(
            journal.shared().segments().last().unwrap().bytes,
            frames_end
        );
        // Rolling over (4 KiB segments) cuts each finished file to its frames.
        for pos in 4..=60 {
            append_batch(&mut journal, pos, pos);
        }
        let segments = journal.shared().segments();
        assert!(segments.len() > 2);
        for older in &segments[..segments.len() - 1] {
            assert_eq!(
                fs::metadata(&older.path).unwrap().len(),
                older.bytes,
                "{}",
                older.name
            );
        }
        assert_eq!(read_all(&journal.shared()).len(), 60);
        // An older file that still ends in zeros (its cut lost in a crash) is cut on open.
        let first = segments[0].clone();
        std::os::unix::fs::FileExt::write_all_at(
            &OpenOptions::new().write(true).open(&first.path).unwrap(),
            &[0u8; 5000],
            first.bytes,
        )
        .unwrap();
        drop(journal);
        let (journal, report) = Journal::open(dir.path(), STREAM, options).unwrap();
        assert_eq!(report.end, JournalPos(60));
        assert_eq!(fs::metadata(&first.path).unwrap().len(), first.bytes);
        assert_eq!(read_all(&journal.shared()).len(), 60);
    }

    #[test]
    fn torn_tail_is_truncated_on_open_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        append_batch(&mut journal, 1, 5);
        let before = journal.shared().segments().last().unwrap().bytes;
        drop(journal);
        // Half of record 6 reaches the disk (where the frames end, in the preallocated zeros),
        // then the process dies.
        let mut half = Vec::new();
        record(6, 6).encode_into(&mut half);
        let path = newest_segment(dir.path());
        assert!(
            fs::metadata(&path).unwrap().len() > before,
            "space is preallocated"
        );
        std::os::unix::fs::FileExt::write_all_at(
            &OpenOptions::new().write(true).open(&path).unwrap(),
            &half[..half.len() / 2],
            before,
        )
        .unwrap();

        let (mut journal, report) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        assert_eq!(report.end, JournalPos(5));
        let (_, offset, cut) = report.truncated.clone().expect("torn tail reported");
        assert_eq!(offset, before);
        assert!(cut >= (half.len() / 2) as u64, "{cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), before);
        append_batch(&mut journal, 6, 7);
        assert_eq!(read_all(&journal.shared()).len(), 7);
    }

    #[test]
    fn bad_crc_in_the_middle_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        append_batch(&mut journal, 1, 5);
        drop(journal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let mut one = Vec::new();
        record(1, 1).encode_into(&mut one);
        // Damage a byte inside record 3's body.
        let at = segment::HEADER_LEN + 2 * one.len() + 40;
        bytes[at] ^= 0x55;
        fs::write(&path, &bytes).unwrap();

        let err = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .err()
        .unwrap();
        match err {
            Error::Corrupt(msg) => {
                assert!(
                    msg.contains(&format!("byte {}", segment::HEADER_LEN + 2 * one.len())),
                    "{msg}"
                );
                assert!(msg.contains("CRC"), "{msg}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // The file was left as it was, for a person to look at.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(600)).unwrap();
        for batch in 0..4 {
            append_batch(&mut journal, batch * 3 + 1, batch * 3 + 3);
        }
        let first = journal.shared().segments()[0].path.clone();
        drop(journal);
        let len = fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(
            Journal::open(dir.path(), STREAM, JournalOptions::local(600)),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn a_journal_of_another_stream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        append_batch(&mut journal, 1, 1);
        drop(journal);
        let err = Journal::open(
            dir.path(),
            StreamId([1; 16]),
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("another journal"), "{err}");
    }

    #[test]
    fn reads_seek_to_any_position_through_the_marks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(20_000)).unwrap();
        for batch in 0..50 {
            append_batch(&mut journal, batch * 10 + 1, batch * 10 + 10);
        }
        let shared = journal.shared();
        for after in [0u64, 1, 63, 64, 65, 127, 128, 300, 499] {
            let got: Vec<u64> = shared
                .read_after(JournalPos(after))
                .map(|r| r.unwrap().pos.0)
                .collect();
            assert_eq!(
                got,
                ((after + 1)..=500).collect::<Vec<_>>(),
                "after {after}"
            );
        }
        let (name, offset) = shared.locate(JournalPos(200)).unwrap();
        assert!(!name.is_empty() && offset >= 64);
        // The marks survive a reopen (they are rebuilt by the scan).
        drop(journal);
        let (journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(20_000)).unwrap();
        let got: Vec<u64> = journal
            .shared()
            .read_after(JournalPos(333))
            .map(|r| r.unwrap().pos.0)
            .collect();
        assert_eq!(got, (334..=500).collect::<Vec<_>>());
    }

    #[test]
    fn consecutive_reads_resume_where_the_last_stopped_across_files_and_cuts() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: reads cross file boundaries.
        let (mut journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(3_000)).unwrap();
        for batch in 0..30 {
            append_batch(&mut journal, batch * 10 + 1, batch * 10 + 10);
        }
        let shared = journal.shared();
        assert!(shared.segments().len() > 3, "{:?}", shared.segments());
        let mut resume = None;
        let mut after = JournalPos(0);
        let mut seen = Vec::new();
        for step in [7u64, 1, 30, 64, 5, 100, 93] {
            let until = JournalPos(after.0 + step);
            let mut records = shared.read_range_resuming(after, until, resume.as_ref());
            seen.extend(records.by_ref().map(|r| r.unwrap().pos.0));
            resume = records.resume_point();
            after = until;
        }
        assert_eq!(seen, (1..=300).collect::<Vec<_>>());

        // A resume point for another position is not used: the read starts where it is asked.
        let mut records = shared.read_range(JournalPos(0), JournalPos(10));
        records.by_ref().for_each(drop);
        let stale = records.resume_point();
        let got: Vec<u64> = shared
            .read_range_resuming(JournalPos(200), JournalPos(205), stale.as_ref())
            .map(|r| r.unwrap().pos.0)
            .collect();
        assert_eq!(got, (201..=205).collect::<Vec<_>>());

        // After a cut, the same position may sit at another offset: the old point is not used.
        let mut records = shared.read_range(JournalPos(0), JournalPos(295));
        records.by_ref().for_each(drop);
        let before_cut = records.resume_point();
        journal.truncate_after(JournalPos(290)).unwrap();
        // Rewritten with longer records: 296 no longer starts where it did.
        let mut buf = Vec::new();
        for pos in 291..=300 {
            let mut longer = record(pos, 7);
            if let RecordBody::Changes(changes) = &mut longer.body {
                changes[0].changeset = vec![7; 333];
            }
            longer.encode_into(&mut buf);
        }
        journal.append(&buf, JournalPos(300), 10).unwrap();
        journal.sync().unwrap();
        let got: Vec<(u64, bool)> = shared
            .read_range_resuming(JournalPos(295), JournalPos(300), before_cut.as_ref())
            .map(|r| r.unwrap())
            .map(|r| {
                (
                    r.pos.0,
                    matches!(&r.body, RecordBody::Changes(c) if c[0].changeset.len() == 333),
                )
            })
            .collect();
        assert_eq!(got, (296..=300).map(|p| (p, true)).collect::<Vec<_>>());
    }

    #[test]
    fn appended_records_can_be_read_before_they_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        append_batch(&mut journal, 1, 3);
        let mut buf = Vec::new();
        record(4, 4).encode_into(&mut buf);
        journal.append(&buf, JournalPos(4), 1).unwrap();
        let shared = journal.shared();
        assert_eq!(
            (shared.durable_end(), shared.appended_end()),
            (JournalPos(3), JournalPos(4))
        );
        assert_eq!(shared.read_after(JournalPos(0)).count(), 3);
        assert_eq!(shared.read_range(JournalPos(0), JournalPos(4)).count(), 4);
        // Appending something that does not continue the journal is refused.
        assert!(journal.append(&buf, JournalPos(9), 1).is_err());
    }

    #[test]
    fn two_journals_share_a_folder_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (mut local, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        let mirror_options =
            JournalOptions::mirror("MIRRORSET", DEFAULT_MAX_SEGMENT_BYTES, JournalPos(500));
        let (mut mirror, report) =
            Journal::open(dir.path(), StreamId([9; 16]), mirror_options.clone()).unwrap();
        assert_eq!(
            report.end,
            JournalPos(499),
            "a new mirror journal starts where it is told"
        );
        append_batch(&mut local, 1, 2);
        append_batch(&mut mirror, 500, 504);
        assert!(
            mirror.shared().segments()[0]
                .name
                .starts_with("MIRROR-MIRRORSET-")
        );
        drop((local, mirror));
        let (local, _) = Journal::open(
            dir.path(),
            STREAM,
            JournalOptions::local(DEFAULT_MAX_SEGMENT_BYTES),
        )
        .unwrap();
        let (mirror, _) = Journal::open(dir.path(), StreamId([9; 16]), mirror_options).unwrap();
        assert_eq!(local.end(), JournalPos(2));
        assert_eq!(mirror.end(), JournalPos(504));
        assert_eq!(mirror.shared().first_pos(), JournalPos(500));
    }

    #[test]
    fn truncate_after_removes_later_records_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(600)).unwrap();
        for batch in 0..6 {
            append_batch(&mut journal, batch * 3 + 1, batch * 3 + 3);
        }
        let before = journal.shared().segments().len();
        journal.truncate_after(JournalPos(7)).unwrap();
        assert!(journal.shared().segments().len() < before);
        assert_eq!(journal.end(), JournalPos(7));
        assert_eq!(journal.shared().durable_end(), JournalPos(7));
        append_batch(&mut journal, 8, 9);
        drop(journal);
        let (journal, report) =
            Journal::open(dir.path(), STREAM, JournalOptions::local(600)).unwrap();
        assert_eq!(report.end, JournalPos(9));
        assert_eq!(read_all(&journal.shared()).len(), 9);
    }

    #[test]
    fn older_records_can_be_fetched_in_front_and_old_files_purged() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            first_pos: JournalPos(11),
            ..JournalOptions::local(600)
        };
        let (mut journal, _) = Journal::open(dir.path(), STREAM, options.clone()).unwrap();
        append_batch(&mut journal, 11, 20);
        let mut older = Vec::new();
        for pos in 1..=10 {
            record(pos, pos as u8).encode_into(&mut older);
        }
        assert!(
            journal
                .prepend(&older, JournalPos(1), JournalPos(9))
                .is_err(),
            "a gap is refused"
        );
        journal
            .prepend(&older, JournalPos(1), JournalPos(10))
            .unwrap();
        let shared = journal.shared();
        assert_eq!(shared.first_pos(), JournalPos(1));
        assert_eq!(
            read_all(&shared)
                .iter()
                .map(|r| r.pos.0)
                .collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        drop(shared);
        drop(journal);
        let (mut journal, report) = Journal::open(dir.path(), STREAM, options.clone()).unwrap();
        assert_eq!(report.end, JournalPos(20));
        let removed = journal.purge_before(JournalPos(15)).unwrap();
        assert!(!removed.is_empty());
        let first = journal.shared().first_pos();
        assert!(
            first > JournalPos(1) && first <= JournalPos(15),
            "first now {first}"
        );
        let got: Vec<u64> = journal
            .shared()
            .read_after(JournalPos(14))
            .map(|r| r.unwrap().pos.0)
            .collect();
        assert_eq!(got, (15..=20).collect::<Vec<_>>());
        // Purging never removes the newest file.
        journal.purge_before(JournalPos(1000)).unwrap();
        assert_eq!(journal.shared().segments().len(), 1);
    }
}
