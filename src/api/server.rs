//! The unix socket: bind it (mode 0660, root and an optional group), read
//! one request per connection, answer it from the hub. Nothing listens on
//! TCP.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::filter::Filter;
use super::history::select;
use super::hub::{Hub, Subscription};
use super::wire::{Control, Request, MAX_REQUEST_BYTES};
use crate::capture::{decode_flow, BootClock, FlowSnapshot};
use crate::kernel::FlowMaps;
use crate::record::Record;

/// Connections served at once; one more is told so and closed.
const MAX_CLIENTS: usize = 64;
/// A client has this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound socket; the file is removed when this drops.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of our socket file at `path`.
    file: Option<(u64, u64)>,
}

impl Drop for Listener {
    /// Removes the socket only while `path` is still ours: a daemon that
    /// replaced it (ours had stopped answering) keeps its API.
    fn drop(&mut self) {
        if self.file.is_some() && file_id(&self.path) == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Bind `path` with mode 0660, owned by root and `group` (if given). A
/// socket left by a daemon that is gone is replaced; one a live daemon
/// answers on is not.
pub fn bind(path: &Path, group: Option<&str>) -> Result<Listener> {
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .with_context(|| format!("look up group {name:?}"))?
                .with_context(|| format!("api_group {name:?}: no such group"))?
                .gid,
        ),
        None => None,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another running daemon", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    // Bound in a private (0700) directory beside `path`, given its mode and
    // group there, then renamed into place: the socket never exists at
    // `path` with the mode the umask would give it, so no other host user
    // can connect in the moment between bind and chmod.
    let dir = path.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".clawker-api-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)
        .with_context(|| format!("create a private directory in {}", dir.display()))?;
    let staged = staging.path().join("api.sock");
    let listener =
        UnixListener::bind(&staged).with_context(|| format!("bind {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", staged.display()))?;
    if let Some(gid) = gid {
        nix::unistd::chown(&staged, None, Some(gid))
            .with_context(|| format!("chown {}", staged.display()))?;
    }
    let file = file_id(&staged);
    std::fs::rename(&staged, path)
        .with_context(|| format!("move {} to {}", staged.display(), path.display()))?;
    Ok(Listener {
        listener,
        path: path.to_path_buf(),
        file,
    })
}

/// Reads the kernel's open flows for `state` requests.
pub struct OpenFlows(Arc<Mutex<FlowMaps>>);

impl OpenFlows {
    pub fn new(maps: FlowMaps) -> Self {
        OpenFlows(Arc::new(Mutex::new(maps)))
    }

    async fn read(&self) -> Vec<FlowSnapshot> {
        let maps = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let maps = maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.open_flows()
                .iter()
                .filter_map(|(k, v)| decode_flow(k, v).ok())
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// Accept connections until the runtime ends.
pub async fn serve(listener: Listener, hub: Arc<Hub>, flows: Option<OpenFlows>) {
    let flows = Arc::new(flows);
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(event = "api_accept_failed", error = %e, "API socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (hub, flows, slots) = (hub.clone(), flows.clone(), slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.try_acquire_owned() else {
                let mut w = stream;
                let _ = write_control(&mut w, &error("too many API clients")).await;
                return;
            };
            if let Err(e) = handle(stream, &hub, flows.as_ref().as_ref()).await {
                tracing::debug!(error = %format!("{e:#}"), "API client ended");
            }
        });
    }
}

fn error(msg: impl Into<String>) -> Control {
    Control::Error { error: msg.into() }
}

async fn write_control<W: AsyncWrite + Unpin>(w: &mut W, c: &Control) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(c).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn handle(stream: UnixStream, hub: &Hub, flows: Option<&OpenFlows>) -> Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut out = BufWriter::with_capacity(64 * 1024, wr);
    let mut line = String::new();
    let mut limited = (&mut rd).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = limited.read_line(&mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => {
            return write_control(&mut out, &error("no request line within 5 s"))
                .await
                .map_err(Into::into)
        }
        Ok(r) => {
            r?;
        }
    }
    if line.len() > MAX_REQUEST_BYTES {
        write_control(&mut out, &error("request line too long")).await?;
        return Ok(());
    }
    let request: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            write_control(&mut out, &error(format!("bad request: {e}"))).await?;
            return Ok(());
        }
    };
    match request {
        Request::State { detail } => {
            let open = match flows {
                Some(f) => f.read().await,
                None => Vec::new(),
            };
            let now_ns = BootClock::now_boot_ns();
            let state = hub.state(&open, now_ns, detail.as_deref());
            write_control(&mut out, &Control::State(state)).await?;
        }
        Request::Subscribe {
            filter,
            since_ms,
            last,
            follow,
        } => {
            let filter = match Filter::compile(*filter) {
                Ok(f) => f,
                Err(e) => {
                    write_control(&mut out, &error(e.to_string())).await?;
                    return Ok(());
                }
            };
            let (history, live) = hub.subscribe(filter.clone(), follow);
            let mut sent = 0u64;
            if since_ms.is_some() || last.is_some() {
                let since = since_ms.map(Duration::from_millis);
                for r in select(&history, SystemTime::now(), since, last, |r| {
                    filter.matches(r)
                }) {
                    write_record(&mut out, r).await?;
                    sent += 1;
                }
            }
            drop(history);
            write_control(&mut out, &Control::HistoryEnd { records: sent }).await?;
            if let Some(live) = live {
                follow_live(live, &mut rd, &mut out).await?;
            }
        }
    }
    Ok(())
}

async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, r: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await
}

/// Stream the subscriber's queue until the client goes away. Lost records
/// are announced after the batch that was written when they were dropped.
async fn follow_live<R, W>(mut live: Subscription, rd: &mut R, out: &mut W) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            next = live.rx.recv() => {
                let Some((batch, n)) = next else { return Ok(()) };
                let mut pending = Some((batch, n));
                while let Some((batch, n)) = pending.take() {
                    for r in batch.iter().filter(|r| live.sub.filter().matches(r)) {
                        write_record(out, r).await?;
                    }
                    live.sub.written(n);
                    pending = live.rx.try_recv().ok();
                }
                let missed = live.sub.take_missed();
                if missed > 0 {
                    let lost = serde_json::to_vec(&Control::Lost { lost: missed }).unwrap_or_default();
                    out.write_all(&lost).await?;
                    out.write_all(b"\n").await?;
                }
                out.flush().await?;
            }
            n = rd.read(&mut scratch) => {
                // EOF (or an error): the client left.
                if n.unwrap_or(0) == 0 {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    /// The socket appears at its path by rename, with its final mode: it is
    /// never created there (a socket created in place has the umask's mode
    /// until the chmod, and another host user could connect in between).
    #[tokio::test]
    async fn the_socket_appears_by_rename_with_its_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        inotify
            .add_watch(
                dir.path(),
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
            )
            .unwrap();
        let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let bound = bind(&path, None);
        nix::sys::stat::umask(old_umask);
        let _listener = bound.unwrap();
        let events = inotify.read_events().unwrap();
        let named: Vec<_> = events
            .iter()
            .filter(|e| e.name.as_deref() == Some(std::ffi::OsStr::new("api.sock")))
            .map(|e| e.mask)
            .collect();
        assert_eq!(named, vec![AddWatchFlags::IN_MOVED_TO], "{events:?}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("api.sock")],
            "staging removed"
        );
    }

    /// A daemon whose socket was replaced (it stopped answering and another
    /// daemon took the path) leaves the new socket in place when it stops;
    /// one that still owns the path removes it; a live one is not replaced.
    #[tokio::test]
    async fn a_stopping_daemon_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let first = bind(&path, None).unwrap();
        let refused = bind(&path, None).err().expect("a live socket is kept");
        assert!(format!("{refused:#}").contains("in use"), "{refused:#}");
        // The first stops answering (as a hung or killed daemon would): its
        // file is replaced by a second daemon.
        std::fs::remove_file(&path).unwrap();
        let second = bind(&path, None).unwrap();
        drop(first);
        assert!(path.exists(), "the second daemon's socket stays");
        drop(second);
        assert!(!path.exists(), "its owner removes it");
    }
}
