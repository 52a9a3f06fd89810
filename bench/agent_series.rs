//! Per-agent series at scale. Prints figures; asserts nothing.
//!
//! 1,000 agent/project pairs (the default cap) each with a typical mix of
//! records (TCP and UDP flows, an interim report, a denial, DNS exchanges,
//! a loss report), then: series on /metrics, scrape body size, encode
//! (scrape) time, records/s through the per-agent counting, and the same at
//! 1,200 pairs (200 past the cap: `_other`).
//!
//! Run: `cargo bench --bench agent_series` (no root needed).

use std::time::{Duration, Instant, SystemTime};

use clawker_egress::detect::AgentLimits;
use clawker_egress::metrics::Metrics;
use clawker_egress::record::{key, Record, Source};

fn flow(agent: &str, proto: &str, verdict: &str, state: &str, host: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress);
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "proj");
    r.set(key::VERDICT, verdict);
    r.set(key::L4_PROTO, proto);
    r.set(key::L7_PROTO, "unknown");
    r.set(key::DST_IP, "10.0.0.1");
    r.set(key::DST_HOST, host);
    r.set(key::DST_PORT, 443u16);
    r.set(key::BYTES_OUT, 1500u64);
    r.set(key::BYTES_IN, 9000u64);
    r.set(key::PACKETS_OUT, 3u64);
    r.set(key::PACKETS_IN, 7u64);
    r.set(key::FLOW_STATE, state);
    r
}

fn dns(agent: &str, qname: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress);
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "proj");
    r.set(key::VERDICT, "ALLOWED");
    r.set(key::L4_PROTO, "udp");
    r.set(key::L7_PROTO, "dns");
    r.set(key::QNAME, qname);
    r.set(key::RCODE, "NOERROR");
    r
}

fn loss(agent: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Overseer);
    r.set(key::EVENT, "records_lost");
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "proj");
    r.set(key::LOST_RATE_LIMITED, 5u64);
    r
}

fn mix(agent: &str, i: usize) -> Vec<Record> {
    vec![
        flow(agent, "tcp", "ALLOWED", "ended", "github.com"),
        flow(agent, "tcp", "ALLOWED", "active", "github.com"),
        flow(agent, "udp", "ALLOWED", "ended", ""),
        flow(
            agent,
            "tcp",
            "DENIED",
            "ended",
            &format!("h{i}.example.com"),
        ),
        dns(agent, "github.com"),
        dns(agent, &format!("{:032x}.t.example.com", i * 7919)),
        loss(agent),
    ]
}

fn run(pairs: usize) {
    let m = Metrics::with_agent_limits(AgentLimits {
        max_pairs: 1000,
        retention: Duration::from_secs(600),
    });
    let records: Vec<Record> = (0..pairs)
        .flat_map(|i| mix(&format!("agent-{i:04}"), i))
        .collect();
    let t0 = Instant::now();
    for r in &records {
        m.agents().observe(r);
    }
    let first = t0.elapsed();
    // Steady state: the same pairs again (series exist).
    let rounds = 20;
    let t0 = Instant::now();
    for _ in 0..rounds {
        for r in &records {
            m.agents().observe(r);
        }
    }
    let steady = t0.elapsed();
    let mut encode_times = Vec::new();
    let mut text = String::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        text = m.encode();
        encode_times.push(t0.elapsed());
    }
    encode_times.sort();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let agent_series = text.lines().filter(|l| l.contains("agent=\"")).count();
    println!(
        "{pairs} pairs: {series} series on /metrics ({agent_series} per-agent, {:.1} per pair), \
         body {} KiB, encode median {:?} (min {:?}, max {:?}); first records {:.0}/s, steady {:.0}/s",
        agent_series as f64 / pairs.min(1000) as f64,
        text.len() / 1024,
        encode_times[encode_times.len() / 2],
        encode_times[0],
        encode_times[encode_times.len() - 1],
        records.len() as f64 / first.as_secs_f64(),
        (records.len() * rounds) as f64 / steady.as_secs_f64(),
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent_series bench: run it with `cargo bench --bench agent_series`");
        return;
    }
    println!("clawker-egress per-agent series bench");
    run(1000);
    run(1200);
}
