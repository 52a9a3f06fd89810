//! CPU per record, stage by stage, in this process (issue 12): no kernel,
//! no daemon. Synthetic flow-end events (the records of a connect flood:
//! TCP to a closed loopback port, refused) go through the stages the
//! daemon runs on each, one batch at a time, each stage timed over the
//! whole batch:
//!
//!   decode     ring buffer bytes -> `Event::FlowEnd` (`capture::decode`)
//!   flow       the flow record the flow stage makes of it (the fields
//!              `FlowStage::ended` sets; no kernel map is read here)
//!   record     `Record::from_flow` + `set_process` (`Pipeline::offer`)
//!   attribute  a container's identity on it (`Identity::apply`)
//!   metrics    per-agent counters (`AgentMetrics::observe`)
//!   api        the API hub: history ring and `top` aggregates (`Hub::publish`)
//!   stdout     the JSON line (`Record::write_json`)
//!   otlp       the protobuf `LogRecord`, copied out as the sink queues it
//!   drop       freeing the batch
//!
//! Prints ns per record per stage (the median of ROUNDS batches); asserts
//! nothing. `cargo bench --bench record_cost`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawker_egress::api::{Hub, HubOptions};
use clawker_egress::attribute::Identity;
use clawker_egress::capture::{decode, BootClock, Event};
use clawker_egress::export::RecordEncoder;
use clawker_egress::flow::{FlowRecord, FlowState};
use clawker_egress::kernel::abi;
use clawker_egress::metrics::Metrics;
use clawker_egress::record::Record;

const BATCH: usize = 1000;
const ROUNDS: usize = 200;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("record_cost bench: run it with `cargo bench --bench record_cost`");
        return;
    }
    let clock = BootClock::calibrate();
    let events: Vec<Vec<u8>> = (0..BATCH).map(|i| flow_end_bytes(i as u64)).collect();
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(&HubOptions::default(), metrics.clone());
    let identity = Identity {
        container_id: "4f1c2d3e4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff".into(),
        name: "clawker-ralph-dev".into(),
        image: "ghcr.io/example/agent:latest".into(),
        agent: Some("ralph".into()),
        project: Some("clawker".into()),
    };
    let exe: Arc<str> = Arc::from("/usr/bin/python3.11");
    let mut encoder = RecordEncoder::default();
    let mut line = Vec::with_capacity(512 * BATCH);
    const STAGES: [&str; 9] = [
        "decode",
        "flow",
        "record",
        "attribute",
        "metrics",
        "api",
        "stdout",
        "otlp",
        "drop",
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); STAGES.len()];
    let (mut json_bytes, mut otlp_bytes) = (0, 0);
    for round in 0..ROUNDS + 5 {
        let mut t = Vec::with_capacity(STAGES.len());
        let mut lap = Instant::now();
        let mut mark = |t: &mut Vec<Duration>| {
            let now = Instant::now();
            t.push(now - lap);
            lap = now;
        };
        let ends: Vec<_> = events
            .iter()
            .map(|b| match decode(b, clock) {
                Ok(Event::FlowEnd(end)) => end,
                other => panic!("sample must decode to a flow end: {other:?}"),
            })
            .collect();
        mark(&mut t);
        let flows: Vec<FlowRecord> = ends
            .into_iter()
            .map(|end| FlowRecord {
                dst_host: None,
                state: FlowState::Ended,
                time: clock.to_wall(end.end_ns),
                duration: Duration::from_nanos(end.end_ns.saturating_sub(end.flow.start_ns)),
                delta: end.flow.counters,
                close_reason: Some(end.reason),
                errno: end.sk_err,
                exe: Some(exe.clone()),
                flow: end.flow,
            })
            .collect();
        mark(&mut t);
        let mut records: Vec<Record> = flows
            .iter()
            .map(|f| {
                let mut r = Record::from_flow(f);
                r.set_process(f.flow.tgid, f.flow.proc, f.exe.as_deref());
                r
            })
            .collect();
        drop(flows);
        mark(&mut t);
        for r in &mut records {
            identity.apply(r);
        }
        mark(&mut t);
        for r in &records {
            metrics.agents().observe(r);
        }
        mark(&mut t);
        let batch = Arc::new(records);
        hub.publish(&batch);
        mark(&mut t);
        line.clear();
        for r in batch.iter() {
            r.write_json(&mut line);
            line.push(b'\n');
        }
        json_bytes = line.len() / BATCH;
        mark(&mut t);
        let observed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let encoded: Vec<Vec<u8>> = batch
            .iter()
            .map(|r| encoder.log_record(r, observed).to_vec())
            .collect();
        otlp_bytes = encoded.iter().map(Vec::len).sum::<usize>() / BATCH;
        mark(&mut t);
        drop(encoded);
        drop(batch); // the hub's history still holds it: see `api`
        mark(&mut t);
        if round >= 5 {
            for (i, d) in t.into_iter().enumerate() {
                times[i].push(d);
            }
        }
    }
    println!(
        "record cost per stage ({BATCH}-record batches, median of {ROUNDS}; \
         {json_bytes} bytes/JSON line, {otlp_bytes} bytes/LogRecord):"
    );
    let mut total = 0.0;
    let mut per = Vec::new();
    for (name, mut ds) in STAGES.iter().zip(times) {
        ds.sort();
        let ns = ds[ds.len() / 2].as_nanos() as f64 / BATCH as f64;
        total += ns;
        per.push((name, ns));
        println!("  {name:<10} {ns:>7.0} ns/record");
    }
    let sum = |skip: &str| -> f64 {
        per.iter()
            .filter(|(n, _)| **n != skip)
            .map(|(_, ns)| ns)
            .sum()
    };
    println!(
        "  all stages {total:>7.0} ns/record; stdout path (no otlp) {:.0}, otlp path (no stdout) {:.0}",
        sum("otlp"),
        sum("stdout")
    );
}

/// A flow-end event as the kernel writes it: a refused TCP connect from
/// 127.0.0.1:<ephemeral> to 127.0.0.1:40000.
fn flow_end_bytes(i: u64) -> Vec<u8> {
    let mut ev = abi::flow_end_event::default();
    ev.hdr.kind = abi::event_kind::EVENT_KIND_FLOW_END as u16;
    ev.hdr.size = std::mem::size_of::<abi::flow_end_event>() as u16;
    ev.hdr.version = abi::EGRESS_ABI_VERSION as u8;
    let now = BootClock::now_boot_ns();
    ev.hdr.ts_ns = now;
    ev.key.sock_cookie = 1_000_000 + i;
    ev.key.remote_ip[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.key.remote_port = 40_000;
    ev.key.family = libc::AF_INET as u8;
    ev.key.protocol = libc::IPPROTO_TCP as u8;
    let v = &mut ev.value;
    v.start_ns = now - 40_000;
    v.last_seen_ns = now - 20_000;
    v.cgroup_id = 12_345;
    v.scope_cgroup_id = 12_345;
    v.packets_out = 1;
    v.packets_in = 1;
    v.pid = 4242;
    v.tgid = 4242;
    v.local_ip[..4].copy_from_slice(&[127, 0, 0, 1]);
    v.local_port = 32_768 + (i % 28_000) as u16;
    v.flags = abi::FLOW_F_SYN_SENT as u8;
    for (d, s) in v.comm.iter_mut().zip(b"python3\0") {
        *d = *s as libc::c_char;
    }
    v.process.start_ns = now - 1_000_000_000;
    ev.end_ns = now;
    ev.sk_err = libc::ECONNREFUSED;
    ev.close_reason = abi::close_reason::CLOSE_REFUSED as u8;
    // SAFETY: reading the bytes of a plain repr(C) value.
    unsafe {
        std::slice::from_raw_parts(
            (&ev as *const abi::flow_end_event).cast::<u8>(),
            std::mem::size_of_val(&ev),
        )
    }
    .to_vec()
}
