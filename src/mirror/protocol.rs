//! The data channel on the superserver port: how members talk.
//!
//! # Framing
//!
//! ```text
//! offset  size  field
//!      0     4  length N of what follows (big-endian), at most MAX_MESSAGE
//!      4     1  kind: 1 = control (JSON), 2 = journal frames, 3 = acknowledgement
//!      5   N-1  payload
//!
//! kind 2 payload:  first position u64 BE | last position u64 BE | journal frames, exactly as the
//!                  journal stores them (each with its own CRC, see journal::record)
//! kind 3 payload:  position u64 BE — "everything up to here is durable in my journal"
//! kind 4 payload:  offset u64 BE | bytes of a database copy from that offset
//! ```
//!
//! Journal data travels in the journal's own frame format, so the receiver can check every
//! record's CRC and position before it stores a byte, and stores them at the same positions.
//!
//! # Conversations
//!
//! - *Stream* (backup or async → primary): `Hello` → `Welcome` (or `Refused`), then the primary
//!   sends `Frames` (backlog first, then live batches), `Durable` after each of its own fsyncs,
//!   `Heartbeat` when idle and `Activated` once the backup counts as active; the member answers
//!   each batch with an `Ack` of its durable end and reports its dejournaling with `Status`.
//! - *Fetch* (a member → primary): `Fetch` → `Frames`… → `FetchDone` (or `Refused`): older
//!   journal records a member's Catchup needs.
//! - *Info* (the local agent → instance): `Info` → `InfoReply`: what Join as Failover shows
//!   before the member commits to joining.
//! - *Copy* (a member → primary): `Copy` → `CopyBegin`, `Chunk`…, `CopyDone` (or `Refused`): a
//!   consistent copy of one mirrored database's file, resumable from an offset
//!   ([`super::copy`]).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::config::mirror::MemberName;
use crate::error::{Error, Result};
use crate::journal::{Epoch, JournalPos, StreamId};

use crate::config::mirror::{MemberInfo, MirrorDefinition, MirroredDatabase};

/// Largest message accepted (a batch of journal frames).
pub const MAX_MESSAGE: usize = 64 << 20;

const KIND_CONTROL: u8 = 1;
const KIND_FRAMES: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_CHUNK: u8 = 4;

/// Everything a member needs to know about a mirror to join it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDescription {
    /// The mirror.
    pub mirror: MirrorDefinition,
    /// Its members, primary first.
    pub members: Vec<MemberInfo>,
    /// Name of the current primary.
    #[serde(default)]
    pub primary: Option<MemberName>,
    /// The mirrored databases.
    pub databases: Vec<MirroredDatabase>,
    /// Oldest position the primary's journal still holds.
    pub journal_first: JournalPos,
    /// The primary's durable end.
    pub journal_end: JournalPos,
    /// Current epoch.
    pub epoch: Epoch,
    /// Where each epoch after the first began.
    #[serde(default)]
    pub epochs: Vec<crate::config::mirror::EpochStart>,
    /// The describing member does not know its role yet: it restarted as a former primary, or
    /// it is taking over.
    #[serde(default)]
    pub deciding: bool,
}

/// Control messages (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// A member asks to receive the journal from `journal_end + 1`.
    Hello {
        /// Mirror name.
        mirror_name: String,
        /// Mirror id.
        mirror_id: StreamId,
        /// The member.
        member: MemberInfo,
        /// Oldest position the member's journal holds (0 when empty).
        journal_first: JournalPos,
        /// Last position the member holds.
        journal_end: JournalPos,
        /// The epoch of the member's last record (0 when it has none).
        #[serde(default)]
        last_epoch: Epoch,
    },
    /// The primary accepts and describes the mirror. When the member holds records the primary
    /// never made durable (the primary restarted), it must first cut its journal after
    /// `truncate_after`.
    Welcome {
        /// The mirror.
        description: MirrorDescription,
        /// Cut the member's journal after this position first.
        truncate_after: Option<JournalPos>,
        /// The cut is a divergent tail: the member was primary in an older epoch and wrote
        /// records the new primary never had. It must undo what it applied of them and keep
        /// their rows in quarantine.
        #[serde(default)]
        divergent: bool,
        /// The first position the primary will send.
        from: JournalPos,
    },
    /// The request is refused, with a reason for people.
    Refused {
        /// Why.
        reason: String,
        /// At a hello: the member waits in Pending New Members until someone authorizes it on
        /// the primary, and keeps asking. Otherwise it may not follow this primary as it asked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        awaiting_authorization: bool,
    },
    /// The primary's journal is durable up to `pos` (dejournal up to here).
    Durable {
        /// Position.
        pos: JournalPos,
    },
    /// Sent when idle so both sides know the link lives.
    Heartbeat {
        /// The primary's durable end.
        durable: JournalPos,
        /// The primary's clock (ms since the Unix epoch).
        time_ms: i64,
    },
    /// The primary now waits for this member's acknowledgements: Journal Transfer `Active`.
    /// `activation` names this activation: a stand-down the member later sends through the
    /// arbiter carries it, so the primary can tell one that ends the current activation from
    /// one that was overtaken by a newer one.
    Activated {
        /// A random token for this activation.
        activation: u64,
    },
    /// A database was added to the mirror (also in the journal as an event).
    DatabaseAdded {
        /// The database.
        database: MirroredDatabase,
    },
    /// A failover member's mode: from the primary, a request to follow; from the backup, a
    /// report of the mode it is in.
    FailoverMode {
        /// Arbiter controlled (else agent controlled).
        arbiter: bool,
    },
    /// No Failover set (the member that must stay primary) or cleared (`None`): from the
    /// primary, the mirror's setting; from the backup, a request to the primary.
    NoFailover {
        /// The member that must stay primary.
        defined_primary: Option<MemberName>,
    },
    /// Primary → members: the mirror's members changed (one joined, or changed its type).
    MirrorChanged {
        /// The mirror now.
        description: MirrorDescription,
    },
    /// Backup → primary: this member stops being a failover member (Demote To DR): it will not
    /// take over, so the primary need not wait for it.
    StoodDown,
    /// Primary → backup: Demote Other Member: become a disaster recovery async.
    Demote,
    /// Primary → active backup: this primary is shutting down gracefully and has sent
    /// everything it committed: take over.
    HandOver,
    /// What the member's dejournaling looks like, for the primary's monitor.
    Status {
        /// The Dejournaling column text.
        dejournaling: String,
    },
    /// A member asks for older records `from..=to`.
    Fetch {
        /// Mirror id.
        mirror_id: StreamId,
        /// First position wanted.
        from: JournalPos,
        /// Last position wanted.
        to: JournalPos,
    },
    /// All fetched records were sent.
    FetchDone,
    /// The local agent asks the instance about its mirror.
    Info {
        /// The mirror name the joining member typed.
        mirror_name: String,
    },
    /// The answer to `Info`.
    InfoReply {
        /// The mirror.
        description: MirrorDescription,
    },
    /// A member asks the primary for a consistent copy of a mirrored database's file: a new
    /// one, or the rest of `snapshot` from `offset` (a copy that was cut off resumes).
    Copy {
        /// Mirror id.
        mirror_id: StreamId,
        /// The database.
        database: String,
        /// The copy a resumed transfer continues, as the primary named it.
        snapshot: Option<String>,
        /// How much of it the member holds already.
        offset: u64,
        /// Send no faster than this (bytes per second), so a copy leaves the data channel room.
        max_bytes_per_s: Option<u64>,
    },
    /// The primary's answer to `Copy`: the copy it sends, its size and SHA-256, and where the
    /// chunks start (the offset asked for when it resumes that snapshot, else 0).
    CopyBegin {
        /// The copy's name on the primary.
        snapshot: String,
        /// Its size in bytes.
        size: u64,
        /// Its SHA-256, hex.
        sha256: String,
        /// The first byte sent.
        from: u64,
    },
    /// Every byte of the copy was sent.
    CopyDone,
}

/// One message on the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A control message.
    Control(Box<Control>),
    /// Journal frames for records `first..=last`.
    Frames {
        /// First position.
        first: JournalPos,
        /// Last position.
        last: JournalPos,
        /// The frames.
        bytes: Vec<u8>,
    },
    /// Everything up to this position is durable at the sender.
    Ack(JournalPos),
    /// Bytes of a database copy, starting at `offset`.
    Chunk {
        /// Where they go in the file.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// Writes a control message.
pub fn write_control(out: &mut impl Write, control: &Control) -> Result<()> {
    let json =
        serde_json::to_vec(control).map_err(|e| Error::Internal(format!("encode message: {e}")))?;
    write_raw(out, KIND_CONTROL, &[&json])
}

/// Writes journal frames for `first..=last`.
pub fn write_frames(
    out: &mut impl Write,
    first: JournalPos,
    last: JournalPos,
    frames: &[u8],
) -> Result<()> {
    write_raw(
        out,
        KIND_FRAMES,
        &[&first.0.to_be_bytes(), &last.0.to_be_bytes(), frames],
    )
}

/// Writes an acknowledgement.
pub fn write_ack(out: &mut impl Write, pos: JournalPos) -> Result<()> {
    write_raw(out, KIND_ACK, &[&pos.0.to_be_bytes()])
}

/// Writes bytes of a database copy that start at `offset`.
pub fn write_chunk(out: &mut impl Write, offset: u64, bytes: &[u8]) -> Result<()> {
    write_raw(out, KIND_CHUNK, &[&offset.to_be_bytes(), bytes])
}

fn write_raw(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> Result<()> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > MAX_MESSAGE {
        return Err(Error::Internal(format!(
            "message of {len} bytes exceeds the limit"
        )));
    }
    let mut head = [0u8; 5];
    head[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = kind;
    out.write_all(&head)?;
    for part in parts {
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads one message; `None` when the peer closed the connection between messages.
pub fn read_message(input: &mut impl Read) -> Result<Option<Message>> {
    let mut head = [0u8; 5];
    match input.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    input.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return Err(Error::InvalidInput(format!(
            "message length {len} is out of range"
        )));
    }
    let mut payload = vec![0u8; len - 1];
    input.read_exact(&mut payload)?;
    match head[4] {
        KIND_CONTROL => serde_json::from_slice(&payload)
            .map(|c| Some(Message::Control(Box::new(c))))
            .map_err(|e| Error::InvalidInput(format!("bad control message: {e}"))),
        KIND_FRAMES if payload.len() >= 16 => {
            let first = JournalPos(u64::from_be_bytes(payload[0..8].try_into().unwrap()));
            let last = JournalPos(u64::from_be_bytes(payload[8..16].try_into().unwrap()));
            payload.drain(..16);
            Ok(Some(Message::Frames {
                first,
                last,
                bytes: payload,
            }))
        }
        KIND_CHUNK if payload.len() >= 8 => {
            let offset = u64::from_be_bytes(payload[0..8].try_into().unwrap());
            payload.drain(..8);
            Ok(Some(Message::Chunk {
                offset,
                bytes: payload,
            }))
        }
        KIND_ACK if payload.len() == 8 => Ok(Some(Message::Ack(JournalPos(u64::from_be_bytes(
            payload[..].try_into().unwrap(),
        ))))),
        kind => Err(Error::InvalidInput(format!(
            "unknown message kind {kind} ({} bytes)",
            payload.len()
        ))),
    }
}

/// Checks a buffer of journal frames: every frame whole, its CRC right, and the positions running
/// `first..=last` without a gap. Returns how many records it holds. Only the frame headers and
/// positions are read: the receiver stores the bytes as they are.
pub fn check_frames(bytes: &[u8], first: JournalPos, last: JournalPos) -> Result<u64> {
    use crate::journal::record::{FRAME_HEADER_LEN, FRAME_MAGIC, MAX_BODY_LEN, frame_crc};
    let mut at = 0;
    let mut expected = first;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER_LEN + 8 || rest[0..4] != FRAME_MAGIC {
            return Err(Error::Corrupt(
                "received a damaged or cut-off journal frame".into(),
            ));
        }
        let body_len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        if body_len > MAX_BODY_LEN || rest.len() < FRAME_HEADER_LEN + body_len {
            return Err(Error::Corrupt(
                "received a journal frame with an impossible length".into(),
            ));
        }
        let body = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len];
        if frame_crc(&rest[4..8], body) != u32::from_le_bytes(rest[8..12].try_into().unwrap()) {
            return Err(Error::Corrupt(
                "received a journal frame with a CRC mismatch".into(),
            ));
        }
        let pos = JournalPos(u64::from_le_bytes(body[0..8].try_into().unwrap()));
        if pos != expected {
            return Err(Error::Corrupt(format!(
                "received record {pos} where {expected} was expected"
            )));
        }
        expected = expected.next();
        at += FRAME_HEADER_LEN + body_len;
    }
    if expected != last.next() {
        return Err(Error::Corrupt(format!(
            "received records end at {} instead of {last}",
            JournalPos(expected.0 - 1)
        )));
    }
    Ok(last.0 + 1 - first.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{DbChanges, Record, RecordBody};

    fn frames(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        for pos in range {
            Record {
                pos: JournalPos(pos),
                epoch: Epoch(1),
                time_ms: 0,
                body: RecordBody::Changes(vec![DbChanges {
                    db: "COMPANY".into(),
                    changeset: vec![1, 2, 3],
                }]),
            }
            .encode_into(&mut buf);
        }
        buf
    }

    #[test]
    fn messages_round_trip() {
        let mut wire = Vec::new();
        write_control(&mut wire, &Control::Durable { pos: JournalPos(7) }).unwrap();
        let body = frames(3..=5);
        write_frames(&mut wire, JournalPos(3), JournalPos(5), &body).unwrap();
        write_ack(&mut wire, JournalPos(5)).unwrap();
        write_chunk(&mut wire, 1 << 20, b"page").unwrap();
        let mut input = &wire[..];
        assert_eq!(
            read_message(&mut input).unwrap(),
            Some(Message::Control(Box::new(Control::Durable {
                pos: JournalPos(7)
            })))
        );
        assert_eq!(
            read_message(&mut input).unwrap(),
            Some(Message::Frames {
                first: JournalPos(3),
                last: JournalPos(5),
                bytes: body.clone()
            })
        );
        assert_eq!(
            read_message(&mut input).unwrap(),
            Some(Message::Ack(JournalPos(5)))
        );
        assert_eq!(
            read_message(&mut input).unwrap(),
            Some(Message::Chunk {
                offset: 1 << 20,
                bytes: b"page".to_vec()
            })
        );
        assert_eq!(read_message(&mut input).unwrap(), None);
        assert_eq!(
            check_frames(&body, JournalPos(3), JournalPos(5)).unwrap(),
            3
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(
            read_message(&mut &[0u8, 0, 0, 0, 1][..]).is_err(),
            "zero length"
        );
        assert!(
            read_message(&mut &[0xffu8, 0xff, 0xff, 0xff, 1][..]).is_err(),
            "huge length"
        );
        assert!(
            read_message(&mut &[0u8, 0, 0, 2, 9, 0][..]).is_err(),
            "unknown kind"
        );
        assert!(
            read_message(&mut &[0u8, 0, 0, 3, 1, b'{', b'x'][..]).is_err(),
            "bad JSON"
        );
        assert!(
            read_message(&mut &[0u8, 0, 0, 9, 1][..]).is_err(),
            "cut short"
        );
        let body = frames(3..=5);
        assert!(
            check_frames(&body, JournalPos(3), JournalPos(6)).is_err(),
            "claims more than it holds"
        );
        assert!(
            check_frames(&body, JournalPos(2), JournalPos(4)).is_err(),
            "wrong positions"
        );
        let mut damaged = body.clone();
        damaged[30] ^= 1;
        assert!(
            check_frames(&damaged, JournalPos(3), JournalPos(5)).is_err(),
            "bad CRC"
        );
    }
}
