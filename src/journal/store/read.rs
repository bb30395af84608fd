//! Reading the journal back: the records after a position, across segment files, for the
//! backup's catch-up, dejournaling, recovery and the Journals page — and where a read stopped,
//! so the next one resumes there without scanning the segment again.

use super::*;

pub(super) fn files_from(segments: &[Segment]) -> Vec<(PathBuf, String)> {
    segments
        .iter()
        .map(|s| (s.info.path.clone(), s.info.name.clone()))
        .collect()
}

/// Where a read of the journal stopped, to start the next read of the following records there
/// ([`JournalShared::read_range_resuming`]).
#[derive(Debug, Clone)]
pub struct ReadResume {
    /// The last record read.
    pub(super) after: JournalPos,
    /// The file and byte offset of the frame after it.
    pub(super) name: String,
    pub(super) offset: u64,
    /// The journal it belongs to, and its truncation count when it was taken.
    pub(super) stream: StreamId,
    pub(super) truncations: u64,
}

/// The offset of the last mark at or before `pos` (0 = start of the file).
pub(super) fn nearest_mark(marks: &[(u64, u64)], pos: JournalPos) -> u64 {
    match marks.partition_point(|(p, _)| *p <= pos.0) {
        0 => 0,
        i => marks[i - 1].1,
    }
}

/// Iterator over records from [`JournalShared::read_range`].
pub struct JournalIter {
    pub(super) files: Vec<(PathBuf, String)>,
    pub(super) next_file: usize,
    pub(super) first_offset: u64,
    pub(super) reader: Option<SegmentReader>,
    pub(super) after: JournalPos,
    pub(super) until: JournalPos,
    pub(super) stream: StreamId,
    pub(super) truncations: u64,
    pub(super) failed: bool,
}

impl JournalIter {
    /// Where this read stopped, when a following read can start there: the last record read
    /// and the offset of the frame after it in the file still open. `None` after an error, or
    /// when the read stopped at a file's end (the next record is in the next file).
    pub fn resume_point(&self) -> Option<ReadResume> {
        if self.failed {
            return None;
        }
        let reader = self.reader.as_ref()?;
        let (_, name) = &self.files[self.next_file - 1];
        Some(ReadResume {
            after: self.after,
            name: name.clone(),
            offset: reader.offset(),
            stream: self.stream,
            truncations: self.truncations,
        })
    }
}

impl Iterator for JournalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.after >= self.until {
                return None;
            }
            if self.reader.is_none() {
                let (path, name) = self.files.get(self.next_file)?;
                let offset = if self.next_file == 0 {
                    self.first_offset
                } else {
                    0
                };
                self.next_file += 1;
                match SegmentReader::open_at(path, name, offset) {
                    Ok(reader) => self.reader = Some(reader),
                    Err(err) => {
                        self.failed = true;
                        return Some(Err(err));
                    }
                }
            }
            match self.reader.as_mut().unwrap().next_record() {
                Ok(Some(record)) if record.pos <= self.after => continue,
                Ok(Some(record)) => {
                    if record.pos != self.after.next() {
                        self.until = JournalPos::ZERO;
                        self.failed = true;
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
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
    }
}
