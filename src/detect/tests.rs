use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use super::*;
use crate::record::{key, Record, Source};

struct Fixture {
    registry: Registry,
    m: AgentMetrics,
}

impl Fixture {
    fn new(max_pairs: usize, retention: Duration) -> Self {
        let mut registry = Registry::with_prefix("clawker_egress");
        let m = AgentMetrics::register(
            &mut registry,
            AgentLimits {
                max_pairs,
                retention,
            },
        );
        Fixture { registry, m }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).unwrap();
        out
    }

    /// The value of the one series whose line starts with `series`.
    fn value(&self, series: &str) -> Option<u64> {
        let text = self.text();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
    }
}

fn flow(agent: &str, verdict: &str, proto: &str, out: u64, dst: &str, state: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress);
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "p");
    r.set(key::VERDICT, verdict);
    r.set(key::L4_PROTO, proto);
    r.set(key::DST_IP, "127.0.0.1");
    r.set(key::DST_HOST, dst);
    r.set(key::BYTES_OUT, out);
    r.set(key::BYTES_IN, 7u64);
    r.set(key::PACKETS_OUT, 2u64);
    r.set(key::PACKETS_IN, 1u64);
    r.set(key::FLOW_STATE, state);
    r
}

fn dns(agent: &str, qname: &str, rcode: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress);
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "p");
    r.set(key::VERDICT, "ALLOWED");
    r.set(key::L4_PROTO, "udp");
    r.set(key::L7_PROTO, "dns");
    r.set(key::DST_IP, "127.0.0.53");
    r.set(key::QNAME, qname);
    r.set(key::RCODE, rcode);
    r
}

fn lifecycle(agent: &str, event: &str, id: &str) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Overseer);
    r.set(key::EVENT, event);
    r.set(key::AGENT, agent);
    r.set(key::PROJECT, "p");
    r.set(key::CONTAINER_ID, id);
    r
}

#[test]
fn each_record_kind_is_counted_for_its_agent() {
    let f = Fixture::new(10, Duration::from_secs(60));
    let now = Instant::now();
    f.m.observe_at(
        &flow("a", "ALLOWED", "tcp", 100, "github.com", "active"),
        now,
    );
    f.m.observe_at(&flow("a", "ALLOWED", "tcp", 50, "github.com", "ended"), now);
    f.m.observe_at(&flow("a", "ALLOWED", "udp", 10, "", "ended"), now);
    let mut denied = flow("a", "DENIED", "tcp", 0, "evil.example", "ended");
    denied.set(key::ENFORCED, false);
    f.m.observe_at(&denied, now);
    f.m.observe_at(&flow("a", "BYPASSED", "family:40", 5, "", "ended"), now);
    f.m.observe_at(&dns("a", "github.com", "NOERROR"), now);
    let tunnel = format!("{}.t.example.com", "ab12".repeat(15));
    f.m.observe_at(&dns("a", &tunnel, "NXDOMAIN"), now);
    f.m.observe_at(&dns("a", "x", "YXDOMAIN"), now);
    let mut forged = dns("a", "github.com", "NOERROR");
    forged.set(key::DNS_REJECTED, "unsolicited");
    f.m.observe_at(&forged, now);
    let mut lost = Record::new(SystemTime::now(), Source::Overseer);
    lost.set(key::EVENT, crate::record::RECORDS_LOST);
    lost.set(key::AGENT, "a");
    lost.set(key::PROJECT, "p");
    lost.set(key::LOST_RATE_LIMITED, 4u64);
    f.m.observe_at(&lost, now);

    let v = |s: &str| f.value(s);
    let a = r#"agent="a",project="p""#;
    // The interim report adds bytes, not a flow.
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_bytes_out_total{{{a},l4_proto=\"tcp\"}}"
        )),
        Some(150)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_bytes_in_total{{{a},l4_proto=\"tcp\"}}"
        )),
        Some(21)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_packets_out_total{{{a},l4_proto=\"udp\"}}"
        )),
        Some(2)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_flows_total{{{a},verdict=\"ALLOWED\",l4_proto=\"tcp\"}}"
        )),
        Some(1)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_flows_total{{{a},verdict=\"DENIED\",l4_proto=\"tcp\"}}"
        )),
        Some(1)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_denials_total{{{a},l4_proto=\"tcp\",enforced=\"false\"}}"
        )),
        Some(1)
    );
    // Unknown socket kinds fold into "other": no new series per family.
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_bypassed_flows_total{{{a},l4_proto=\"other\"}}"
        )),
        Some(1)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_dns_queries_total{{{a},rcode=\"NOERROR\"}}"
        )),
        Some(2)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_dns_answers_rejected_total{{{a},reason=\"unsolicited\"}}"
        )),
        Some(1)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_dns_queries_total{{{a},rcode=\"other\"}}"
        )),
        Some(1)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_dns_suspicious_total{{{a},reason=\"long\"}}"
        )),
        Some(1)
    );
    // github.com, 127.0.0.1 (no name), evil.example.
    assert_eq!(
        v(&format!(
            "clawker_egress_agent_new_destinations_total{{{a}}}"
        )),
        Some(3)
    );
    assert_eq!(
        v(&format!(
            "clawker_egress_container_records_lost_total{{{a},reason=\"rate_limited\"}}"
        )),
        Some(4)
    );
    assert_eq!(v("clawker_egress_agent_series"), Some(1));
}

#[test]
fn a_new_pairs_alert_inputs_start_at_zero() {
    let f = Fixture::new(10, Duration::from_secs(60));
    f.m.observe_at(&lifecycle("n", "container_create", "c9"), Instant::now());
    let a = r#"agent="n",project="p""#;
    for series in [
        format!("clawker_egress_agent_bytes_out_total{{{a},l4_proto=\"tcp\"}}"),
        format!("clawker_egress_agent_denials_total{{{a},l4_proto=\"udp\",enforced=\"true\"}}"),
        format!("clawker_egress_agent_new_destinations_total{{{a}}}"),
        format!("clawker_egress_agent_dns_suspicious_total{{{a},reason=\"encoded\"}}"),
    ] {
        assert_eq!(f.value(&series), Some(0), "{series}\n{}", f.text());
    }
}

#[test]
fn pairs_past_the_cap_are_other_and_counted() {
    let f = Fixture::new(2, Duration::from_secs(60));
    let now = Instant::now();
    for agent in ["a", "b", "c", "d"] {
        f.m.observe_at(&flow(agent, "ALLOWED", "tcp", 10, "h", "ended"), now);
    }
    let mut unlabelled = flow("x", "ALLOWED", "tcp", 1, "h", "ended");
    unlabelled = {
        let mut r = Record::new(unlabelled.time, Source::Egress);
        for (k, v) in unlabelled
            .fields()
            .filter(|(k, _)| *k != key::AGENT && *k != key::PROJECT)
        {
            r.set(k, v.clone());
        }
        r
    };
    f.m.observe_at(&unlabelled, now);
    let text = f.text();
    assert!(
        text.contains(
            r#"clawker_egress_agent_bytes_out_total{agent="a",project="p",l4_proto="tcp"} 10"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"clawker_egress_agent_bytes_out_total{agent="b",project="p",l4_proto="tcp"} 10"#
        ),
        "{text}"
    );
    assert!(!text.contains(r#"agent="c""#), "{text}");
    assert!(text.contains(r#"clawker_egress_agent_bytes_out_total{agent="_other",project="_other",l4_proto="tcp"} 21"#), "{text}");
    assert_eq!(
        f.value("clawker_egress_agent_series_overflow_total"),
        Some(2)
    );
    // Two own pairs plus _other.
    assert_eq!(f.value("clawker_egress_agent_series"), Some(3));
}

#[test]
fn a_gone_containers_series_expire_and_free_the_slot() {
    let retention = Duration::from_secs(60);
    let f = Fixture::new(1, retention);
    let t0 = Instant::now();
    f.m.observe_at(&lifecycle("a", "container_start", "c1"), t0);
    f.m.observe_at(&flow("a", "DENIED", "tcp", 0, "h", "ended"), t0);
    // Still running: idle is not gone.
    f.m.sweep_at(t0 + 10 * retention);
    assert!(f.text().contains(r#"agent="a""#));
    f.m.observe_at(&lifecycle("a", "container_die", "c1"), t0 + 10 * retention);
    f.m.observe_at(
        &lifecycle("a", "container_destroy", "c1"),
        t0 + 10 * retention,
    );
    f.m.sweep_at(t0 + 10 * retention + retention / 2);
    assert!(f.text().contains(r#"agent="a""#), "kept for the retention");
    f.m.sweep_at(t0 + 11 * retention);
    let text = f.text();
    assert!(!text.contains(r#"agent="a""#), "{text}");
    assert_eq!(
        f.value("clawker_egress_agent_series_expired_total"),
        Some(1)
    );
    assert_eq!(f.value("clawker_egress_agent_series"), Some(0));
    // The freed slot goes to the next agent.
    f.m.observe_at(
        &flow("b", "ALLOWED", "tcp", 3, "h", "ended"),
        t0 + 11 * retention,
    );
    assert!(f.text().contains(r#"agent="b""#));
    assert_eq!(
        f.value("clawker_egress_agent_series_overflow_total"),
        Some(0)
    );
}

#[test]
fn bypass_and_policy_mode_gauges() {
    let f = Fixture::new(10, Duration::from_secs(60));
    assert_eq!(
        f.value(r#"clawker_egress_policy_rule_sets{mode="none"}"#),
        Some(1)
    );
    f.m.enforcement().policy_modes(PolicyModes {
        enforce: 3,
        audit: 1,
        none: 0,
    });
    assert_eq!(
        f.value(r#"clawker_egress_policy_rule_sets{mode="audit"}"#),
        Some(1)
    );
    assert_eq!(
        f.value(r#"clawker_egress_policy_rule_sets{mode="none"}"#),
        Some(0)
    );
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let bypass = |event: &str| {
        let mut r = Record::new(at, Source::Overseer);
        r.set(key::EVENT, event);
        r.set(key::CGROUP_ID, 42u64);
        r.set(key::BYPASS_USER, "ops");
        r
    };
    f.m.observe(&bypass("bypass_start"));
    let series = r#"clawker_egress_bypass_started_timestamp_seconds{cgroup_id="42",agent="",project="",user="ops"}"#;
    assert_eq!(f.value(series), Some(1_700_000_000), "{}", f.text());
    f.m.observe(&bypass("bypass_expired"));
    assert_eq!(f.value(series), None, "{}", f.text());
}

#[test]
fn resource_gauges_sum_an_agents_containers_and_go_with_them() {
    use super::resources::Usage;
    let f = Fixture::new(10, Duration::from_secs(60));
    let u = |cpu_usec, memory_bytes| Usage {
        cpu_usec,
        memory_bytes,
        pids: 2,
        io_read_bytes: 10,
        io_write_bytes: 20,
    };
    let a = (Some("a".to_string()), Some("p".to_string()));
    let b = (Some("b".to_string()), Some("p".to_string()));
    let t0 = Instant::now();
    f.m.resources_at(
        &[
            (a.0.clone(), a.1.clone(), u(1_500_000, 100)),
            (a.0.clone(), a.1.clone(), u(500_000, 50)),
            (b.0.clone(), b.1.clone(), u(1, 1)),
        ],
        t0,
    );
    let l = r#"{agent="a",project="p"}"#;
    assert_eq!(
        f.value(&format!("clawker_egress_agent_memory_bytes{l}")),
        Some(150)
    );
    assert_eq!(f.value(&format!("clawker_egress_agent_pids{l}")), Some(4));
    assert_eq!(
        f.value(&format!("clawker_egress_agent_io_write_bytes{l}")),
        Some(40)
    );
    assert!(
        f.text()
            .contains(&format!("clawker_egress_agent_cpu_usage_seconds{l} 2.0")),
        "{}",
        f.text()
    );
    // b's container ended: its gauges go at the next scan, a's stay.
    f.m.resources_at(&[(a.0.clone(), a.1.clone(), u(2_000_000, 100))], t0);
    let text = f.text();
    assert!(
        !text.contains(r#"clawker_egress_agent_pids{agent="b""#),
        "{text}"
    );
    assert_eq!(
        f.value(&format!("clawker_egress_agent_memory_bytes{l}")),
        Some(100)
    );
    // A running container keeps its pair from expiring.
    f.m.resources_at(
        &[(a.0.clone(), a.1.clone(), u(2_000_000, 100))],
        t0 + Duration::from_secs(3600),
    );
    f.m.sweep_at(t0 + Duration::from_secs(3601));
    assert_eq!(f.value(&format!("clawker_egress_agent_pids{l}")), Some(2));
}
