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
