//! The OpenSearch client of the commands that read records back
//! (`report`, `policy suggest --from-opensearch`): one set of flags (URL,
//! user, password from a file or the environment, CA), one search call.
//! The password never travels in argv.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct OpenSearchAuth {
    /// HTTP basic auth user; the password comes from --opensearch-password-file
    /// or the OPENSEARCH_PASSWORD environment variable.
    #[arg(long, value_name = "NAME")]
    pub opensearch_user: Option<String>,
    /// File holding the basic auth password (first line).
    #[arg(long, value_name = "FILE")]
    pub opensearch_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify an https URL with (default: the
    /// system's roots).
    #[arg(long, value_name = "FILE")]
    pub opensearch_ca: Option<PathBuf>,
}

/// Where OpenSearch keeps a record key: attributes are mapped under `attributes.`.
pub fn field(k: &str) -> String {
    format!("attributes.{k}")
}

/// A configured client: `search` posts a query to one index or data stream.
pub struct OpenSearch {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
}

impl OpenSearch {
    pub fn new(url: &str, a: &OpenSearchAuth) -> Result<Self> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)));
        if let Some(ca) = &a.opensearch_ca {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: not PEM", ca.display()))?;
            if certs.is_empty() {
                bail!("{}: no certificate in it", ca.display());
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let auth = match &a.opensearch_user {
            None => None,
            Some(user) => {
                let password = match &a.opensearch_password_file {
                    Some(f) => std::fs::read_to_string(f)
                        .with_context(|| format!("read {}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    None => std::env::var("OPENSEARCH_PASSWORD").context(
                        "--opensearch-user needs --opensearch-password-file or OPENSEARCH_PASSWORD",
                    )?,
                };
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
        };
        Ok(OpenSearch {
            base: url.trim_end_matches('/').to_owned(),
            auth,
            agent: config.build().into(),
        })
    }

    /// POST `body` to `{index}/_search`. A missing index or data stream is
    /// `Value::Null` (nothing was recorded), any other failure an error.
    pub fn search(&self, index: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/{index}/_search", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth);
        }
        let mut res = req
            .send(body.to_string())
            .with_context(|| format!("POST {url}"))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .with_context(|| format!("read the answer of {url}"))?;
        if status == 404 {
            return Ok(Value::Null);
        }
        if status != 200 {
            bail!(
                "{url}: HTTP {status}: {}",
                text.chars().take(500).collect::<String>()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn auth(user: Option<&str>, password_file: Option<PathBuf>) -> OpenSearchAuth {
        OpenSearchAuth {
            opensearch_user: user.map(str::to_owned),
            opensearch_password_file: password_file,
            opensearch_ca: None,
        }
    }

    /// The loopback test node has no security plugin, so the header is
    /// checked on a one-shot listener standing in for it (a fake, for what
    /// the real node here cannot ask for).
    #[test]
    fn basic_auth_from_the_password_file_and_no_404_error() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret:x\nignored\n").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for (i, conn) in listener.incoming().take(2).enumerate() {
                let mut conn = conn.unwrap();
                // The whole request (head and body) before answering: an
                // answer and close while the client still sends resets it.
                let mut req = Vec::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = conn.read(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        if n == 0 {
                            break;
                        }
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if n == 0 || req.len() >= end + 4 + length {
                        break;
                    }
                }
                heads.push(String::from_utf8_lossy(&req).into_owned());
                let (status, body) = if i == 0 {
                    ("200 OK", "{\"hits\":{}}")
                } else {
                    ("404 Not Found", "{}")
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            heads
        });
        let os = OpenSearch::new(&url, &auth(Some("reader"), Some(pw))).unwrap();
        assert_eq!(
            os.search("clawker-egress", &serde_json::json!({})).unwrap()["hits"],
            serde_json::json!({})
        );
        assert_eq!(
            os.search("clawker-missing", &serde_json::json!({}))
                .unwrap(),
            Value::Null
        );
        let heads = server.join().unwrap();
        let want = base64::engine::general_purpose::STANDARD.encode("reader:s3cret:x");
        assert!(
            heads[0]
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Basic {want}"))),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].starts_with("POST /clawker-egress/_search "),
            "{}",
            heads[0]
        );
    }

    #[test]
    fn bad_access_settings_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let a = OpenSearchAuth {
            opensearch_ca: Some(ca),
            ..auth(None, None)
        };
        let e = OpenSearch::new("https://127.0.0.1:9", &a).err().unwrap();
        assert!(format!("{e:#}").contains("no certificate"), "{e:#}");
        let e = OpenSearch::new(
            "http://127.0.0.1:9",
            &auth(Some("u"), Some(dir.path().join("absent"))),
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("absent"), "{e:#}");
    }
}
