//! Journal records and their byte layout.
//!
//! A record is one committed transaction: its journal position, the mirror epoch it was written
//! in, its commit time, and what it changed. What it changed is either the row changes per
//! database (a SQLite session changeset for each database the transaction touched) or one schema
//! statement (DDL, which the session extension cannot capture).
//!
//! # Frame layout
//!
//! Every record is stored as one frame. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MLJR"          lets a scan find frame starts again after damage
//!      4     4  body length N         1 ..= MAX_BODY_LEN
//!      8     4  CRC-32 (IEEE)         over bytes 4..8 (the length) and the N body bytes
//!     12     N  body
//!
//! body:
//!      0     8  position              u64, 1 for the first record, +1 for each next one
//!      8     8  epoch                 u64, the mirror epoch (failover generation) that wrote it
//!     16     8  commit time           i64, milliseconds since the Unix epoch
//!     24     1  kind                  1 = row changes, 2 = schema statement, 3 = mirror event
//!     25     …  payload
//!
//! payload of kind 1 (row changes):
//!      0     2  database count D      u16, at least 1
//!      then D times:
//!            1  name length L         u8
//!            L  database name         ASCII, upper case
//!            4  changeset length C    u32
//!            C  changeset             SQLite session changeset bytes for that database
//!
//! payload of kind 2 (schema statement):
//!            1  name length L, L name bytes    the database the statement changes
//!            1  qualified                      1 when the statement names the database
//!                                              (`CREATE TABLE COMPANY.t ...`), 0 when it
//!                                              relies on it being the namespace's default
//!            4  statement length S, S bytes    UTF-8 SQL text of the one DDL statement
//!
//! payload of kind 3 (mirror event):
//!            1  name length L (0 = none), L name bytes   the database the event is about
//!            4  event length E, E bytes                  UTF-8 JSON describing the event
//!                                                        (mirror created, database added, …)
//! ```
//!
//! The CRC covers the length as well as the body, so a flipped bit in the length is caught
//! instead of sending the scan off to a wrong frame boundary. Row changes are never stored as
//! SQL text: a changeset holds the old and new values of each row, so replay is deterministic
//! whatever functions (`random()`, `datetime('now')`) the original statement called.

use std::fmt;

use crate::error::{Error, Result};

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"MLJR";
/// Bytes before the body: magic, length, CRC.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest body accepted (one transaction's changes). Larger lengths are treated as damage.
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Fixed part of the body before the payload.
const BODY_FIXED_LEN: usize = 25;

const KIND_CHANGES: u8 = 1;
const KIND_SCHEMA: u8 = 2;
const KIND_EVENT: u8 = 3;

/// A position in the journal: the sequence number of a record. Position 0 means "before the first
/// record", so a database that has applied nothing stores 0.
/// On the wire (JSON) it is the bare number.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct JournalPos(pub u64);

impl JournalPos {
    /// The position before any record.
    pub const ZERO: JournalPos = JournalPos(0);

    /// The position right after this one.
    pub fn next(self) -> JournalPos {
        JournalPos(self.0 + 1)
    }
}

impl fmt::Display for JournalPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A mirror epoch: it begins when a member becomes primary by a takeover, and every record
/// carries the one it was written in. A member whose newest record is from an older epoch may
/// hold a divergent tail; a member from a newer one knows of a takeover this one missed. On the
/// wire (JSON) it is the bare number.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a takeover begins after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it sits in the journal.
    pub pos: JournalPos,
    /// The mirror epoch it was written in.
    pub epoch: Epoch,
    /// Commit time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What the transaction changed.
    pub body: RecordBody,
}

/// What a record changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Row changes, one changeset per database touched.
    Changes(Vec<DbChanges>),
    /// One schema statement in one database.
    Schema(SchemaChange),
    /// A mirror event (the mirror module gives the JSON its meaning).
    Event(MirrorEvent),
}

/// A mirror event as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorEvent {
    /// The database it is about, if any.
    pub db: Option<String>,
    /// The event, as JSON text.
    pub json: String,
}

/// The row changes a transaction made in one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbChanges {
    /// The database name (upper case).
    pub db: String,
    /// The SQLite session changeset.
    pub changeset: Vec<u8>,
}

/// A DDL statement and the database it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// The database the statement changed.
    pub db: String,
    /// True when the statement names the database itself (`COMPANY.t`).
    pub qualified: bool,
    /// The statement.
    pub sql: String,
}

impl Record {
    /// The databases this record changes.
    pub fn databases(&self) -> impl Iterator<Item = &str> {
        let (changes, single) = match &self.body {
            RecordBody::Changes(c) => (c.as_slice(), None),
            RecordBody::Schema(s) => (&[][..], Some(s.db.as_str())),
            RecordBody::Event(e) => (&[][..], e.db.as_deref()),
        };
        changes.iter().map(|c| c.db.as_str()).chain(single)
    }

    /// Appends this record's frame to `out`: the inverse of [`decode_frame`] for every record it
    /// returns (each `Changes` entry holds a non-empty changeset; an empty one is left out).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut frame = FrameBuilder::begin(out, self.pos, self.epoch, self.time_ms);
        match &self.body {
            RecordBody::Changes(changes) => {
                for change in changes {
                    frame
                        .add_changes(&change.db, |buf| {
                            buf.extend_from_slice(&change.changeset);
                            Ok(())
                        })
                        .expect("copying bytes cannot fail");
                }
            }
            RecordBody::Schema(s) => frame.set_schema(&s.db, s.qualified, &s.sql),
            RecordBody::Event(e) => frame.set_event(e.db.as_deref(), &e.json),
        }
        frame.finish();
    }
}

/// Writes one frame straight into a batch buffer, so the write path does not build a `Record`
/// and copy it: the changeset is streamed by SQLite into its final place, and the length and CRC
/// are filled in at the end.
pub struct FrameBuilder<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    kind: Option<u8>,
    count: u16,
}

impl<'a> FrameBuilder<'a> {
    /// Starts a frame at the end of `buf`.
    pub fn begin(buf: &'a mut Vec<u8>, pos: JournalPos, epoch: Epoch, time_ms: i64) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&FRAME_MAGIC);
        buf.extend_from_slice(&[0; 8]); // length and CRC, filled in by finish()
        buf.extend_from_slice(&pos.0.to_le_bytes());
        buf.extend_from_slice(&epoch.0.to_le_bytes());
        buf.extend_from_slice(&time_ms.to_le_bytes());
        buf.push(0); // kind, set by the first payload call
        FrameBuilder {
            buf,
            start,
            kind: None,
            count: 0,
        }
    }

    /// Adds one database's changeset; `write` appends the changeset bytes to the buffer. An empty
    /// changeset (the statement changed nothing in that database) leaves no entry; the result
    /// says whether an entry was added.
    pub fn add_changes(
        &mut self,
        db: &str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<bool> {
        assert_ne!(
            self.kind,
            Some(KIND_SCHEMA),
            "a frame holds changes or a schema statement"
        );
        if self.kind.is_none() {
            self.kind = Some(KIND_CHANGES);
            self.buf.extend_from_slice(&[0, 0]); // database count, patched in finish()
        }
        let entry_start = self.buf.len();
        push_short_str(self.buf, db);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        if let Err(err) = write(self.buf) {
            self.buf.truncate(entry_start);
            return Err(err);
        }
        let len = self.buf.len() - len_at - 4;
        if len == 0 {
            self.buf.truncate(entry_start);
            return Ok(false);
        }
        self.buf[len_at..len_at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.count += 1;
        Ok(true)
    }

    /// True while the frame holds no changes and no schema statement.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && !matches!(self.kind, Some(KIND_SCHEMA) | Some(KIND_EVENT))
    }

    /// Makes this frame a schema statement.
    pub fn set_schema(&mut self, db: &str, qualified: bool, sql: &str) {
        assert!(self.kind.is_none(), "a frame holds one payload");
        self.kind = Some(KIND_SCHEMA);
        push_short_str(self.buf, db);
        self.buf.push(qualified as u8);
        self.buf
            .extend_from_slice(&(sql.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(sql.as_bytes());
    }

    /// Makes this frame a mirror event.
    pub fn set_event(&mut self, db: Option<&str>, json: &str) {
        assert!(self.kind.is_none(), "a frame holds one payload");
        self.kind = Some(KIND_EVENT);
        push_short_str(self.buf, db.unwrap_or(""));
        self.buf
            .extend_from_slice(&(json.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(json.as_bytes());
    }

    /// Completes the frame: kind, count, length, CRC.
    pub fn finish(self) {
        let kind = self.kind.expect("a frame needs a payload");
        let body_start = self.start + FRAME_HEADER_LEN;
        self.buf[body_start + 24] = kind;
        if kind == KIND_CHANGES {
            let at = body_start + BODY_FIXED_LEN;
            self.buf[at..at + 2].copy_from_slice(&self.count.to_le_bytes());
        }
        let body_len = (self.buf.len() - body_start) as u32;
        self.buf[self.start + 4..self.start + 8].copy_from_slice(&body_len.to_le_bytes());
        let crc = frame_crc(
            &self.buf[self.start + 4..self.start + 8],
            &self.buf[body_start..],
        );
        self.buf[self.start + 8..self.start + 12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Drops the partly built frame, leaving the buffer as it was.
    pub fn abandon(self) {
        self.buf.truncate(self.start);
    }
}

fn push_short_str(buf: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= u8::MAX as usize,
        "database names are at most 64 bytes"
    );
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
}

/// The CRC of a frame: over its length field and its body.
pub fn frame_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(body);
    hasher.finalize()
}

/// The outcome of decoding the bytes at one frame boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame: the record and how many bytes it used.
    Record(Record, usize),
    /// The bytes end before the frame does (a torn write, if this is the end of the journal).
    Incomplete,
    /// The bytes are not a valid frame; the reason says why.
    Invalid(String),
}

/// Decodes the frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Decoded {
    if bytes.len() < FRAME_HEADER_LEN {
        return if FRAME_MAGIC.starts_with(&bytes[..bytes.len().min(4)]) {
            Decoded::Incomplete
        } else {
            Decoded::Invalid("bad frame magic".into())
        };
    }
    if bytes[0..4] != FRAME_MAGIC {
        return Decoded::Invalid("bad frame magic".into());
    }
    let body_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Decoded::Invalid(format!("impossible body length {body_len}"));
    }
    let total = FRAME_HEADER_LEN + body_len;
    if bytes.len() < total {
        return Decoded::Incomplete;
    }
    let stored_crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let body = &bytes[FRAME_HEADER_LEN..total];
    if frame_crc(&bytes[4..8], body) != stored_crc {
        return Decoded::Invalid("CRC mismatch".into());
    }
    match decode_body(body) {
        Ok(record) => Decoded::Record(record, total),
        Err(reason) => Decoded::Invalid(reason),
    }
}

/// Reads a body whose CRC already matched. A failure here means a writer bug, not disk damage.
fn decode_body(body: &[u8]) -> std::result::Result<Record, String> {
    let mut r = Reader { bytes: body, at: 0 };
    let pos = JournalPos(r.u64()?);
    let epoch = Epoch(r.u64()?);
    let time_ms = r.u64()? as i64;
    let kind = r.u8()?;
    let body = match kind {
        KIND_CHANGES => {
            let count = r.u16()?;
            if count == 0 {
                return Err("row-change record without databases".into());
            }
            let mut changes = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let db = r.short_str()?;
                let len = r.u32()? as usize;
                // The writer never journals an empty changeset (see `add_changes`): one here
                // would also not survive re-encoding, which drops it.
                if len == 0 {
                    return Err(format!("empty changeset for database {db}"));
                }
                let changeset = r.take(len)?.to_vec();
                changes.push(DbChanges { db, changeset });
            }
            RecordBody::Changes(changes)
        }
        KIND_SCHEMA => {
            let db = r.short_str()?;
            let qualified = r.u8()? != 0;
            let len = r.u32()? as usize;
            let sql = String::from_utf8(r.take(len)?.to_vec())
                .map_err(|_| "schema statement is not UTF-8".to_string())?;
            RecordBody::Schema(SchemaChange { db, qualified, sql })
        }
        KIND_EVENT => {
            let db = r.short_str()?;
            let len = r.u32()? as usize;
            let json = String::from_utf8(r.take(len)?.to_vec())
                .map_err(|_| "mirror event is not UTF-8".to_string())?;
            RecordBody::Event(MirrorEvent {
                db: (!db.is_empty()).then_some(db),
                json,
            })
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    if r.at != r.bytes.len() {
        return Err("trailing bytes after the payload".into());
    }
    Ok(Record {
        pos,
        epoch,
        time_ms,
        body,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| "payload shorter than its fields say".to_string())?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn short_str(&mut self) -> std::result::Result<String, String> {
        let len = self.u8()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "name is not UTF-8".to_string())
    }
}

/// Turns a decode failure at a known place into an error that names it.
pub(crate) fn corrupt_at(segment: &str, offset: u64, reason: &str) -> Error {
    Error::Corrupt(format!(
        "journal file {segment} is damaged at byte {offset}: {reason}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(pos: u64) -> Record {
        Record {
            pos: JournalPos(pos),
            epoch: Epoch(3),
            time_ms: 1_700_000_000_000 + pos as i64,
            body: RecordBody::Changes(vec![
                DbChanges {
                    db: "COMPANY".into(),
                    changeset: vec![1, 2, 3, pos as u8],
                },
                DbChanges {
                    db: "PERSONAL".into(),
                    changeset: vec![9; 3],
                },
            ]),
        }
    }

    /// Found by `tests/fuzz.rs`: a record whose only changeset was empty encoded to a frame the
    /// decoder refused, and one with an empty changeset beside others lost that entry on the way.
    /// Such entries are now invalid in a frame, so encoding and decoding are exact inverses.
    #[test]
    fn an_empty_changeset_is_not_a_valid_entry() {
        let mut frame = Vec::new();
        let mut builder = FrameBuilder::begin(&mut frame, JournalPos(1), Epoch(1), 1);
        assert!(!builder.add_changes("COMPANY", |_| Ok(())).unwrap());
        assert!(builder.is_empty());
        builder.abandon();
        assert!(frame.is_empty());

        // Written by hand: one entry of length 0.
        let mut frame = Vec::new();
        let mut builder = FrameBuilder::begin(&mut frame, JournalPos(1), Epoch(1), 1);
        builder
            .add_changes("COMPANY", |b| {
                b.push(7);
                Ok(())
            })
            .unwrap();
        builder.finish();
        let len_at = frame.len() - 5;
        frame[len_at..len_at + 4].copy_from_slice(&0u32.to_le_bytes());
        frame.pop();
        let body_len = (frame.len() - FRAME_HEADER_LEN) as u32;
        frame[4..8].copy_from_slice(&body_len.to_le_bytes());
        let crc = frame_crc(&frame[4..8], &frame[FRAME_HEADER_LEN..]);
        frame[8..12].copy_from_slice(&crc.to_le_bytes());
        match decode_frame(&frame) {
            Decoded::Invalid(why) => assert!(why.contains("empty changeset"), "{why}"),
            other => panic!("decoded an empty changeset: {other:?}"),
        }
    }

    #[test]
    fn round_trip_changes_and_schema() {
        let schema = Record {
            pos: JournalPos(9),
            epoch: Epoch(1),
            time_ms: 5,
            body: RecordBody::Schema(SchemaChange {
                db: "COMPANY".into(),
                qualified: true,
                sql: "CREATE TABLE COMPANY.t(id INTEGER PRIMARY KEY)".into(),
            }),
        };
        let event = Record {
            pos: JournalPos(10),
            epoch: Epoch(1),
            time_ms: 6,
            body: RecordBody::Event(MirrorEvent {
                db: Some("COMPANY".into()),
                json: "{\"event\":\"add\"}".into(),
            }),
        };
        for record in [sample(1), schema, event] {
            let mut buf = Vec::new();
            record.encode_into(&mut buf);
            match decode_frame(&buf) {
                Decoded::Record(decoded, used) => {
                    assert_eq!(decoded, record);
                    assert_eq!(used, buf.len());
                }
                other => panic!("decode failed: {other:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_flip_is_caught() {
        let mut buf = Vec::new();
        sample(7).encode_into(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut]),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x10;
            assert!(
                !matches!(decode_frame(&damaged), Decoded::Record(..)),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn abandoned_frame_leaves_buffer_unchanged() {
        let mut buf = vec![9, 9];
        let mut frame = FrameBuilder::begin(&mut buf, JournalPos(1), Epoch(1), 0);
        frame
            .add_changes("COMPANY", |b| {
                b.push(1);
                Ok(())
            })
            .unwrap();
        frame.abandon();
        assert_eq!(buf, vec![9, 9]);
    }
}
