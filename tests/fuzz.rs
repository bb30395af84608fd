//! Property-based fuzzing of everything a member decodes from bytes it did not write itself:
//! journal frames (from disk, or from the primary), journal segment files, the data channel's
//! messages, the agent's and the arbiter's protocol, and the SQLite changesets a backup applies.
//!
//! Each property runs a bounded number of generated cases (`PROPTEST_CASES` overrides them),
//! so the whole file takes seconds in CI. What must hold, whatever the bytes:
//!
//! - no decoder panics, and none allocates what a length prefix claims before checking it;
//! - a frame that was damaged (one bit flipped anywhere, or cut short) is never taken for a
//!   record; an undamaged one decodes to exactly what was encoded;
//! - a changeset with damaged bytes is refused or applied as a whole, and the database file stays
//!   sound (`PRAGMA integrity_check`).
//!
//! A failing case is shrunk by proptest and its seed written to `tests/fuzz.proptest-regressions`;
//! that file is committed, and its cases are replayed first on every later run (the regression
//! tests).

use std::io::Cursor;

use mirrorlab::agent::{AgentReply, AgentRequest};
use mirrorlab::arbiter::{FromArbiter, ToArbiter};
use mirrorlab::journal::record::{Decoded, FRAME_MAGIC, decode_frame};
use mirrorlab::journal::segment::{HEADER_LEN, SegmentHeader, scan};
use mirrorlab::journal::{
    DbChanges, Epoch, JournalPos, MirrorEvent, Record, RecordBody, SchemaChange,
};
use mirrorlab::mirror::protocol::{Message, check_frames, read_message};
use mirrorlab::storage::database::{OnConflict, apply_changesets};
use mirrorlab::wire::{MAX_AGENT_FRAME, read_frame_sync};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        ..ProptestConfig::default()
    }
}

fn db_name() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9_]{0,15}"
}

fn record_body() -> impl Strategy<Value = RecordBody> {
    prop_oneof![
        prop::collection::vec(
            // The journal never holds an empty changeset (the decoder refuses one).
            (db_name(), prop::collection::vec(any::<u8>(), 1..300))
                .prop_map(|(db, changeset)| DbChanges { db, changeset }),
            1..4
        )
        .prop_map(RecordBody::Changes),
        (db_name(), any::<bool>(), ".{0,80}").prop_map(|(db, qualified, sql)| {
            RecordBody::Schema(SchemaChange { db, qualified, sql })
        }),
        (prop::option::of(db_name()), ".{0,80}")
            .prop_map(|(db, json)| RecordBody::Event(MirrorEvent { db, json })),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (1..u64::MAX / 2, any::<u64>(), any::<i64>(), record_body()).prop_map(
        |(pos, epoch, time_ms, body)| Record {
            pos: JournalPos(pos),
            epoch: Epoch(epoch),
            time_ms,
            body,
        },
    )
}

fn encoded(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::new();
    record.encode_into(&mut bytes);
    bytes
}

/// Frames of records `first..`, each with a changeset of `sizes[i]` bytes (at least one), one
/// buffer.
fn frames(first: u64, sizes: &[usize]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let record = Record {
            pos: JournalPos(first + i as u64),
            epoch: Epoch(1),
            time_ms: 0,
            body: RecordBody::Changes(vec![DbChanges {
                db: "COMPANY".into(),
                changeset: vec![i as u8; *size],
            }]),
        };
        record.encode_into(&mut bytes);
    }
    bytes
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn a_journal_frame_decodes_to_what_was_encoded(record in record()) {
        let bytes = encoded(&record);
        match decode_frame(&bytes) {
            Decoded::Record(decoded, used) => {
                prop_assert_eq!(decoded, record);
                prop_assert_eq!(used, bytes.len());
            }
            other => prop_assert!(false, "a sound frame did not decode: {:?}", other),
        }
    }

    #[test]
    fn a_damaged_journal_frame_is_never_taken_for_a_record(
        record in record(),
        bit in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let sound = encoded(&record);
        let mut flipped = sound.clone();
        let at = bit.index(flipped.len() * 8);
        flipped[at / 8] ^= 1 << (at % 8);
        prop_assert!(
            !matches!(decode_frame(&flipped), Decoded::Record(..)),
            "bit {} flipped and the frame still decoded", at
        );
        let short = &sound[..cut.index(sound.len())];
        prop_assert!(matches!(decode_frame(short), Decoded::Incomplete | Decoded::Invalid(_)));
    }

    #[test]
    fn arbitrary_bytes_never_crash_the_frame_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        magic in any::<bool>(),
        len in any::<u32>(),
    ) {
        // Half of the cases start like a frame, so the decoder gets past its first check.
        let mut input = if magic { FRAME_MAGIC.to_vec() } else { Vec::new() };
        if magic {
            input.extend_from_slice(&len.to_le_bytes());
        }
        input.extend_from_slice(&bytes);
        let _ = decode_frame(&input);
    }

    #[test]
    fn a_segment_scan_keeps_the_sound_frames_before_any_garbage(
        sizes in prop::collection::vec(1usize..200, 0..20),
        garbage in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let header = SegmentHeader { stream: mirrorlab::journal::StreamId([3; 16]), first_pos: JournalPos(100), created_ms: 1 };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&frames(100, &sizes));
        let sound_len = bytes.len() as u64;
        bytes.extend_from_slice(&garbage);
        let found = scan(&bytes, &header);
        prop_assert!(found.valid_len >= sound_len.min(HEADER_LEN as u64));
        prop_assert!(found.valid_len <= bytes.len() as u64);
        if !sizes.is_empty() {
            // Garbage could only extend the valid run by forming a whole frame with the right
            // position and CRC.
            prop_assert!(found.last_pos >= Some(JournalPos(100 + sizes.len() as u64 - 1)));
        }
    }

    #[test]
    fn arbitrary_bytes_never_crash_the_data_channel(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        kind in 0u8..6,
        first in any::<u64>(),
        last in any::<u64>(),
    ) {
        // A plausible header (length, kind) in front, so decoding reaches the payload.
        let mut input = ((bytes.len() + 1) as u32).to_be_bytes().to_vec();
        input.push(kind);
        input.extend_from_slice(&bytes);
        for stream in [&bytes[..], &input[..]] {
            let mut cursor = Cursor::new(stream);
            while let Ok(Some(message)) = read_message(&mut cursor) {
                if let Message::Frames { first, last, bytes } = message {
                    let _ = check_frames(&bytes, first, last);
                }
            }
        }
        let _ = check_frames(&bytes, JournalPos(first), JournalPos(last));
    }

    #[test]
    fn received_frames_with_any_damage_are_refused(
        sizes in prop::collection::vec(1usize..100, 1..8),
        bit in any::<prop::sample::Index>(),
    ) {
        let sound = frames(7, &sizes);
        let last = JournalPos(7 + sizes.len() as u64 - 1);
        prop_assert_eq!(check_frames(&sound, JournalPos(7), last).unwrap(), sizes.len() as u64);
        let mut damaged = sound.clone();
        let at = bit.index(damaged.len() * 8);
        damaged[at / 8] ^= 1 << (at % 8);
        prop_assert!(check_frames(&damaged, JournalPos(7), last).is_err(), "bit {} flipped", at);
        // Claimed positions that do not match the frames are refused too.
        prop_assert!(check_frames(&sound, JournalPos(8), JournalPos(last.0 + 1)).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_crash_the_agent_and_arbiter_protocols(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        json in r#"\{"(op|type)":"[a-z_]{0,14}"(,"[a-z_]{1,12}":("[^"]{0,8}"|[0-9]{1,20}|true|null|\[\]))*\}"#,
    ) {
        let framed = |body: &[u8]| {
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(body);
            out
        };
        for input in [bytes.clone(), framed(&bytes), framed(json.as_bytes())] {
            let _ = read_frame_sync::<_, AgentRequest>(&mut Cursor::new(&input), MAX_AGENT_FRAME);
            let _ = read_frame_sync::<_, AgentReply>(&mut Cursor::new(&input), MAX_AGENT_FRAME);
            let _ = read_frame_sync::<_, ToArbiter>(&mut Cursor::new(&input), MAX_AGENT_FRAME);
            let _ = read_frame_sync::<_, FromArbiter>(&mut Cursor::new(&input), MAX_AGENT_FRAME);
        }
    }
}

/// A database with one table and the changeset of some inserts, updates and deletes on it.
fn database_and_changeset(rows: &[(i64, String)]) -> (tempfile::TempDir, Vec<u8>) {
    use rusqlite::session::Session;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.db");
    let source = dir.path().join("source.db");
    for file in [&path, &source] {
        let conn = rusqlite::Connection::open(file).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        )
        .unwrap();
    }
    let conn = rusqlite::Connection::open(&source).unwrap();
    let mut session = Session::new(&conn).unwrap();
    session.attach::<&str>(None).unwrap();
    for (id, name) in rows {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET name = excluded.name",
            rusqlite::params![id, name],
        )
        .unwrap();
    }
    conn.execute("DELETE FROM t WHERE id = 2", []).unwrap();
    let mut changeset = Vec::new();
    session.changeset_strm(&mut changeset).unwrap();
    (dir, changeset)
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn a_damaged_changeset_is_refused_or_applied_and_the_file_stays_sound(
        rows in prop::collection::vec((1i64..20, "[a-z]{0,12}"), 1..10),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        local_writes in any::<bool>(),
    ) {
        let (dir, mut changeset) = database_and_changeset(&rows);
        for (at, byte) in &damage {
            let i = at.index(changeset.len());
            changeset[i] = *byte;
        }
        if let Some(cut) = cut {
            changeset.truncate(cut.index(changeset.len()));
        }
        let conn = rusqlite::Connection::open(dir.path().join("mirror.db")).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        // Both policies: a backup's (abort) and a Read-Write Reporting async's (primary wins).
        let policy = if local_writes { OnConflict::PrimaryWins } else { OnConflict::Abort };
        let applied = apply_changesets(&conn, "T", &changeset, "test", policy);
        // As the dejournaler does: a refused changeset is rolled back as a whole.
        conn.execute_batch(if applied.is_ok() { "COMMIT" } else { "ROLLBACK" }).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        prop_assert_eq!(check, "ok");
        if damage.is_empty() && cut.is_none() {
            prop_assert!(applied.is_ok(), "a sound changeset was refused: {:?}", applied);
            let rows: i64 = conn.query_row("SELECT count(*) FROM t WHERE id = 2", [], |r| r.get(0)).unwrap();
            prop_assert_eq!(rows, 0);
        }
    }
}
