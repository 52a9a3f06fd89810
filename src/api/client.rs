//! The client side: connect with one clear line when the daemon is not
//! running or the caller may not use the socket, send one request, read
//! the answer line by line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::wire::{Control, Request, CONTROL_KEY};

/// One line from the daemon.
#[derive(Debug)]
pub enum Line {
    /// A record: the line as received (the stdout schema) and parsed.
    Record(String, serde_json::Value),
    Control(Control),
}

pub fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound | ConnectionRefused => anyhow!(
                "the daemon is not running: nothing listens on {} (start `clawker-egress run`, or pass --socket)",
                path.display()
            ),
            PermissionDenied => anyhow!(
                "permission denied on {}: run as root or as a member of the socket's group (api_group in the daemon's config)",
                path.display()
            ),
            _ => anyhow!("connect to {}: {e}", path.display()),
        }
    })
}

/// Send `request`; the reader yields the answer.
pub fn request(path: &Path, request: &Request) -> Result<BufReader<UnixStream>> {
    let mut stream = connect(path)?;
    let mut line = serde_json::to_vec(request).context("encode request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("send request on {}", path.display()))?;
    Ok(BufReader::with_capacity(256 * 1024, stream))
}

/// `parse_records`: also parse record lines (else their value is `Null`,
/// for a caller that only passes the line on).
pub fn parse(line: &str, parse_records: bool) -> Result<Line> {
    // A record's first key is `@timestamp`; only control lines start
    // with `api`.
    if !parse_records && line.starts_with("{\"@timestamp\"") {
        return Ok(Line::Record(line.to_owned(), serde_json::Value::Null));
    }
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("daemon sent a non-JSON line: {line:.80}"))?;
    if value.get(CONTROL_KEY).is_some() {
        let c: Control =
            serde_json::from_value(value).context("daemon sent an unknown control line")?;
        return Ok(Line::Control(c));
    }
    Ok(Line::Record(line.to_owned(), value))
}

/// Read the next line; `None` at end of stream.
pub fn next_line(
    reader: &mut impl BufRead,
    buf: &mut String,
    parse_records: bool,
) -> Result<Option<Line>> {
    buf.clear();
    let n = reader.read_line(buf).context("read from the daemon")?;
    if n == 0 {
        return Ok(None);
    }
    parse(buf.trim_end_matches('\n'), parse_records).map(Some)
}

/// How long a `state` answer may take: `top` reads keys between readings,
/// so a daemon that does not answer must not freeze it (q still quits).
const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One `state` answer.
pub fn state(path: &Path, detail: Option<String>) -> Result<super::wire::State> {
    let mut reader = request(path, &Request::State { detail })?;
    reader
        .get_ref()
        .set_read_timeout(Some(STATE_TIMEOUT))
        .context("set the state request's timeout")?;
    let mut buf = String::new();
    match next_line(&mut reader, &mut buf, true)? {
        Some(Line::Control(Control::State(s))) => Ok(s),
        Some(Line::Control(Control::Error { error })) => Err(anyhow!("daemon: {error}")),
        Some(other) => Err(anyhow!("unexpected answer to a state request: {other:?}")),
        None => Err(anyhow!(
            "the daemon closed the connection without an answer"
        )),
    }
}
