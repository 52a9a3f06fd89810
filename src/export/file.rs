//! `file:<path>`: the stdout JSON lines appended to a file, rotated by size
//! (`path` -> `path.1` -> … -> `path.<keep>`, the oldest deleted), so a
//! host without a collector keeps a bounded local trail. Each line is one
//! whole record: rotation happens between batches, never inside a line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufWriter};

use super::{Batch, Sink};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct FileOptions {
    pub path: PathBuf,
    /// Rotate once the file holds at least this many bytes.
    pub rotate_bytes: u64,
    /// Rotated files kept (`path.1` … `path.<keep>`); 0 keeps none.
    pub keep: u32,
}

pub struct FileSink {
    opts: FileOptions,
    /// Metrics `sink` label: `file:<path>`, one per file output.
    name: &'static str,
    out: Option<BufWriter<tokio::fs::File>>,
    written: u64,
    metrics: Arc<Metrics>,
    line: Vec<u8>,
}

impl FileSink {
    /// Opens (creates, appends to) the file now: a path the daemon cannot
    /// write is a start-up error, not a silent sink.
    pub async fn open(opts: FileOptions, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (out, written) = open_append(&opts.path).await?;
        let name: &'static str =
            Box::leak(format!("file:{}", opts.path.display()).into_boxed_str());
        Ok(FileSink {
            opts,
            name,
            out: Some(out),
            written,
            metrics,
            line: Vec::with_capacity(1024),
        })
    }

    async fn write_batch(&mut self, batch: &Batch) -> std::io::Result<u64> {
        if self.out.is_none() {
            let (out, written) = open_append(&self.opts.path).await?;
            self.out = Some(out);
            self.written = written;
        }
        let mut n = 0;
        for record in batch.iter() {
            self.line.clear();
            record.write_json(&mut self.line);
            self.line.push(b'\n');
            let out = self.out.as_mut().expect("opened above");
            out.write_all(&self.line).await?;
            self.written += self.line.len() as u64;
            n += 1;
        }
        if let Some(out) = self.out.as_mut() {
            out.flush().await?;
        }
        if self.written >= self.opts.rotate_bytes {
            self.rotate().await?;
        }
        Ok(n)
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush().await?;
            out.get_mut().sync_all().await?;
        }
        let p = &self.opts.path;
        if self.opts.keep == 0 {
            tokio::fs::remove_file(p).await?;
        } else {
            let _ = tokio::fs::remove_file(numbered(p, self.opts.keep)).await;
            for i in (1..self.opts.keep).rev() {
                let from = numbered(p, i);
                if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                    tokio::fs::rename(&from, numbered(p, i + 1)).await?;
                }
            }
            tokio::fs::rename(p, numbered(p, 1)).await?;
        }
        let (out, written) = open_append(p).await?;
        self.out = Some(out);
        self.written = written;
        tracing::info!(
            event = "file_rotated",
            sink = self.name,
            "output file rotated"
        );
        Ok(())
    }
}

fn numbered(p: &Path, i: u32) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

async fn open_append(path: &Path) -> std::io::Result<(BufWriter<tokio::fs::File>, u64)> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let len = f.metadata().await?.len();
    Ok((BufWriter::with_capacity(256 * 1024, f), len))
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn send(&mut self, batch: Batch) {
        match self.write_batch(&batch).await {
            Ok(n) => self.metrics.exported(self.name, n),
            Err(e) => {
                // A full disk or a removed directory loses the batch: counted,
                // said; the next batch tries to reopen the file.
                self.out = None;
                self.metrics
                    .sink_failure(self.name, "write", batch.len() as u64);
                tracing::warn!(event = "sink_failure", sink = self.name, error = %e, "file write failed");
            }
        }
    }

    async fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, Source};

    fn batch(n: usize) -> Batch {
        Arc::new(
            (0..n)
                .map(|_| Record::new(std::time::SystemTime::now(), Source::Egress))
                .collect(),
        )
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let metrics = Arc::new(Metrics::new());
        let mut sink = FileSink::open(
            FileOptions {
                path: path.clone(),
                rotate_bytes: 4096,
                keep: 2,
            },
            metrics.clone(),
        )
        .await
        .unwrap();
        let mut ids = Vec::new();
        for _ in 0..20 {
            let b = batch(10);
            ids.extend(b.iter().map(|r| r.get_str("record_id").unwrap().to_owned()));
            sink.send(b).await;
        }
        sink.flush().await;
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "keep = 2");
        // Everything still on disk is whole lines, in order, without gaps.
        let mut seen = Vec::new();
        for p in [numbered(&path, 2), numbered(&path, 1), path.clone()] {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                seen.push(v["record_id"].as_str().unwrap().to_owned());
            }
        }
        assert!(!seen.is_empty());
        let start = ids.iter().position(|i| *i == seen[0]).unwrap();
        assert_eq!(seen, ids[start..].to_vec());
        assert!(std::fs::metadata(numbered(&path, 1)).unwrap().len() >= 4096);
        assert_eq!(metrics.exported_total(sink.name()), 200);
    }
}
