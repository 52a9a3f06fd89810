//! A minimal OTLP/gRPC logs receiver built from `opentelemetry-proto`: it
//! keeps every request so tests can assert the exact LogRecords a daemon
//! sent (the real collector is exercised by tests/stack_e2e).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

#[derive(Clone, Default)]
pub struct Receiver {
    requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl Receiver {
    /// Serve on a free loopback port.
    pub fn serve_any() -> (SocketAddr, Receiver) {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        (addr, Receiver::serve(addr))
    }

    /// Serve on `addr` from a background runtime for the rest of the test.
    pub fn serve(addr: SocketAddr) -> Receiver {
        let r = Receiver::default();
        let svc = r.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(LogsServiceServer::new(svc))
                    .serve(addr)
                    .await
                    .unwrap();
            });
        });
        r
    }

    pub fn records(&self) -> Vec<(LogRecord, Vec<KeyValue>)> {
        let mut out = Vec::new();
        for req in self.requests.lock().unwrap().iter() {
            for rl in &req.resource_logs {
                let resource = rl
                    .resource
                    .clone()
                    .map(|r| r.attributes)
                    .unwrap_or_default();
                for sl in &rl.scope_logs {
                    for lr in &sl.log_records {
                        out.push((lr.clone(), resource.clone()));
                    }
                }
            }
        }
        out
    }

    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[(LogRecord, Vec<KeyValue>)]) -> bool,
    ) -> Vec<(LogRecord, Vec<KeyValue>)> {
        // Generous: the daemon's export retries back off, and a loaded
        // host stretches every step.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let recs = self.records();
            if pred(&recs) {
                return recs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} records",
                recs.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
