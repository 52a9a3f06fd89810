//! OTLP export over each transport: records/s through the real `OtlpSink`
//! (its queue, batching, retry) into a local tonic OTLP receiver, for
//! plaintext, TLS, TLS + client certificate + bearer token, and the same
//! with gzip. Prints figures; asserts only that every record arrived.
//!
//! `cargo bench --bench otlp_transport` (no root needed; needs the openssl
//! CLI for scripts/stack-credentials). Loopback: TLS and gzip cost CPU here,
//! not bandwidth; on a real network gzip trades CPU for bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawker_egress::export::{
    Compression, OtlpOptions, OtlpSink, OtlpTransport, Sink, TransportSettings,
};
use clawker_egress::metrics::Metrics;
use clawker_egress::record::{key, Record, Source};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

const RECORDS: usize = 200_000;
const BATCH: usize = 1_000;

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

#[tonic::async_trait]
impl LogsService for Count {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn flow(i: usize) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress).with_body(format!(
        "ALLOWED tcp python3 -> 127.0.0.1:{}",
        1024 + i % 50_000
    ));
    r.set(key::VERDICT, "ALLOWED");
    r.set(key::HOOK, "connect4");
    r.set(key::L4_PROTO, "tcp");
    r.set(key::SRC_IP, "172.17.0.2");
    r.set(key::SRC_PORT, (40_000 + i % 20_000) as i64);
    r.set(key::DST_IP, "93.184.216.34");
    r.set(key::DST_PORT, 443i64);
    r.set(key::DST_HOST, "example.com");
    r.set(key::COMM, "python3");
    r.set(key::PID, 4242i64);
    r.set(key::CGROUP_ID, 123_456i64);
    r.set(
        key::CONTAINER_ID,
        "0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef",
    );
    r.set(key::AGENT, "agent-a");
    r.set(key::PROJECT, "proj-1");
    r.set(key::BYTES_OUT, (i * 7 % 100_000) as i64);
    r.set(key::BYTES_IN, (i * 13 % 1_000_000) as i64);
    r.set(key::FLOW_STATE, "ended");
    r.set(key::COMMUNITY_ID, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
    r
}

/// A receiver on a free port: plaintext, or TLS requiring the stack CA's
/// client certificates.
async fn receiver(tls: Option<&std::path::Path>) -> (u16, Count) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let count = Count::default();
    let mut b = Server::builder();
    if let Some(pki) = tls {
        let cert = std::fs::read(pki.join("collector.pem")).unwrap();
        let key = std::fs::read(pki.join("collector.key")).unwrap();
        let ca = std::fs::read(pki.join("ca.pem")).unwrap();
        b = b
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(cert, key))
                    .client_ca_root(Certificate::from_pem(ca)),
            )
            .unwrap();
    }
    let svc = LogsServiceServer::new(count.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(16 << 20);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::spawn(async move { b.add_service(svc).serve(addr).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    (port, count)
}

async fn run(name: &str, endpoint: String, settings: TransportSettings, count: Count) {
    let transport = OtlpTransport::load(&endpoint, &settings).expect("transport");
    let mut opts = OtlpOptions::new(endpoint);
    opts.transport = transport;
    opts.queue_records = RECORDS;
    opts.batch_records = BATCH;
    opts.shutdown_grace = Duration::from_secs(300);
    let batches: Vec<Arc<Vec<Record>>> = (0..RECORDS / BATCH)
        .map(|b| Arc::new((0..BATCH).map(|i| flow(b * BATCH + i)).collect()))
        .collect();
    let mut sink = OtlpSink::new(opts, Arc::new(Metrics::new())).expect("sink");
    let start = Instant::now();
    for b in batches {
        sink.send(b).await;
    }
    sink.flush().await;
    let secs = start.elapsed().as_secs_f64();
    let got = count.0.load(Ordering::Relaxed);
    assert_eq!(got as usize, RECORDS, "{name}: records lost");
    println!(
        "{name:<32} {RECORDS} records in {secs:.2} s = {:>8.0} records/s",
        RECORDS as f64 / secs
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("otlp_transport bench: run it with `cargo bench --bench otlp_transport`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack-credentials"),
    )
    .arg(&pki)
    .args(["--names", "localhost,127.0.0.1"])
    .output()
    .expect("scripts/stack-credentials");
    assert!(out.status.success(), "{out:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!(
            "clawker-egress OTLP transport bench ({RECORDS} flow records, batches of {BATCH})"
        );
        let (port, c) = receiver(None).await;
        run(
            "plaintext",
            format!("http://127.0.0.1:{port}"),
            TransportSettings::default(),
            c,
        )
        .await;
        let f = |n: &str| Some(pki.join(n));
        let full = TransportSettings {
            ca_file: f("ca.pem"),
            client_cert_file: f("daemon.pem"),
            client_key_file: f("daemon.key"),
            bearer_token_file: f("daemon.token"),
            ..Default::default()
        };
        let (port, c) = receiver(Some(&pki)).await;
        run(
            "tls+mtls+token",
            format!("https://localhost:{port}"),
            full.clone(),
            c,
        )
        .await;
        let (port, c) = receiver(Some(&pki)).await;
        let gz = TransportSettings {
            compression: Compression::Gzip,
            ..full
        };
        run(
            "tls+mtls+token+gzip",
            format!("https://localhost:{port}"),
            gz,
            c,
        )
        .await;
    });
}
