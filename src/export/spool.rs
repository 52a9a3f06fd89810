//! The OTLP sink's disk spool: records the memory queue cannot hold while
//! the collector is away, kept in order on disk, bounded, replayed when the
//! collector is back, and kept across a daemon restart.
//!
//! Layout (one directory per sink, locked with `flock` so two daemons never
//! share it): segment files `<id>.seg` (16 hex digits, oldest = lowest id)
//! of frames `[len: u32 LE][crc32 of payload: u32 LE][payload]`, the payload
//! being one encoded OTLP `LogRecord` (it carries its `record_id`); and
//! `cursor`, the first frame not yet delivered (`<segment id> <offset>`).
//!
//! Durability (fsync policy): frames are `write(2)`n at once (they survive a
//! daemon crash or SIGKILL: the kernel holds them); a segment is fsynced
//! when it is sealed (full) and at shutdown, the cursor is replaced
//! atomically (write + rename) after each delivered batch and fsynced at
//! shutdown. A host crash can lose the unsynced tail and can replay records
//! delivered after the last synced cursor: the collector stores a replayed
//! record once (its `record_id` is the document `_id`). A torn or corrupt
//! frame ends its segment's replay and is logged.
//!
//! Bounds: the sum of the segment files never exceeds `max_bytes`; a record
//! that does not fit is refused (the caller counts it as `spool_full`).
//!
//! A clean shutdown may leave `summary`: what the caller counted in the
//! spool (its per-container ledger), under a fingerprint of the segments
//! and the cursor. The next `open` removes it and hands it back only if
//! nothing changed since ([`Spool::take_summary`]); otherwise, after a
//! crash, the caller counts by reading the spool.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Frame header: length + crc32.
const HEADER: u64 = 8;
/// No record is this large (the collector's request limit is 4 MiB).
const MAX_FRAME: u32 = 4 << 20;
/// Ids start high so records can be put in front of the oldest segment.
const FIRST_ID: u64 = 1 << 40;
/// The caller's summary of a cleanly closed spool.
const SUMMARY: &str = "summary";

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Upper bound of the segment files together.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started at this size.
    pub segment_bytes: u64,
}

struct Segment {
    id: u64,
    len: u64,
}

/// Where the next undelivered frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    segment: u64,
    offset: u64,
}

pub struct Spool {
    opts: SpoolOptions,
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    writer: Option<(u64, BufWriter<File>)>,
    read: Position,
    total_bytes: u64,
    /// The summary a clean shutdown left, if nothing changed since.
    summary: Option<String>,
    /// Held for the spool's lifetime (flock).
    _lock: File,
}

impl Spool {
    pub fn open(opts: SpoolOptions) -> io::Result<Spool> {
        std::fs::create_dir_all(&opts.dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(opts.dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("spool {} is in use by another process", opts.dir.display()),
            ));
        }
        let mut ids: Vec<u64> = std::fs::read_dir(&opts.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        for id in ids {
            let len = std::fs::metadata(seg_path(&opts.dir, id))?.len();
            total_bytes += len;
            segments.push_back(Segment { id, len });
        }
        let first = segments.front().map(|s| s.id);
        let read = match (read_cursor(&opts.dir), first) {
            (Some(c), Some(f)) if c.segment >= f => c,
            (_, Some(f)) => Position {
                segment: f,
                offset: 0,
            },
            (_, None) => Position {
                segment: FIRST_ID,
                offset: 0,
            },
        };
        let mut spool = Spool {
            opts,
            segments,
            writer: None,
            read,
            total_bytes,
            summary: None,
            _lock: lock,
        };
        // Segments wholly before the cursor were delivered.
        spool.drop_consumed()?;
        spool.summary = spool.take_summary_file();
        Ok(spool)
    }

    /// The summary a clean shutdown left, removed (used at most once: any
    /// later change makes it stale) and returned if it is of the spool as
    /// it is. A summary that cannot be read or removed is not used: the
    /// caller then reads the spool, as after a crash.
    fn take_summary_file(&self) -> Option<String> {
        let path = self.opts.dir.join(SUMMARY);
        let text = std::fs::read_to_string(&path);
        if matches!(&text, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            return None;
        }
        let removed = std::fs::remove_file(&path).is_ok()
            // The removal on disk before anything changes the spool.
            && File::open(&self.opts.dir).and_then(|d| d.sync_all()).is_ok();
        let text = text.ok()?;
        let (fingerprint, rest) = text.split_once('\n')?;
        (removed && fingerprint == self.fingerprint()).then(|| rest.to_owned())
    }

    /// The segments (id and length) and the cursor: what a summary is of.
    fn fingerprint(&self) -> String {
        let mut out = format!("v1 {:x} {}", self.read.segment, self.read.offset);
        for seg in &self.segments {
            // Writing to a String cannot fail.
            let _ = write!(out, " {:x}:{}", seg.id, seg.len);
        }
        out
    }

    /// The caller's summary of this spool from the last clean shutdown,
    /// once; `None` after a crash or any change since.
    pub fn take_summary(&mut self) -> Option<String> {
        self.summary.take()
    }

    /// At shutdown, after [`Spool::sync`]: keep `summary` for the next
    /// `open`, valid while the segments and the cursor stay as they are.
    pub fn save_summary(&self, summary: &str) -> io::Result<()> {
        let tmp = self.opts.dir.join("summary.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{}", self.fingerprint())?;
        f.write_all(summary.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.opts.dir.join(SUMMARY))
    }

    /// Frame bytes not yet delivered: the segments without the part of
    /// the first one before the cursor.
    pub fn pending_bytes(&self) -> u64 {
        let before = match self.segments.front() {
            Some(s) if s.id == self.read.segment => self.read.offset.min(s.len),
            _ => 0,
        };
        self.total_bytes - before
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Bytes on disk (segments).
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The bound of [`Spool::bytes`].
    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    /// Calls `f` with each undelivered record, oldest first: one read of
    /// each segment, for the OTLP sink to rebuild what each container holds
    /// after a restart. Stops a segment at a frame that does not fit (its
    /// replay reports it).
    pub fn for_each_pending(&self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        for seg in &self.segments {
            let from = match seg.id.cmp(&self.read.segment) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => self.read.offset,
                std::cmp::Ordering::Greater => 0,
            };
            let bytes = std::fs::read(seg_path(&self.opts.dir, seg.id))?;
            let end = bytes
                .len()
                .min(usize::try_from(seg.len).unwrap_or(usize::MAX));
            let mut at = usize::try_from(from).unwrap_or(usize::MAX);
            while at + HEADER as usize <= end {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                let body = at + HEADER as usize;
                if len > MAX_FRAME || body + len as usize > end {
                    break;
                }
                f(&bytes[body..body + len as usize]);
                at = body + len as usize;
            }
        }
        Ok(())
    }

    /// Nothing left to deliver.
    pub fn is_empty(&self) -> bool {
        !self.segments.iter().any(|s| {
            (s.id > self.read.segment && s.len > 0)
                || (s.id == self.read.segment && self.read.offset < s.len)
        })
    }

    /// Append records in order; returns how many fit (the rest would pass
    /// `max_bytes`: the caller counts them as lost, `spool_full`).
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> io::Result<usize> {
        let mut n = 0;
        for r in records {
            let r = r.as_ref();
            let frame = frame_bytes(r.len());
            if r.len() as u64 > u64::from(MAX_FRAME)
                || self.total_bytes + frame > self.opts.max_bytes
            {
                break;
            }
            let need_new = match (&self.writer, self.segments.back()) {
                (Some((id, _)), Some(last)) => {
                    *id != last.id || last.len >= self.opts.segment_bytes
                }
                _ => true,
            };
            if need_new {
                self.start_segment()?;
            }
            let (_, w) = self.writer.as_mut().expect("started above");
            w.write_all(&(r.len() as u32).to_le_bytes())?;
            w.write_all(&crc32fast::hash(r).to_le_bytes())?;
            w.write_all(r)?;
            let last = self.segments.back_mut().expect("a segment");
            last.len += frame;
            self.total_bytes += frame;
            n += 1;
        }
        if let Some((_, w)) = self.writer.as_mut() {
            w.flush()?;
        }
        Ok(n)
    }

    /// Put records IN FRONT of everything spooled (the memory queue's
    /// records at shutdown are older than the spool's); returns how many fit.
    pub fn prepend<R: AsRef<[u8]>>(&mut self, records: &[R]) -> io::Result<usize> {
        let mut fit = 0;
        let mut bytes = 0;
        for r in records {
            let frame = frame_bytes(r.as_ref().len());
            if self.total_bytes + bytes + frame > self.opts.max_bytes {
                break;
            }
            bytes += frame;
            fit += 1;
        }
        if fit == 0 {
            return Ok(0);
        }
        // One cursor for the whole spool: a half-read segment loses its
        // delivered prefix first (rewritten), so reading restarts at 0.
        self.compact_read_segment()?;
        let first = self
            .read
            .segment
            .min(self.segments.front().map_or(u64::MAX, |s| s.id));
        let id = first - 1;
        let path = seg_path(&self.opts.dir, id);
        let mut w = BufWriter::new(File::create(&path)?);
        for r in &records[..fit] {
            let r = r.as_ref();
            w.write_all(&(r.len() as u32).to_le_bytes())?;
            w.write_all(&crc32fast::hash(r).to_le_bytes())?;
            w.write_all(r)?;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
        self.segments.push_front(Segment { id, len: bytes });
        self.total_bytes += bytes;
        self.read = Position {
            segment: id,
            offset: 0,
        };
        self.write_cursor(true)?;
        Ok(fit)
    }

    fn compact_read_segment(&mut self) -> io::Result<()> {
        if self.read.offset == 0 {
            return Ok(());
        }
        let Some(i) = self.segments.iter().position(|s| s.id == self.read.segment) else {
            return Ok(());
        };
        if self
            .writer
            .as_ref()
            .is_some_and(|(w, _)| *w == self.read.segment)
        {
            if let Some((_, mut w)) = self.writer.take() {
                w.flush()?;
            }
        }
        let path = seg_path(&self.opts.dir, self.read.segment);
        let bytes = std::fs::read(&path)?;
        let from = usize::try_from(self.read.offset)
            .unwrap_or(bytes.len())
            .min(bytes.len());
        let tmp = self.opts.dir.join("compact.tmp");
        std::fs::write(&tmp, &bytes[from..])?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        let seg = &mut self.segments[i];
        self.total_bytes -= seg.len - (bytes.len() - from) as u64;
        seg.len = (bytes.len() - from) as u64;
        self.read.offset = 0;
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        if let Some((_, w)) = self.writer.as_mut() {
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        let id = self
            .segments
            .back()
            .map_or(self.read.segment.max(FIRST_ID), |s| s.id + 1);
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(seg_path(&self.opts.dir, id))?;
        self.writer = Some((id, BufWriter::with_capacity(256 * 1024, f)));
        self.segments.push_back(Segment { id, len: 0 });
        Ok(())
    }

    /// Up to `max` undelivered records from the oldest, and the position
    /// after them ([`Spool::commit`] once they are delivered). A corrupt
    /// frame ends its segment (reported in `corrupt`).
    pub fn peek(&mut self, max: usize) -> io::Result<(Vec<Vec<u8>>, Position, bool)> {
        let mut out = Vec::new();
        let mut pos = self.read;
        let mut corrupt = false;
        let mut idx = self.segments.iter().position(|s| s.id >= pos.segment);
        while out.len() < max {
            let Some(i) = idx else { break };
            let seg = &self.segments[i];
            if seg.id != pos.segment {
                pos = Position {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if pos.offset + HEADER > seg.len {
                // This segment is done; on to the next (if any).
                if i + 1 < self.segments.len() {
                    idx = Some(i + 1);
                    pos = Position {
                        segment: self.segments[i + 1].id,
                        offset: 0,
                    };
                    continue;
                }
                break;
            }
            let f = File::open(seg_path(&self.opts.dir, seg.id))?;
            while out.len() < max && pos.offset + HEADER <= seg.len {
                let mut head = [0u8; 8];
                f.read_exact_at(&mut head, pos.offset)?;
                let len = u32::from_le_bytes(head[..4].try_into().unwrap());
                let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
                if len > MAX_FRAME || pos.offset + HEADER + u64::from(len) > seg.len {
                    corrupt = true;
                    pos.offset = seg.len;
                    break;
                }
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, pos.offset + HEADER)?;
                if crc32fast::hash(&buf) != crc {
                    corrupt = true;
                    pos.offset = seg.len;
                    break;
                }
                pos.offset += HEADER + u64::from(len);
                out.push(buf);
            }
        }
        Ok((out, pos, corrupt))
    }

    /// Everything before `pos` was delivered: move the cursor, delete
    /// segments wholly behind it.
    pub fn commit(&mut self, pos: Position) -> io::Result<()> {
        self.read = pos;
        self.drop_consumed()?;
        self.write_cursor(false)
    }

    /// Remove every segment read to its end, the one being written too
    /// (the next append starts a new one): the spool's size is what is
    /// still to deliver, and a drained spool holds no file.
    fn drop_consumed(&mut self) -> io::Result<()> {
        while let Some(front) = self.segments.front() {
            let behind = front.id < self.read.segment
                || (front.id == self.read.segment && self.read.offset >= front.len);
            if !behind {
                break;
            }
            let id = front.id;
            if self.writer.as_ref().is_some_and(|(w, _)| *w == id) {
                self.writer = None;
            }
            self.total_bytes -= front.len;
            self.segments.pop_front();
            let _ = std::fs::remove_file(seg_path(&self.opts.dir, id));
            if self.read.segment == id {
                // Past the removed segment: the next one, or the id the
                // next append will start (never a lower one).
                let next = self.segments.front().map_or(id + 1, |s| s.id);
                self.read = Position {
                    segment: next,
                    offset: 0,
                };
            }
        }
        Ok(())
    }

    fn write_cursor(&self, sync: bool) -> io::Result<()> {
        let tmp = self.opts.dir.join("cursor.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{:x} {}", self.read.segment, self.read.offset)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.opts.dir.join("cursor"))
    }

    /// Shutdown: everything on disk and synced.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some((_, w)) = self.writer.as_mut() {
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        self.write_cursor(true)
    }
}

/// What a record of `payload` bytes takes in the spool (its frame).
pub fn frame_bytes(payload: usize) -> u64 {
    HEADER + payload as u64
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let (seg, off) = text.trim().split_once(' ')?;
    Some(Position {
        segment: u64::from_str_radix(seg, 16).ok()?,
        offset: off.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, max: u64, seg: u64) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes: max,
            segment_bytes: seg,
        }
    }

    fn recs(from: usize, n: usize) -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| format!("record-{i:06}").into_bytes())
            .collect()
    }

    fn drain(s: &mut Spool) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let (got, pos, corrupt) = s.peek(7).unwrap();
            assert!(!corrupt);
            if got.is_empty() {
                break;
            }
            all.extend(got);
            s.commit(pos).unwrap();
        }
        all
    }

    #[test]
    fn replays_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.append(&recs(0, 50)).unwrap(), 50);
        assert!(!s.is_empty());
        // Deliver 10, then "restart".
        let (got, pos, _) = s.peek(10).unwrap();
        assert_eq!(got, recs(0, 10));
        s.commit(pos).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(s.append(&recs(50, 5)).unwrap(), 5);
        assert_eq!(drain(&mut s), recs(10, 45));
        assert!(s.is_empty());
        // Delivered segments are deleted, the one being written too: a
        // drained spool holds nothing (its size is what is left to send).
        assert_eq!(s.bytes(), 0);
        let segs = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        };
        assert_eq!(segs(dir.path()), 0);
        // Records spooled after the drain are read, also after a restart.
        assert_eq!(s.append(&recs(55, 3)).unwrap(), 3);
        assert!(!s.is_empty());
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(drain(&mut s), recs(55, 3));
        assert_eq!((s.bytes(), segs(dir.path())), (0, 0));
    }

    #[test]
    fn a_full_spool_refuses_and_prepend_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        // 13-byte records + 8-byte header = 21 bytes a frame.
        let mut s = Spool::open(opts(dir.path(), 21 * 10, 1 << 20)).unwrap();
        assert_eq!(s.append(&recs(100, 15)).unwrap(), 10);
        assert_eq!(s.bytes(), 210);
        let (got, pos, _) = s.peek(4).unwrap();
        s.commit(pos).unwrap();
        assert_eq!(got, recs(100, 4));
        // Only whole segments free space; this one is still being read.
        assert_eq!(s.prepend(&recs(0, 3)).unwrap(), 0);
        let mut s2 = {
            drop(s);
            Spool::open(opts(dir.path(), 21 * 20, 1 << 20)).unwrap()
        };
        assert_eq!(s2.prepend(&recs(0, 3)).unwrap(), 3);
        let mut expect = recs(0, 3);
        expect.extend(recs(104, 6));
        assert_eq!(drain(&mut s2), expect);
    }

    #[test]
    fn a_torn_tail_is_reported_not_replayed_as_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
        s.append(&recs(0, 3)).unwrap();
        s.sync().unwrap();
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
        let (got, _, corrupt) = s.peek(10).unwrap();
        assert_eq!(got, recs(0, 2));
        assert!(corrupt);
    }

    #[test]
    fn a_summary_comes_back_once_and_only_while_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        s.append(&recs(0, 30)).unwrap();
        let (got, pos, _) = s.peek(10).unwrap();
        s.commit(pos).unwrap();
        let pending: u64 = recs(10, 20).iter().map(|r| frame_bytes(r.len())).sum();
        assert_eq!(s.pending_bytes(), pending);
        assert_eq!(got.len(), 10);
        s.sync().unwrap();
        s.save_summary("c 7 123\n").unwrap();
        drop(s);
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(s.take_summary().as_deref(), Some("c 7 123\n"));
        assert_eq!(s.take_summary(), None);
        assert_eq!(s.pending_bytes(), pending);
        drop(s);
        // Used once: not there on the next open.
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(s.take_summary(), None);
        // Stale: the spool changed after it was written (as when a crash
        // came after an earlier clean stop's summary was put back).
        s.sync().unwrap();
        s.save_summary("c 7 1\n").unwrap();
        s.append(&recs(30, 1)).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 200)).unwrap();
        assert_eq!(s.take_summary(), None, "a stale summary was used");
        assert_eq!(drain(&mut s), recs(10, 21));
        drop(s);

        // Stale too: one more record in the segment being written (its
        // length changed, not the segments), or only the cursor moved.
        for change in ["append", "commit"] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
            s.append(&recs(0, 5)).unwrap();
            s.sync().unwrap();
            s.save_summary("c 7 1\n").unwrap();
            if change == "append" {
                s.append(&recs(5, 1)).unwrap();
            } else {
                let (_, pos, _) = s.peek(1).unwrap();
                s.commit(pos).unwrap();
            }
            s.sync().unwrap();
            drop(s);
            let mut s = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
            assert_eq!(s.take_summary(), None, "used after {change}");
        }
        // A summary that is not a file is not used, and the spool opens.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(SUMMARY)).unwrap();
        let mut s = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(s.take_summary(), None);
    }

    #[test]
    fn two_owners_cannot_share_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Spool::open(opts(dir.path(), 1 << 20, 1 << 20)).unwrap();
        let err = Spool::open(opts(dir.path(), 1 << 20, 1 << 20))
            .err()
            .unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
    }
}
