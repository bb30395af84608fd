//! One journal segment file: its header and the scan that checks it.
//!
//! # Header layout (64 bytes, little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  magic "MLJOURNL"
//!      8     4  format version (1)
//!     12     4  reserved, zero
//!     16    16  stream id          random bytes naming the journal these positions belong to;
//!                                  every segment of one journal carries the same id
//!     32     8  first position     the position of the first record in this file; a new
//!                                  segment starts at the previous segment's last position + 1
//!     40     8  created            milliseconds since the Unix epoch
//!     48    12  reserved, zero
//!     60     4  CRC-32 of bytes 0..60
//! ```
//!
//! Frames (see [`super::record`]) follow the header back to back, with positions rising by one.
//!
//! # Scanning
//!
//! [`scan`] walks every frame of a segment and stops at the first byte that is not a valid frame
//! with the expected position. What that stop means depends on what follows it:
//!
//! - nothing, or only zeros, or only an incomplete frame: a *torn tail*, the last write before a
//!   crash that did not reach the disk whole. If this is the newest segment it is cut off; no
//!   acknowledged record can be in it, because acknowledgement waits for the fsync.
//! - a valid frame further on: *corruption in the middle*. Something damaged durable records;
//!   cutting there would throw away records that were acknowledged, so start-up stops and says
//!   where the damage is.

use crate::error::{Error, Result};

use super::record::{Decoded, FRAME_MAGIC, JournalPos, decode_frame};

/// The eight bytes every segment starts with.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MLJOURNL";
/// Size of the header in bytes; the first frame starts here.
pub const HEADER_LEN: usize = 64;
const FORMAT_VERSION: u32 = 1;

/// Identifies one journal: the positions in two journals with different ids are unrelated. A
/// mirror's id is its journal's, and a database file names the journal its applied position
/// refers to. Sixteen bytes in a segment header; 32 lower-case hex digits everywhere else
/// (configuration, database files, messages, pages).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    /// Parses 32 hex digits.
    pub fn parse(text: &str) -> Option<StreamId> {
        crate::util::parse_hex16(text).map(StreamId)
    }

    /// A new id, from the operating system's random source.
    pub fn random() -> StreamId {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        StreamId(bytes)
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::util::hex(&self.0))
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl std::str::FromStr for StreamId {
    type Err = Error;
    fn from_str(text: &str) -> Result<StreamId> {
        StreamId::parse(text)
            .ok_or_else(|| Error::InvalidInput(format!("{text:?} is not a journal stream id")))
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The fields of a segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Which journal this segment belongs to.
    pub stream: StreamId,
    /// Position of the first record stored in this segment.
    pub first_pos: JournalPos,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

impl SegmentHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..32].copy_from_slice(&self.stream.0);
        out[32..40].copy_from_slice(&self.first_pos.0.to_le_bytes());
        out[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a header; `None` when the bytes are not a journal segment at all (wrong magic).
    pub fn decode(bytes: &[u8]) -> Option<std::result::Result<SegmentHeader, String>> {
        if bytes.len() < SEGMENT_MAGIC.len() || bytes[0..8] != SEGMENT_MAGIC {
            return None;
        }
        if bytes.len() < HEADER_LEN {
            return Some(Err("header is shorter than 64 bytes".into()));
        }
        let crc = u32::from_le_bytes(bytes[60..64].try_into().unwrap());
        if crc32fast::hash(&bytes[0..60]) != crc {
            return Some(Err("header CRC mismatch".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Some(Err(format!("unknown format version {version}")));
        }
        Some(Ok(SegmentHeader {
            stream: StreamId(bytes[16..32].try_into().unwrap()),
            first_pos: JournalPos(u64::from_le_bytes(bytes[32..40].try_into().unwrap())),
            created_ms: i64::from_le_bytes(bytes[40..48].try_into().unwrap()),
        }))
    }
}

/// Every this-many positions a segment remembers where a record starts, so readers can seek
/// close to any position instead of scanning a whole file.
pub const MARK_EVERY: u64 = 64;

/// True when the record at `pos` gets a seek mark (the first record of a segment always does).
pub fn is_mark(pos: JournalPos, first_of_segment: bool) -> bool {
    first_of_segment || pos.0.is_multiple_of(MARK_EVERY)
}

/// What a scan found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Position of the last valid record, if the segment holds any.
    pub last_pos: Option<JournalPos>,
    /// Seek marks: (position, byte offset) of some valid records, in order.
    pub marks: Vec<(u64, u64)>,
    /// Bytes from the start of the file through the last valid frame.
    pub valid_len: u64,
    /// The first invalid spot, if the valid frames do not reach the end of the file.
    pub damage: Option<Damage>,
}

/// An invalid spot in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first invalid frame.
    pub offset: u64,
    /// Why it is invalid.
    pub reason: String,
    /// True when a valid later frame exists: the damage is in the middle, not a torn tail.
    pub valid_data_follows: bool,
}

/// Checks every frame of a segment whose bytes (header included) are `bytes`.
pub fn scan(bytes: &[u8], header: &SegmentHeader) -> Scan {
    let mut offset = HEADER_LEN;
    let mut expected = header.first_pos;
    let mut last_pos = None;
    let mut marks = Vec::new();
    loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            return Scan {
                last_pos,
                marks,
                valid_len: offset as u64,
                damage: None,
            };
        }
        let (reason, valid_data_follows) = match decode_frame(rest) {
            Decoded::Record(record, used) if record.pos == expected => {
                if is_mark(record.pos, last_pos.is_none()) {
                    marks.push((record.pos.0, offset as u64));
                }
                last_pos = Some(record.pos);
                expected = expected.next();
                offset += used;
                continue;
            }
            // A whole, checksummed frame with the wrong position was written that way: never a
            // torn write, always a fault to report.
            Decoded::Record(record, _) => (
                format!(
                    "record has position {} where {} was expected",
                    record.pos, expected
                ),
                true,
            ),
            // "Incomplete" means the length field points past the end of the file: a torn
            // write if nothing valid follows, a damaged length field if something does.
            Decoded::Incomplete => {
                let follows = valid_frame_after(bytes, offset + 1, expected);
                ("the frame is cut short".to_string(), follows)
            }
            Decoded::Invalid(reason) => {
                let follows =
                    !rest.iter().all(|&b| b == 0) && valid_frame_after(bytes, offset + 1, expected);
                (reason, follows)
            }
        };
        return Scan {
            last_pos,
            marks,
            valid_len: offset as u64,
            damage: Some(Damage {
                offset: offset as u64,
                reason,
                valid_data_follows,
            }),
        };
    }
}

/// Looks for any valid frame starting after `from` whose position is at least `expected`:
/// proof that the bytes before it were durable records, not a torn tail.
fn valid_frame_after(bytes: &[u8], from: usize, expected: JournalPos) -> bool {
    let mut at = from;
    while at + FRAME_MAGIC.len() <= bytes.len() {
        match bytes[at..].windows(4).position(|w| w == FRAME_MAGIC) {
            None => return false,
            Some(found) => {
                at += found;
                if let Decoded::Record(record, _) = decode_frame(&bytes[at..])
                    && record.pos >= expected
                {
                    return true;
                }
                at += 1;
            }
        }
    }
    false
}

/// An error naming the segment and offset of damage that cannot be repaired by truncation.
pub fn corruption(segment: &str, damage: &Damage) -> Error {
    super::record::corrupt_at(segment, damage.offset, &damage.reason)
}

/// Reads frames from one segment file one by one, for replay and (later) for shipping to other
/// members. It does not judge torn tails: it is only used below the durable end, where every
/// frame must be valid.
pub struct SegmentReader {
    file: std::io::BufReader<std::fs::File>,
    name: String,
    offset: u64,
    buf: Vec<u8>,
}

impl SegmentReader {
    /// Opens a segment and positions the reader at byte `offset` (a frame start).
    pub fn open_at(path: &std::path::Path, name: &str, offset: u64) -> Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut reader = Self::open(path, name)?;
        if offset > HEADER_LEN as u64 {
            reader
                .file
                .seek(SeekFrom::Start(offset))
                .map_err(|e| Error::Io(format!("seek in journal file {name}: {e}")))?;
            reader.offset = offset;
        }
        Ok(reader)
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Opens a segment and positions the reader at its first frame.
    pub fn open(path: &std::path::Path, name: &str) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Io(format!("open journal file {name}: {e}")))?;
        let mut file = std::io::BufReader::with_capacity(256 * 1024, file);
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header)
            .map_err(|e| Error::Io(format!("read header of journal file {name}: {e}")))?;
        Ok(SegmentReader {
            file,
            name: name.to_string(),
            offset: HEADER_LEN as u64,
            buf: Vec::new(),
        })
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<super::record::Record>> {
        use super::record::FRAME_HEADER_LEN;
        use std::io::Read;
        self.buf.resize(FRAME_HEADER_LEN, 0);
        match read_full(&mut self.file, &mut self.buf[..])? {
            0 => return Ok(None),
            n if n < FRAME_HEADER_LEN => {
                return Err(super::record::corrupt_at(
                    &self.name,
                    self.offset,
                    "frame header cut short",
                ));
            }
            _ => {}
        }
        let body_len = u32::from_le_bytes(self.buf[4..8].try_into().unwrap()) as usize;
        if body_len > super::record::MAX_BODY_LEN {
            return Err(super::record::corrupt_at(
                &self.name,
                self.offset,
                "impossible body length",
            ));
        }
        self.buf.resize(FRAME_HEADER_LEN + body_len, 0);
        self.file
            .read_exact(&mut self.buf[FRAME_HEADER_LEN..])
            .map_err(|_| super::record::corrupt_at(&self.name, self.offset, "frame cut short"))?;
        match decode_frame(&self.buf) {
            Decoded::Record(record, used) => {
                self.offset += used as u64;
                Ok(Some(record))
            }
            Decoded::Incomplete => Err(super::record::corrupt_at(
                &self.name,
                self.offset,
                "frame cut short",
            )),
            Decoded::Invalid(reason) => {
                Err(super::record::corrupt_at(&self.name, self.offset, &reason))
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(file: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(format!("read journal: {e}"))),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::super::record::{DbChanges, Record, RecordBody};
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            stream: StreamId([7; 16]),
            first_pos: JournalPos(10),
            created_ms: 1,
        }
    }

    fn segment_with(n: u64) -> Vec<u8> {
        let mut bytes = header().encode().to_vec();
        for i in 0..n {
            Record {
                pos: JournalPos(10 + i),
                epoch: crate::journal::Epoch(1),
                time_ms: 0,
                body: RecordBody::Changes(vec![DbChanges {
                    db: "A".into(),
                    changeset: vec![i as u8; 40],
                }]),
            }
            .encode_into(&mut bytes);
        }
        bytes
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let bytes = header().encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(Ok(header())));
        let mut damaged = bytes;
        damaged[35] ^= 1;
        assert!(matches!(SegmentHeader::decode(&damaged), Some(Err(_))));
        assert_eq!(SegmentHeader::decode(b"not a journal file at all"), None);
    }

    #[test]
    fn clean_segment_scans_to_the_end() {
        let bytes = segment_with(5);
        let scan = scan(&bytes, &header());
        assert_eq!(scan.last_pos, Some(JournalPos(14)));
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.damage, None);
    }

    #[test]
    fn torn_tail_is_not_followed_by_valid_data() {
        let full = segment_with(5);
        let four = segment_with(4).len();
        for cut in four + 1..full.len() {
            let scan = scan(&full[..cut], &header());
            assert_eq!(scan.last_pos, Some(JournalPos(13)));
            assert_eq!(scan.valid_len, four as u64);
            assert!(!scan.damage.unwrap().valid_data_follows, "cut at {cut}");
        }
        let mut zeros = segment_with(4);
        zeros.extend_from_slice(&[0; 300]);
        assert!(!scan(&zeros, &header()).damage.unwrap().valid_data_follows);
    }

    #[test]
    fn damage_in_the_middle_is_seen_as_such() {
        let mut bytes = segment_with(5);
        let second_frame = segment_with(1).len();
        bytes[second_frame + 20] ^= 0xff;
        let scan = scan(&bytes, &header());
        assert_eq!(scan.last_pos, Some(JournalPos(10)));
        let damage = scan.damage.unwrap();
        assert_eq!(damage.offset, second_frame as u64);
        assert!(damage.valid_data_follows);
    }

    #[test]
    fn a_length_pointing_past_the_end_in_the_middle_is_damage() {
        let mut bytes = segment_with(5);
        let second_frame = segment_with(1).len();
        // Frame 2 claims 5000 bytes; the file has fewer left, but valid frames follow.
        bytes[second_frame + 4..second_frame + 8].copy_from_slice(&5000u32.to_le_bytes());
        let damage = scan(&bytes, &header()).damage.unwrap();
        assert_eq!(damage.offset, second_frame as u64);
        assert!(
            damage.valid_data_follows,
            "must not be taken for a torn tail"
        );
    }

    #[test]
    fn positions_out_of_order_are_damage() {
        let mut bytes = header().encode().to_vec();
        for pos in [10, 11, 13] {
            Record {
                pos: JournalPos(pos),
                epoch: crate::journal::Epoch(1),
                time_ms: 0,
                body: RecordBody::Changes(vec![DbChanges {
                    db: "A".into(),
                    changeset: vec![1],
                }]),
            }
            .encode_into(&mut bytes);
        }
        let scan = scan(&bytes, &header());
        assert_eq!(scan.last_pos, Some(JournalPos(11)));
        assert!(scan.damage.unwrap().reason.contains("position 13 where 12"));
    }
}
