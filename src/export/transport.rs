//! How the OTLP sink reaches its collector: TLS (system roots or a given
//! CA), an optional client certificate (mTLS), extra request headers
//! (`authorization: Bearer …` from a token file) and gzip.
//!
//! Every credential is read from a file, once, at start-up, and checked
//! there: a file that is missing, does not parse, or holds a secret other
//! users can read is a start-up error, never a silent downgrade. The rule
//! the sink relies on: an `https://` endpoint is always dialled with TLS
//! (a TLS set-up that fails is an error, never plaintext), and credentials
//! are never sent over `http://`. Secrets stay in memory as sensitive
//! metadata; [`OtlpTransport`]'s `Debug` and [`OtlpTransport::summary`]
//! name files, never contents.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tonic::client::Grpc;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::GrpcMethod;

use super::otlp_wire::RawCodec;

/// Request compression on the OTLP export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// Where the transport's material lives (from the configuration). Only
/// paths: no secret is ever a configuration or flag value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportSettings {
    /// PEM bundle of the CA(s) that sign the collector's certificate;
    /// none: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its PKCS#8/PKCS#1/SEC1 key (mTLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// One line: the token sent as `authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
    /// `name: value` lines sent as request headers (`#` comments).
    pub headers_file: Option<PathBuf>,
    /// The name the collector's certificate must carry, when it is not the
    /// endpoint's host.
    pub server_name: Option<String>,
    pub compression: Compression,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// tonic's error says only "transport error": the cause is in its sources.
    #[error("TLS set-up for {endpoint}: {}", chain(source))]
    Tls {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("endpoint {endpoint:?}: {}", chain(source))]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn file_err(path: &Path, reason: impl Into<String>) -> TransportError {
    TransportError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Header names a file may not set: the transport's own, and gRPC's.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "te",
    "host",
    "user-agent",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
];

/// The loaded, checked transport. Cheap to clone (one per sink instance).
#[derive(Clone, Default)]
pub struct OtlpTransport {
    tls: Option<TlsMaterial>,
    headers: Headers,
    compression: Compression,
    /// What the transport carries, by file name, for logs and `check`.
    summary: Vec<String>,
}

#[derive(Clone)]
struct TlsMaterial {
    ca: Option<Certificate>,
    identity: Option<Identity>,
    server_name: Option<String>,
}

/// Adds the configured headers to every request, and the bearer token.
#[derive(Clone, Default)]
pub struct Headers {
    fixed: Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>,
    token: Option<Arc<TokenFile>>,
}

impl Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        for (k, v) in self.fixed.iter() {
            md.append(k.clone(), v.clone());
        }
        if let Some(t) = &self.token {
            md.insert("authorization", t.current());
        }
        Ok(req)
    }
}

/// The token file, re-read when it changes (one stat per export request),
/// so a rotation (scripts/stack-credentials --rotate token) reaches the
/// daemon and the collector's bearertokenauth alike without a restart. A
/// rewritten file that is unreadable or invalid keeps the previous token,
/// with a warning.
struct TokenFile {
    path: PathBuf,
    state: std::sync::Mutex<TokenState>,
}

struct TokenState {
    stamp: Option<(i64, i64, u64, u64)>,
    value: AsciiMetadataValue,
}

fn stamp(path: &Path) -> Option<(i64, i64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.ino(), m.len()))
}

impl TokenFile {
    fn load(path: &Path) -> Result<TokenFile, TransportError> {
        let stamp = stamp(path);
        let value = read_token(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new(TokenState { stamp, value }),
        })
    }

    fn current(&self) -> AsciiMetadataValue {
        let Ok(mut st) = self.state.lock() else {
            // A panic while holding the lock: keep sending what we had.
            return self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .value
                .clone();
        };
        let now = stamp(&self.path);
        if now != st.stamp {
            st.stamp = now;
            match read_token(&self.path) {
                Ok(v) => {
                    st.value = v;
                    tracing::info!(event = "otlp_token_reloaded", path = %self.path.display(), "bearer token file changed; using the new token");
                }
                Err(e) => {
                    tracing::warn!(event = "otlp_token_reload_failed", error = %e, "keeping the previous bearer token");
                }
            }
        }
        st.value.clone()
    }
}

fn read_token(path: &Path) -> Result<AsciiMetadataValue, TransportError> {
    let text = read_text(path, true)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(file_err(path, "is empty: it must hold the bearer token"));
    }
    // The collector's bearertokenauth (v0.141) reads one token per LINE: a
    // file that ends in a newline also holds the EMPTY token, and then
    // `authorization: Bearer ` is accepted from anyone (tests/tls.rs). The
    // file is usually shared with the collector, so refuse it here.
    if token != text {
        return Err(file_err(
            path,
            "has a newline or spaces around the token: write exactly the token \
             (printf %s \"$TOKEN\" > FILE); a trailing newline makes the collector's \
             bearertokenauth also accept an empty token",
        ));
    }
    if token.contains(['\n', '\r', ' ', '\t']) || !token.is_ascii() {
        return Err(file_err(
            path,
            "must hold one token: printable ASCII, one line, no spaces",
        ));
    }
    let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| file_err(path, "the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The logs client the sink exports with: it sends a request already
/// encoded ([`super::otlp_wire`]), so a retry re-sends the same bytes.
#[derive(Clone)]
pub struct OtlpClient {
    grpc: Grpc<InterceptedService<Channel, Headers>>,
}

impl OtlpClient {
    /// `LogsService/Export` with `request`, the bytes of an
    /// `ExportLogsServiceRequest` (as the generated client would send it).
    pub async fn export(
        &mut self,
        request: Bytes,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        const SERVICE: &str = "opentelemetry.proto.collector.logs.v1.LogsService";
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        let path =
            PathAndQuery::from_static("/opentelemetry.proto.collector.logs.v1.LogsService/Export");
        let mut req = tonic::Request::new(request);
        req.extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "Export"));
        self.grpc.unary(req, path, RawCodec).await
    }
}

impl fmt::Debug for OtlpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpTransport")
            .field("summary", &self.summary())
            .finish()
    }
}

impl OtlpTransport {
    /// Read and check every file the settings name. `endpoint` decides what
    /// is allowed: TLS material and credentials need `https://`.
    pub fn load(endpoint: &str, s: &TransportSettings) -> Result<Self, TransportError> {
        let https = is_https(endpoint)?;
        let wants_tls = s.ca_file.is_some()
            || s.client_cert_file.is_some()
            || s.client_key_file.is_some()
            || s.server_name.is_some();
        if wants_tls && !https {
            return Err(TransportError::Invalid(format!(
                "otlp_endpoint {endpoint:?} is plaintext http:// but TLS settings are given \
                 (otlp_ca_file / otlp_client_cert_file / otlp_client_key_file / otlp_tls_server_name): \
                 use an https:// endpoint"
            )));
        }
        if (s.bearer_token_file.is_some() || s.headers_file.is_some()) && !https {
            return Err(TransportError::Invalid(format!(
                "otlp_endpoint {endpoint:?} is plaintext http://: credentials and headers \
                 (otlp_bearer_token_file / otlp_headers_file) are only sent over https://"
            )));
        }
        let mut summary = Vec::new();
        let tls = if https {
            let ca = match &s.ca_file {
                Some(path) => {
                    let pem = read_file(path, false)?;
                    let n = CertificateDer::pem_slice_iter(&pem)
                        .map(|c| {
                            c.map_err(|e| {
                                file_err(path, format!("not a PEM certificate bundle: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .len();
                    if n == 0 {
                        return Err(file_err(path, "holds no PEM CERTIFICATE"));
                    }
                    summary.push(format!("tls: CA {} ({n} certificate(s))", path.display()));
                    Some(Certificate::from_pem(pem))
                }
                None => {
                    summary.push("tls: system roots".into());
                    None
                }
            };
            let identity = match (&s.client_cert_file, &s.client_key_file) {
                (Some(cert), Some(key)) => {
                    let cert_pem = read_file(cert, false)?;
                    let n = CertificateDer::pem_slice_iter(&cert_pem)
                        .map(|c| c.map_err(|e| file_err(cert, format!("not a PEM certificate: {e}"))))
                        .collect::<Result<Vec<_>, _>>()?
                        .len();
                    if n == 0 {
                        return Err(file_err(cert, "holds no PEM CERTIFICATE"));
                    }
                    let key_pem = read_file(key, true)?;
                    PrivateKeyDer::from_pem_slice(&key_pem)
                        .map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?;
                    summary.push(format!(
                        "mtls: client certificate {}, key {}",
                        cert.display(),
                        key.display()
                    ));
                    Some(Identity::from_pem(cert_pem, key_pem))
                }
                (None, None) => None,
                _ => {
                    return Err(TransportError::Invalid(
                        "otlp_client_cert_file and otlp_client_key_file go together: give both or neither"
                            .into(),
                    ))
                }
            };
            if let Some(name) = &s.server_name {
                summary.push(format!("tls: server name {name}"));
            }
            Some(TlsMaterial {
                ca,
                identity,
                server_name: s.server_name.clone(),
            })
        } else {
            summary.push("plaintext (http://)".into());
            None
        };

        let mut headers = Vec::new();
        if let Some(path) = &s.headers_file {
            let text = read_text(path, true)?;
            let before = headers.len();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = |r: &str| file_err(path, format!("line {}: {r}", i + 1));
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| at("expected `name: value`"))?;
                let name = name.trim().to_ascii_lowercase();
                if name.is_empty()
                    || name.starts_with(':')
                    || name.starts_with("grpc-")
                    || RESERVED_HEADERS.contains(&name.as_str())
                {
                    return Err(at(&format!("header {name:?} cannot be set")));
                }
                let key = AsciiMetadataKey::from_bytes(name.as_bytes())
                    .map_err(|_| at(&format!("{name:?} is not a valid header name")))?;
                let mut value = AsciiMetadataValue::try_from(value.trim()).map_err(|_| {
                    at(&format!(
                        "the value of {name:?} is not a valid header value"
                    ))
                })?;
                value.set_sensitive(true);
                headers.push((key, value));
            }
            summary.push(format!(
                "headers: {} from {}",
                headers.len() - before,
                path.display()
            ));
        }
        let token = match &s.bearer_token_file {
            Some(path) => {
                if headers.iter().any(|(k, _)| k.as_str() == "authorization") {
                    return Err(TransportError::Invalid(format!(
                        "{} sets `authorization` and otlp_bearer_token_file is given: keep one",
                        s.headers_file.as_deref().unwrap_or(Path::new("")).display()
                    )));
                }
                let t = TokenFile::load(path)?;
                summary.push(format!("bearer token from {}", path.display()));
                Some(Arc::new(t))
            }
            None => None,
        };
        if s.compression == Compression::Gzip {
            summary.push("gzip".into());
        }
        Ok(OtlpTransport {
            tls,
            headers: Headers {
                fixed: Arc::new(headers),
                token,
            },
            compression: s.compression,
            summary,
        })
    }

    /// Files, not contents: safe to log.
    pub fn summary(&self) -> String {
        if self.summary.is_empty() {
            return "defaults".into();
        }
        self.summary.join(", ")
    }

    /// The endpoint with its TLS configuration applied. Fails for an
    /// `https://` endpoint whose TLS cannot be set up (no system roots, a
    /// key that does not match its certificate), and for plaintext with
    /// TLS material: never a silent plaintext dial.
    pub fn endpoint(&self, endpoint: &str) -> Result<Endpoint, TransportError> {
        let https = is_https(endpoint)?;
        let ep = Endpoint::from_shared(endpoint.to_owned()).map_err(|source| {
            TransportError::Endpoint {
                endpoint: endpoint.to_owned(),
                source,
            }
        })?;
        let tls = match (https, &self.tls) {
            (false, None) => return Ok(ep),
            (false, Some(_)) => {
                return Err(TransportError::Invalid(format!(
                    "otlp_endpoint {endpoint:?} is plaintext but TLS settings were loaded for it"
                )))
            }
            // An https:// endpoint given without any TLS setting: system roots.
            (true, None) => ClientTlsConfig::new().with_native_roots(),
            (true, Some(m)) => {
                let mut c = ClientTlsConfig::new();
                c = match &m.ca {
                    Some(ca) => c.ca_certificate(ca.clone()),
                    None => c.with_native_roots(),
                };
                if let Some(id) = &m.identity {
                    c = c.identity(id.clone());
                }
                if let Some(name) = &m.server_name {
                    c = c.domain_name(name.clone());
                }
                c
            }
        };
        ep.tls_config(tls).map_err(|source| TransportError::Tls {
            endpoint: endpoint.to_owned(),
            source,
        })
    }

    /// A lazily connecting channel to `endpoint` (TLS as [`Self::endpoint`]),
    /// for a client other than the logs one (the SDK's metric exporter).
    pub fn channel(&self, endpoint: &str) -> Result<Channel, TransportError> {
        Ok(self.endpoint(endpoint)?.connect_lazy())
    }

    /// The headers and bearer token every request carries.
    pub fn headers(&self) -> Headers {
        self.headers.clone()
    }

    /// Whether requests are gzip-compressed.
    pub fn gzip(&self) -> bool {
        self.compression == Compression::Gzip
    }

    /// A lazily connecting client (a collector that is down at start-up is
    /// a degraded sink, not a failed daemon); needs a Tokio runtime.
    pub fn client(&self, endpoint: Endpoint) -> OtlpClient {
        let channel = endpoint.connect_lazy();
        let mut grpc = Grpc::new(InterceptedService::new(channel, self.headers.clone()));
        if self.compression == Compression::Gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        OtlpClient { grpc }
    }
}

/// A collector's error message, fit for logs: an authentication failure's
/// text is withheld, because receivers echo what they were sent
/// (bearertokenauth answers "scheme or token does not match: Bearer <the
/// token>"), and the daemon's logs travel on as `cp` records.
pub fn safe_message(status: &tonic::Status) -> std::borrow::Cow<'_, str> {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            "credential refused (the collector's message is not logged: it may echo the credential)"
                .into()
        }
        _ => status.message().into(),
    }
}

fn is_https(endpoint: &str) -> Result<bool, TransportError> {
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("https://") {
        Ok(true)
    } else if lower.starts_with("http://") {
        Ok(false)
    } else {
        Err(TransportError::Invalid(format!(
            "otlp_endpoint {endpoint:?}: must be an http:// or https:// URL"
        )))
    }
}

/// A secret (key, token, headers) must not be readable or writable by
/// other users; its owner and group are the operator's business.
fn read_file(path: &Path, secret: bool) -> Result<Vec<u8>, TransportError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(file_err(path, "is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if secret && mode & 0o007 != 0 {
        return Err(file_err(
            path,
            format!("holds a secret but other users can access it (mode {mode:04o}): chmod 600 it"),
        ));
    }
    std::fs::read(path).map_err(|e| file_err(path, e.to_string()))
}

fn read_text(path: &Path, secret: bool) -> Result<String, TransportError> {
    String::from_utf8(read_file(path, secret)?).map_err(|_| file_err(path, "is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn credentials_are_refused_over_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "t", "abc\n", 0o600);
        let s = TransportSettings {
            bearer_token_file: Some(token),
            ..Default::default()
        };
        let err = OtlpTransport::load("http://collector:4317", &s).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        let s = TransportSettings {
            ca_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        let err = OtlpTransport::load("http://collector:4317", &s).unwrap_err();
        assert!(err.to_string().contains("plaintext"), "{err}");
    }

    #[test]
    fn a_world_readable_token_is_refused_and_the_token_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "t", "s3cr3t-token", 0o644);
        let s = TransportSettings {
            bearer_token_file: Some(token.clone()),
            ..Default::default()
        };
        let err = OtlpTransport::load("https://collector:4317", &s).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
        let t = OtlpTransport::load("https://collector:4317", &s).unwrap();
        let shown = format!("{t:?} {}", t.summary());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("bearer token from"), "{shown}");
        let sent = sent_headers(&t);
        assert_eq!(
            sent,
            [(
                "authorization".to_string(),
                "Bearer s3cr3t-token".to_string()
            )]
        );
    }

    fn sent_headers(t: &OtlpTransport) -> Vec<(String, String)> {
        let mut h = t.headers.clone();
        let req = h.call(tonic::Request::new(())).unwrap();
        let md = req.metadata().clone().into_headers();
        md.iter()
            .map(|(k, v)| {
                assert!(v.is_sensitive(), "{k} is not marked sensitive");
                (k.to_string(), v.to_str().unwrap().to_string())
            })
            .collect()
    }

    #[test]
    fn a_token_file_with_a_trailing_newline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "t", "abc\n", 0o600);
        let s = TransportSettings {
            bearer_token_file: Some(token),
            ..Default::default()
        };
        let err = OtlpTransport::load("https://c:4317", &s).unwrap_err();
        assert!(err.to_string().contains("empty token"), "{err}");
    }

    #[test]
    fn a_rotated_token_file_is_picked_up_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "t", "one", 0o600);
        let s = TransportSettings {
            bearer_token_file: Some(token.clone()),
            ..Default::default()
        };
        let t = OtlpTransport::load("https://c:4317", &s).unwrap();
        assert_eq!(sent_headers(&t)[0].1, "Bearer one");
        // Rotation writes a new file and renames it over the old one.
        let next = write(dir.path(), "t.new", "two-longer", 0o600);
        std::fs::rename(&next, &token).unwrap();
        assert_eq!(sent_headers(&t)[0].1, "Bearer two-longer");
        // A broken rewrite (world-readable) is refused; the last good token stays.
        let bad = write(dir.path(), "t.bad", "three", 0o644);
        std::fs::rename(&bad, &token).unwrap();
        assert_eq!(sent_headers(&t)[0].1, "Bearer two-longer");
    }

    #[test]
    fn header_files_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "h",
            "# tenant\nX-Scope-OrgID: clawker\n\nx-extra:  a b \n",
            0o600,
        );
        let s = TransportSettings {
            headers_file: Some(ok),
            ..Default::default()
        };
        let t = OtlpTransport::load("https://c:4317", &s).unwrap();
        let got = sent_headers(&t);
        assert_eq!(
            got,
            [
                ("x-scope-orgid".to_string(), "clawker".to_string()),
                ("x-extra".into(), "a b".into())
            ]
        );
        for bad in [
            "no colon here\n",
            "content-type: x\n",
            "grpc-timeout: 1S\n",
            "bad name: x\n",
        ] {
            let p = write(dir.path(), "bad", bad, 0o600);
            let s = TransportSettings {
                headers_file: Some(p),
                ..Default::default()
            };
            let err = OtlpTransport::load("https://c:4317", &s).unwrap_err();
            assert!(err.to_string().contains("line 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn half_an_identity_and_garbage_pem_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", "not pem\n", 0o644);
        let s = TransportSettings {
            client_cert_file: Some(cert.clone()),
            ..Default::default()
        };
        let err = OtlpTransport::load("https://c:4317", &s).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let s = TransportSettings {
            ca_file: Some(cert),
            ..Default::default()
        };
        let err = OtlpTransport::load("https://c:4317", &s).unwrap_err();
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
    }
}
