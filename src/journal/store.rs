//! The journal folder: a sequence of segment files, one of which is open for appending.
//!
//! [`Journal`] is owned by exactly one thread, the instance's writer. It appends whole batches of
//! frames with one `write` and makes them durable with one `fdatasync` ([`Journal::sync`]): that is
//! the group commit. Other threads see the journal through [`JournalShared`]: the durable end
//! position, the list of segments, and readers that replay records from any position up to the
//! durable end.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{Error, IoContext, Result};
use crate::util::{format_date_compact, now_ms, sync_dir};

use super::record::{JournalPos, Record};
use super::segment::{self, HEADER_LEN, SegmentHeader, SegmentReader, StreamId};

/// Default size at which a new segment is started.
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// One segment file as listed on the Journals page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// File name, IRIS style: `20261126.001`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Position of its first record.
    pub first_pos: JournalPos,
    /// Creation time (ms since the Unix epoch).
    pub created_ms: i64,
    /// Size in bytes.
    pub bytes: u64,
}

/// What opening the journal found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Number of segment files.
    pub segments: usize,
    /// Position of the last record.
    pub end: JournalPos,
    /// A torn tail that was cut off: segment name, offset, bytes removed.
    pub truncated: Option<(String, u64, u64)>,
}

/// The part of the journal other threads may look at.
pub struct JournalShared {
    dir: PathBuf,
    stream: StreamId,
    /// Last position known to be on disk (fsynced). Readers never go past it.
    durable_end: AtomicU64,
    /// Size of the newest segment in bytes.
    current_bytes: AtomicU64,
    /// Number of fsyncs so far (one per group commit).
    syncs: AtomicU64,
    /// Number of records appended since start.
    appended: AtomicU64,
    /// Segments in position order; the last one is being appended to.
    segments: RwLock<Vec<SegmentInfo>>,
}

impl JournalShared {
    /// The journal folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of this journal.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Last durable position.
    pub fn durable_end(&self) -> JournalPos {
        JournalPos(self.durable_end.load(Ordering::Acquire))
    }

    /// Number of fsyncs since start.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Number of records appended since start.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// The segment files, oldest first, with current sizes.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let mut list = self.segments.read().unwrap().clone();
        if let Some(last) = list.last_mut() {
            last.bytes = self.current_bytes.load(Ordering::Relaxed);
        }
        list
    }

    /// The segment a position lives in, by name (for "next record to dejournal" displays).
    pub fn segment_of(&self, pos: JournalPos) -> Option<String> {
        let list = self.segments.read().unwrap();
        list.iter()
            .rev()
            .find(|s| s.first_pos <= pos)
            .map(|s| s.name.clone())
    }

    /// Reads every durable record after `after`, in order.
    pub fn read_after(&self, after: JournalPos) -> JournalIter {
        let until = self.durable_end();
        let segments = self.segments.read().unwrap().clone();
        // Start at the last segment that begins at or before the first wanted position.
        let wanted = after.next();
        let start = segments
            .iter()
            .rposition(|s| s.first_pos <= wanted)
            .unwrap_or(0);
        JournalIter {
            segments,
            next_segment: start,
            reader: None,
            after,
            until,
        }
    }
}

/// Iterator over records from [`JournalShared::read_after`].
pub struct JournalIter {
    segments: Vec<SegmentInfo>,
    next_segment: usize,
    reader: Option<SegmentReader>,
    after: JournalPos,
    until: JournalPos,
}

impl Iterator for JournalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.after >= self.until {
                return None;
            }
            if self.reader.is_none() {
                let info = self.segments.get(self.next_segment)?;
                self.next_segment += 1;
                match SegmentReader::open(&info.path, &info.name) {
                    Ok(reader) => self.reader = Some(reader),
                    Err(err) => return Some(Err(err)),
                }
            }
            match self.reader.as_mut().unwrap().next_record() {
                Ok(Some(record)) if record.pos <= self.after => continue,
                Ok(Some(record)) => {
                    if record.pos != self.after.next() {
                        self.until = JournalPos::ZERO;
                        return Some(Err(Error::Corrupt(format!(
                            "journal position {} is missing (found {} next)",
                            self.after.next(),
                            record.pos
                        ))));
                    }
                    self.after = record.pos;
                    return Some(Ok(record));
                }
                Ok(None) => self.reader = None,
                Err(err) => {
                    self.until = JournalPos::ZERO;
                    return Some(Err(err));
                }
            }
        }
    }
}

/// The journal, as owned by the writer thread.
pub struct Journal {
    shared: Arc<JournalShared>,
    file: File,
    current_len: u64,
    end: JournalPos,
    max_segment_bytes: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`.
    ///
    /// Every segment is scanned. A torn tail of the newest segment is cut off and reported in
    /// the [`OpenReport`]; any other damage is an [`Error::Corrupt`] naming file and offset. A
    /// new journal gets the id `new_stream`; an existing one must carry that id too, so a journal
    /// folder from another instance is never mixed with this instance's databases.
    pub fn open(
        dir: &Path,
        new_stream: StreamId,
        max_segment_bytes: u64,
    ) -> Result<(Journal, OpenReport)> {
        fs::create_dir_all(dir).io_context(format!("create journal folder {}", dir.display()))?;
        let mut found: Vec<(SegmentHeader, SegmentInfo)> = Vec::new();
        for entry in fs::read_dir(dir).io_context("list journal folder")? {
            let entry = entry.io_context("list journal folder")?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().io_context("stat journal file")?.is_file()
                || name.ends_with(".tmp")
            {
                continue;
            }
            let mut head = [0u8; HEADER_LEN];
            let n = read_prefix(&path, &mut head)?;
            let header = match SegmentHeader::decode(&head[..n]) {
                None => continue, // not a journal segment
                Some(Err(reason)) => {
                    return Err(Error::Corrupt(format!("journal file {name}: {reason}")));
                }
                Some(Ok(header)) => header,
            };
            if header.stream != new_stream {
                return Err(Error::Corrupt(format!(
                    "journal file {name} belongs to another journal (its id does not match this instance's)"
                )));
            }
            let bytes = entry.metadata().io_context("stat journal file")?.len();
            let info = SegmentInfo {
                name,
                path,
                first_pos: header.first_pos,
                created_ms: header.created_ms,
                bytes,
            };
            found.push((header, info));
        }
        found.sort_by_key(|(h, _)| h.first_pos);

        let mut report = OpenReport {
            segments: 0,
            end: JournalPos::ZERO,
            truncated: None,
        };
        let mut end = None::<JournalPos>;
        let count = found.len();
        for (i, (header, info)) in found.iter_mut().enumerate() {
            if let Some(prev_end) = end
                && header.first_pos != prev_end.next()
            {
                return Err(Error::Corrupt(format!(
                    "journal file {} starts at position {} but the previous file ends at {}",
                    info.name, header.first_pos, prev_end
                )));
            }
            let bytes =
                fs::read(&info.path).io_context(format!("read journal file {}", info.name))?;
            let scan = segment::scan(&bytes, header);
            if let Some(damage) = &scan.damage {
                let newest = i + 1 == count;
                if damage.valid_data_follows || !newest {
                    return Err(segment::corruption(&info.name, damage));
                }
                // A torn tail: the newest file ends in a write that never completed. Nothing in
                // it was acknowledged (acknowledgement waits for fsync), so cutting it is safe.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&info.path)
                    .io_context("open journal file")?;
                file.set_len(scan.valid_len)
                    .io_context("truncate torn journal tail")?;
                file.sync_all().io_context("fsync truncated journal file")?;
                report.truncated = Some((
                    info.name.clone(),
                    scan.valid_len,
                    bytes.len() as u64 - scan.valid_len,
                ));
                info.bytes = scan.valid_len;
            }
            end = Some(scan.last_pos.unwrap_or(JournalPos(header.first_pos.0 - 1)));
        }

        let mut segments: Vec<SegmentInfo> = found.into_iter().map(|(_, info)| info).collect();
        if segments.is_empty() {
            segments.push(create_segment(dir, new_stream, JournalPos(1))?);
        }
        let end = end.unwrap_or(JournalPos::ZERO);
        let last = segments.last().unwrap();
        let file = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .io_context(format!("open journal file {}", last.name))?;
        let current_len = last.bytes;
        report.segments = segments.len();
        report.end = end;
        let shared = Arc::new(JournalShared {
            dir: dir.to_path_buf(),
            stream: new_stream,
            durable_end: AtomicU64::new(end.0),
            current_bytes: AtomicU64::new(current_len),
            syncs: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            segments: RwLock::new(segments),
        });
        Ok((
            Journal {
                shared,
                file,
                current_len,
                end,
                max_segment_bytes,
            },
            report,
        ))
    }

    /// The view other threads use.
    pub fn shared(&self) -> Arc<JournalShared> {
        self.shared.clone()
    }

    /// Position of the last appended record (durable only after [`Journal::sync`]).
    pub fn end(&self) -> JournalPos {
        self.end
    }

    /// Appends a batch of frames whose records are `end() + 1 ..= last`. One `write` call; not
    /// yet durable. Starts a new segment first when the current one is full.
    pub fn append(&mut self, frames: &[u8], last: JournalPos, records: u64) -> Result<()> {
        debug_assert_eq!(last.0, self.end.0 + records, "positions must be contiguous");
        if self.current_len > HEADER_LEN as u64
            && self.current_len + frames.len() as u64 > self.max_segment_bytes
        {
            self.roll_over()?;
        }
        if let Err(err) = self.file.write_all(frames) {
            // Leave the file as it was so the next start does not see half a batch; the caller
            // treats any journal failure as fatal anyway.
            let _ = self.file.set_len(self.current_len);
            return Err(Error::Io(format!("append to journal: {err}")));
        }
        self.current_len += frames.len() as u64;
        self.end = last;
        self.shared
            .current_bytes
            .store(self.current_len, Ordering::Relaxed);
        self.shared.appended.fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Makes everything appended so far durable: one `fdatasync` for the whole batch (group
    /// commit). Only after this returns may the batch's writers be acknowledged.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().io_context("fsync journal")?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.durable_end.store(self.end.0, Ordering::Release);
        Ok(())
    }

    /// Closes the current segment and starts the next one at `end + 1`.
    fn roll_over(&mut self) -> Result<()> {
        // The old segment holds only synced batches (every batch is synced before the next one
        // is appended), so it needs no further fsync here.
        let info = create_segment(&self.shared.dir, self.shared.stream, self.end.next())?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&info.path)
            .io_context("open new journal file")?;
        self.current_len = info.bytes;
        let mut segments = self.shared.segments.write().unwrap();
        if let Some(last) = segments.last_mut() {
            last.bytes = self.shared.current_bytes.load(Ordering::Relaxed);
        }
        segments.push(info);
        self.shared
            .current_bytes
            .store(self.current_len, Ordering::Relaxed);
        Ok(())
    }
}

/// Creates a segment file with only a header, named `YYYYMMDD.NNN` after today's date and the
/// next free counter. The header goes to a temporary file that is fsynced and then renamed, so a
/// crash never leaves a segment with half a header.
fn create_segment(dir: &Path, stream: StreamId, first_pos: JournalPos) -> Result<SegmentInfo> {
    let created_ms = now_ms();
    let date = format_date_compact(created_ms);
    let mut counter = 1;
    for entry in fs::read_dir(dir).io_context("list journal folder")? {
        let name = entry
            .io_context("list journal folder")?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(n) = name
            .strip_prefix(&format!("{date}."))
            .and_then(|n| n.parse::<u32>().ok())
        {
            counter = counter.max(n + 1);
        }
    }
    let name = format!("{date}.{counter:03}");
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let header = SegmentHeader {
        stream,
        first_pos,
        created_ms,
    };
    {
        let mut file = File::create(&tmp).io_context("create journal file")?;
        file.write_all(&header.encode())
            .io_context("write journal header")?;
        file.sync_all().io_context("fsync journal header")?;
    }
    fs::rename(&tmp, &path).io_context("name journal file")?;
    sync_dir(dir)?;
    Ok(SegmentInfo {
        name,
        path,
        first_pos,
        created_ms,
        bytes: HEADER_LEN as u64,
    })
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut file = File::open(path).io_context(format!("open {}", path.display()))?;
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read(&mut buf[filled..])
            .io_context("read journal header")?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
