//! Copy from Primary: a consistent copy of a mirrored database's file, fetched over the data
//! channel — the article's "copy the database files" step without Freeze, `cp` or shared
//! folders.
//!
//! # How a copy goes
//!
//! 1. **The primary makes a snapshot** ([`snapshot`]): `VACUUM INTO` reads one moment of the
//!    database while applications go on writing, into `mgr/copies/<db>-<ms>.sqlite`; its SHA-256
//!    is computed and written beside it (`.sha256`) only once the copy is durable, so a snapshot
//!    with its checksum is whole. The copy holds the journal position it was applied up to, so a
//!    Catchup brings it up to date; it needs the journal from there on, which the primary keeps
//!    for its members.
//! 2. **The primary sends it** ([`serve`]): `CopyBegin` (name, size, checksum, first byte), the
//!    file in [`CHUNK`]-byte chunks, then `CopyDone`, no faster than the member asked.
//! 3. **The member stores it beside the database** ([`fetch`]): into `database.sqlite.copy`, with
//!    `database.sqlite.copy.json` naming the snapshot it comes from. A copy cut off (the
//!    connection lost, the instance killed) resumes from the bytes it holds when the primary
//!    still has that snapshot, and starts over from a new one otherwise.
//! 4. **It is verified**: the size and the SHA-256 of the whole file against the primary's. A
//!    mismatch throws the partial copy away.
//! 5. **It is installed** (by the service: [`crate::mirror::service`]): the database is
//!    dismounted, the copy renamed over its file, mounted (the mount checks every page), then
//!    activated and caught up, as a person would after a manual copy.
//!
//! # Invariants
//!
//! - The member's database file is replaced only by a complete copy whose checksum matched, and
//!   only by a rename: it is never half a file, whatever stops the copy.
//! - The bytes of one partial copy come from one snapshot: the sidecar names the snapshot before
//!   the first byte of it is written, and a primary that no longer has it starts again from 0.
//! - Only a member of the mirror gets a copy, and only from the primary (with Require SSL/TLS,
//!   only over TLS for a member's certificate) — the same rule as for journal records.
//!
//! # Left out
//!
//! A database the member has no local database for (Copy from Primary replaces a local
//! database's file; create it first), and copying from a backup.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::mirror::{MemberInfo, Membership};
use crate::error::{Error, IoContext, Result};
use crate::names::DbName;
use crate::tls::Channel;
use crate::util::{now_ms, sync_dir};

use super::MirrorContext;
use super::protocol::{Control, Message, read_message, write_chunk, write_control};

/// Bytes per chunk on the wire.
pub const CHUNK: usize = 256 << 10;
/// The member fsyncs its partial copy after this many bytes, so a resumed copy loses little.
const SYNC_EVERY: u64 = 4 << 20;
/// How long the member waits for the primary's next message.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The primary's side

/// A consistent copy of a database on the primary, ready to send.
#[derive(Debug)]
pub struct Snapshot {
    /// Its name (`<db>-<ms>`), which a resumed copy gives back.
    pub name: String,
    /// The file, open: a newer snapshot may remove its name meanwhile, not what is being sent.
    pub file: File,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

fn copies_folder(data_dir: &Path) -> PathBuf {
    data_dir.join("mgr").join("copies")
}

/// Whether `name` is a snapshot name of `db` (`<directory>-<digits>`): a member's word is never
/// a path.
fn is_snapshot_of(name: &str, db: &DbName) -> bool {
    name.strip_prefix(&format!("{}-", db.directory_name()))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

/// The snapshot `reuse` of `db` when it is still whole here, or a new one.
pub fn snapshot(context: &MirrorContext, db: &DbName, reuse: Option<&str>) -> Result<Snapshot> {
    let folder = copies_folder(&context.data_dir);
    if let Some(name) = reuse.filter(|n| is_snapshot_of(n, db)) {
        // The checksum file is written last: with it, the snapshot is whole.
        let opened = File::open(folder.join(format!("{name}.sqlite")));
        let sum = std::fs::read_to_string(folder.join(format!("{name}.sha256")));
        if let (Ok(file), Ok(sha256)) = (opened, sum) {
            return Ok(Snapshot {
                name: name.to_string(),
                size: file.metadata().io_context("stat the copy")?.len(),
                file,
                sha256: sha256.trim().to_string(),
            });
        }
    }
    std::fs::create_dir_all(&folder).io_context("create the copies folder")?;
    let name = format!("{}-{}", db.directory_name(), unique_stamp());
    let path = folder.join(format!("{name}.sqlite"));
    {
        // A dismount waits while the file is read.
        let _files = context.catalog.enter_files();
        let entry = context.catalog.snapshot().database(db)?.clone();
        if !entry.mounted {
            return Err(Error::Conflict(format!(
                "{db} is dismounted on the primary"
            )));
        }
        if path.exists() {
            std::fs::remove_file(&path).io_context("remove an unfinished copy")?;
        }
        crate::storage::database::copy_consistent(&entry.file, &path)?;
    }
    let sha256 = sha256_of(&path)?;
    let sum = folder.join(format!("{name}.sha256"));
    std::fs::write(&sum, &sha256).io_context("write the copy's checksum")?;
    File::open(&sum)
        .and_then(|f| f.sync_all())
        .io_context("fsync the copy's checksum")?;
    sync_dir(&folder)?;
    let file = File::open(&path).io_context("open the copy")?;
    remove_older_snapshots(&folder, db, &name);
    Ok(Snapshot {
        name,
        size: file.metadata().io_context("stat the copy")?.len(),
        file,
        sha256,
    })
}

/// Milliseconds since the Unix epoch, but never the same twice in this process: two members
/// asking for a copy of the same database in the same millisecond get two snapshots.
fn unique_stamp() -> i64 {
    static LAST: Mutex<i64> = Mutex::new(0);
    let mut last = LAST.lock().unwrap();
    *last = now_ms().max(*last + 1);
    *last
}

/// Removes the snapshots of `db` older than `newest`: one per database is enough (a transfer
/// still reading an older one keeps its open file; resuming it starts over).
fn remove_older_snapshots(folder: &Path, db: &DbName, newest: &str) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let stem = file
            .strip_suffix(".sqlite")
            .or_else(|| file.strip_suffix(".sha256"));
        if let Some(stem) = stem
            && stem != newest
            && is_snapshot_of(stem, db)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Answers a member's `Copy`: the snapshot asked for from `offset`, or a new one from 0.
pub fn serve(
    writer: &mut BufWriter<Channel>,
    context: &MirrorContext,
    db: &DbName,
    reuse: Option<&str>,
    offset: u64,
    max_bytes_per_s: Option<u64>,
) -> Result<()> {
    let mut snapshot = snapshot(context, db, reuse)?;
    let from = if reuse == Some(snapshot.name.as_str()) {
        offset.min(snapshot.size)
    } else {
        0
    };
    write_control(
        writer,
        &Control::CopyBegin {
            snapshot: snapshot.name.clone(),
            size: snapshot.size,
            sha256: snapshot.sha256.clone(),
            from,
        },
    )?;
    let file = &mut snapshot.file;
    file.seek(SeekFrom::Start(from))?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut at = from;
    let mut buf = vec![0u8; CHUNK];
    while at < snapshot.size {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        write_chunk(writer, at, &buf[..n])?;
        at += n as u64;
        sent += n as u64;
        if let Some(rate) = max_bytes_per_s.filter(|r| *r > 0) {
            // Paced here, not by a slow reader: the connection's write timeout stays meaningful.
            writer.flush()?;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    write_control(writer, &Control::CopyDone)?;
    writer.flush()?;
    tracing::info!(
        "sent a copy of {db} ({} bytes from {from}, snapshot {})",
        snapshot.size,
        snapshot.name
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The member's side

/// What the member knows of a partial copy (`database.sqlite.copy.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The snapshot its bytes come from.
    pub snapshot: String,
    /// The whole copy's size.
    pub size: u64,
    /// The whole copy's SHA-256.
    pub sha256: String,
    /// The pace asked for.
    #[serde(default)]
    pub max_bytes_per_s: Option<u64>,
}

/// The partial copy beside a database file `file`.
pub fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".copy");
    PathBuf::from(name)
}

/// The sidecar that names the snapshot a partial copy comes from.
pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".copy.json");
    PathBuf::from(name)
}

/// The partial copy's description, if there is one.
pub fn read_partial(file: &Path) -> Option<Partial> {
    let text = std::fs::read(sidecar_path(file)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes a partial copy and its sidecar.
pub fn discard_partial(file: &Path) -> Result<()> {
    for path in [partial_path(file), sidecar_path(file)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(format!("remove {}: {e}", path.display()))),
        }
    }
    Ok(())
}

/// Where a copy stands (`copying`, `verifying`, `installing`, `done`, `failed` in `/api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Bytes are arriving.
    Copying,
    /// All arrived; the checksum is being computed.
    Verifying,
    /// Dismount, rename, Mount, Activate, Catchup.
    Installing,
    /// In place and caught up.
    Done,
    /// Given up (the message says why).
    Failed,
}

impl std::fmt::Display for CopyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CopyState::Copying => "copying",
            CopyState::Verifying => "verifying",
            CopyState::Installing => "installing",
            CopyState::Done => "done",
            CopyState::Failed => "failed",
        })
    }
}

/// How a copy goes, for the monitor and `/api`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyProgress {
    /// The database.
    pub database: DbName,
    /// Where it stands.
    pub state: CopyState,
    /// Bytes the member holds.
    pub bytes: u64,
    /// The copy's size (0 until the primary said).
    pub total: u64,
    /// Where this transfer started (more than 0: it resumed a copy cut off earlier).
    pub resumed_from: u64,
    /// Bytes per second so far in this transfer.
    pub rate_bytes_per_s: u64,
    /// Seconds left at that rate.
    pub seconds_left: Option<u64>,
    /// What happened, for people (the result, or why it failed).
    pub message: Option<String>,
    /// When it began (ms since the Unix epoch).
    pub started_ms: i64,
}

impl CopyProgress {
    /// A copy about to start.
    pub fn starting(database: DbName) -> CopyProgress {
        CopyProgress {
            database,
            state: CopyState::Copying,
            bytes: 0,
            total: 0,
            resumed_from: 0,
            rate_bytes_per_s: 0,
            seconds_left: None,
            message: None,
            started_ms: now_ms(),
        }
    }

    /// Still in progress (not done, not failed).
    pub fn running(&self) -> bool {
        !matches!(self.state, CopyState::Done | CopyState::Failed)
    }

    /// Percent done, for the progress bar.
    pub fn percent(&self) -> u64 {
        (self.bytes * 100).checked_div(self.total).unwrap_or(0)
    }
}

/// The copies of this member, newest state of each database.
#[derive(Debug, Default)]
pub struct Copies {
    by_database: Mutex<BTreeMap<DbName, CopyProgress>>,
}

impl Copies {
    /// Starts tracking a copy of `db`; false when one is running already (a second click).
    pub fn begin(&self, db: &DbName) -> bool {
        let mut map = self.by_database.lock().unwrap();
        if map.get(db).is_some_and(|p| p.running()) {
            return false;
        }
        map.insert(db.clone(), CopyProgress::starting(db.clone()));
        true
    }

    /// Changes a copy's progress.
    pub fn update(&self, db: &DbName, change: impl FnOnce(&mut CopyProgress)) {
        if let Some(p) = self.by_database.lock().unwrap().get_mut(db) {
            change(p);
        }
    }

    /// Every copy, by database.
    pub fn list(&self) -> Vec<CopyProgress> {
        self.by_database.lock().unwrap().values().cloned().collect()
    }

    /// The copy of `db`, if any.
    pub fn get(&self, db: &DbName) -> Option<CopyProgress> {
        self.by_database.lock().unwrap().get(db).cloned()
    }
}

/// Fetches a copy of `db` from `primary` into the partial copy beside `file`, resuming what is
/// there, and verifies it. Returns the verified copy's path.
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    network: &dyn crate::transport::Network,
    identity: &crate::tls::Identity,
    membership: &Membership,
    primary: &MemberInfo,
    db: &DbName,
    file: &Path,
    max_bytes_per_s: Option<u64>,
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<PathBuf> {
    let partial = partial_path(file);
    let sidecar = sidecar_path(file);
    let known = read_partial(file).filter(|_| partial.exists());
    let held = match &known {
        Some(_) => std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0),
        None => 0,
    };
    let max_bytes_per_s = max_bytes_per_s.or(known.as_ref().and_then(|k| k.max_bytes_per_s));
    let ask = Control::Copy {
        mirror_id: membership.mirror.id,
        database: db.to_string(),
        snapshot: known.as_ref().map(|k| k.snapshot.clone()),
        offset: held,
        max_bytes_per_s,
    };
    let (mut reader, _writer) =
        super::open_conversation(network, identity, membership, primary, &ask, READ_TIMEOUT)?;
    let (snapshot, size, sha256, from) = match read_message(&mut reader)? {
        Some(Message::Control(control)) => match *control {
            Control::CopyBegin {
                snapshot,
                size,
                sha256,
                from,
            } => (snapshot, size, sha256, from),
            Control::Refused { reason, .. } => return Err(Error::Conflict(reason)),
            other => return Err(Error::InvalidInput(format!("unexpected answer {other:?}"))),
        },
        _ => {
            return Err(Error::Unavailable(
                "the primary closed the connection before the copy began".into(),
            ));
        }
    };
    let resumes = known.as_ref().is_some_and(|k| k.snapshot == snapshot) && from == held;
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .io_context("open the partial copy")?;
    if !resumes {
        // A new snapshot: its name is durable before the first byte of it is, so a resumed copy
        // never mixes the bytes of two snapshots.
        out.set_len(0).io_context("empty the partial copy")?;
        out.sync_all().io_context("fsync the partial copy")?;
        let described = Partial {
            snapshot: snapshot.clone(),
            size,
            sha256: sha256.clone(),
            max_bytes_per_s,
        };
        let json = serde_json::to_vec(&described).map_err(|e| Error::Internal(e.to_string()))?;
        crate::util::write_file_atomically(&sidecar, &json)?;
    }
    let start = if resumes { from } else { 0 };
    if start != from {
        return Err(Error::InvalidInput(format!(
            "the primary resumed at byte {from}, this member holds {start}"
        )));
    }
    out.seek(SeekFrom::Start(start))?;
    let mut at = start;
    let mut unsynced = 0u64;
    progress(at, size, start);
    loop {
        match read_message(&mut reader)? {
            Some(Message::Chunk { offset, bytes }) => {
                if offset != at || at + bytes.len() as u64 > size {
                    return Err(Error::Corrupt(format!(
                        "the copy's bytes arrived at {offset} where {at} was expected"
                    )));
                }
                out.write_all(&bytes).io_context("write the partial copy")?;
                at += bytes.len() as u64;
                unsynced += bytes.len() as u64;
                if unsynced >= SYNC_EVERY {
                    out.sync_data().io_context("fsync the partial copy")?;
                    unsynced = 0;
                }
                progress(at, size, start);
            }
            Some(Message::Control(control)) => match *control {
                Control::CopyDone => break,
                Control::Refused { reason, .. } => return Err(Error::Conflict(reason)),
                other => return Err(Error::InvalidInput(format!("unexpected answer {other:?}"))),
            },
            _ => {
                return Err(Error::Unavailable(format!(
                    "the primary closed the connection after {at} of {size} bytes; the copy resumes \
                     from there"
                )));
            }
        }
    }
    out.sync_all().io_context("fsync the copy")?;
    drop(out);
    let held = std::fs::metadata(&partial)
        .io_context("stat the copy")?
        .len();
    let sum = sha256_of(&partial)?;
    if held != size || sum != sha256 {
        discard_partial(file)?;
        return Err(Error::Corrupt(format!(
            "the copy of {db} did not verify ({held} of {size} bytes, SHA-256 {sum} instead of \
             {sha256}); it was thrown away: Copy from Primary starts it again"
        )));
    }
    Ok(partial)
}

/// The SHA-256 (hex) of the file at `path`.
fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).io_context("open the copy")?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    Ok(crate::util::hex(context.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_name_is_never_a_path() {
        let db = DbName::new("COMPANY").unwrap();
        assert!(is_snapshot_of("company-1733400000000", &db));
        assert!(!is_snapshot_of("company-", &db));
        assert!(!is_snapshot_of("company-12/../../x", &db));
        assert!(!is_snapshot_of("personal-1733400000000", &db));
        assert!(!is_snapshot_of("../company-1", &db));
    }

    #[test]
    fn two_snapshots_never_share_a_name() {
        let stamps: Vec<i64> = (0..100).map(|_| unique_stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    }

    #[test]
    fn the_checksum_is_sha256() {
        let dir = std::env::temp_dir().join(format!("mirrorlab-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("abc");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            sha256_of(&file).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
