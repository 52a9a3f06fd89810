//! The Docker source: bollard over the Docker socket. Identity comes from
//! `inspect` (and, for speed, from the attributes Docker puts on each
//! event); addresses only from `NetworkSettings.Networks`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::stream::{BoxStream, StreamExt};

use super::identity::LabelPolicy;
use super::source::{ContainerInfo, ContainerSource, EventKind, RuntimeEvent, SourceError};

const RUNTIME: &str = "docker";
/// Per request; the event stream is only bounded until its headers arrive.
const REQUEST_TIMEOUT_SECS: u64 = 5;

#[derive(Clone)]
pub struct DockerSource {
    socket: String,
    policy: LabelPolicy,
    client: Arc<Mutex<Option<Docker>>>,
}

impl DockerSource {
    pub fn new(socket: impl Into<String>, policy: LabelPolicy) -> Self {
        DockerSource {
            socket: socket.into(),
            policy,
            client: Arc::new(Mutex::new(None)),
        }
    }

    fn client(&self) -> Result<Docker, SourceError> {
        let guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or_else(|| unavailable("not connected"))
    }
}

impl ContainerSource for DockerSource {
    fn runtime(&self) -> &'static str {
        RUNTIME
    }

    async fn ping(&self) -> Result<(), SourceError> {
        let docker =
            Docker::connect_with_unix(&self.socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(classify)?;
        // The engine may be older than bollard's default API version.
        let docker = docker.negotiate_version().await.map_err(classify)?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(docker);
        Ok(())
    }

    async fn running(&self) -> Result<Vec<String>, SourceError> {
        let opts = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let list = self
            .client()?
            .list_containers(Some(opts))
            .await
            .map_err(classify)?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, SourceError> {
        let docker = self.client()?;
        match docker
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(resp) => Ok(info_from_inspect(resp, &self.policy)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    fn events(&self, since_nanos: i64) -> BoxStream<'static, Result<RuntimeEvent, SourceError>> {
        let docker = match self.client() {
            Ok(d) => d,
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        let filters = HashMap::from([(
            "type".to_string(),
            vec!["container".into(), "network".into()],
        )]);
        let opts = EventsOptions {
            since: Some(format!(
                "{}.{:09}",
                since_nanos / 1_000_000_000,
                since_nanos % 1_000_000_000
            )),
            until: None,
            filters: Some(filters),
        };
        let policy = self.policy.clone();
        docker
            .events(Some(opts))
            .filter_map(move |item| {
                let out = match item {
                    Ok(msg) => event_from_message(&msg, &policy).map(Ok),
                    Err(e) => Some(Err(classify(e))),
                };
                std::future::ready(out)
            })
            .boxed()
    }

    /// cgroupfs driver: `/docker/<id>`; systemd driver:
    /// `/system.slice/docker-<id>.scope`. A custom `--cgroup-parent` is
    /// still found from the init process at the start event.
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("docker"), PathBuf::from("system.slice")]
    }
}

fn unavailable(detail: impl Into<String>) -> SourceError {
    SourceError::Unavailable {
        runtime: RUNTIME,
        detail: detail.into(),
    }
}

/// An HTTP answer from the engine is a runtime error; anything else (no
/// socket, refused, timeout, broken stream) means the engine is not there.
fn classify(e: BollardError) -> SourceError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => SourceError::Runtime {
            runtime: RUNTIME,
            detail: format!("{status_code}: {message}"),
        },
        other => unavailable(other.to_string()),
    }
}

/// The parts of `docker inspect` attribution keeps. `Config.Env` and
/// `Config.Cmd` are never read.
pub fn info_from_inspect(
    resp: ContainerInspectResponse,
    policy: &LabelPolicy,
) -> Option<ContainerInfo> {
    let id = resp.id?;
    let config = resp.config.unwrap_or_default();
    let image = config.image.or(resp.image).unwrap_or_default();
    let identity = policy.identity(
        &id,
        resp.name.as_deref().unwrap_or(""),
        &image,
        config.labels.as_ref(),
    );
    let state = resp.state.unwrap_or_default();
    let pid = state
        .pid
        .filter(|p| *p > 0)
        .and_then(|p| u32::try_from(p).ok());
    let mut ips: Vec<IpAddr> = Vec::new();
    for net in resp
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_values()
    {
        for addr in [net.ip_address, net.global_ipv6_address]
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = addr.parse() {
                ips.push(ip);
            }
        }
    }
    ips.sort();
    ips.dedup();
    Some(ContainerInfo {
        identity,
        pid,
        running: state.running.unwrap_or(false),
        ips,
    })
}

/// A Docker event as attribution sees it; `None` for events it ignores.
pub fn event_from_message(msg: &EventMessage, policy: &LabelPolicy) -> Option<RuntimeEvent> {
    let action = msg.action.as_deref()?;
    let actor = msg.actor.as_ref()?;
    let empty = HashMap::new();
    let attrs = actor.attributes.as_ref().unwrap_or(&empty);
    let (kind, container_id) = match msg.typ? {
        EventMessageTypeEnum::CONTAINER => {
            let kind = match action {
                "create" => EventKind::Create,
                "start" => EventKind::Start,
                "die" => EventKind::Die {
                    exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
                },
                "destroy" => EventKind::Destroy,
                "rename" => EventKind::Rename,
                _ => return None,
            };
            (kind, actor.id.clone()?)
        }
        EventMessageTypeEnum::NETWORK if matches!(action, "connect" | "disconnect") => {
            (EventKind::Network, attrs.get("container")?.clone())
        }
        _ => return None,
    };
    let cursor = msg
        .time_nano
        .or_else(|| msg.time.map(|s| s.saturating_mul(1_000_000_000)))
        .unwrap_or(0);
    // Container events carry the container's labels beside name and image.
    let identity = (msg.typ == Some(EventMessageTypeEnum::CONTAINER)
        && policy.readable_from_events())
    .then(|| {
        let name = attrs.get("name")?;
        let image = attrs.get("image")?;
        Some(policy.identity(&container_id, name, image, Some(attrs)))
    })
    .flatten();
    Some(RuntimeEvent {
        kind,
        container_id,
        time: UNIX_EPOCH + Duration::from_nanos(u64::try_from(cursor).unwrap_or(0)),
        cursor,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    /// `docker inspect` of a labelled container on a dual-stack bridge
    /// network, captured from Docker 20.10 (API 1.41) on this project's
    /// machines. Its environment holds `API_TOKEN=s3cr3t`.
    const INSPECT: &str = include_str!("fixtures/docker-20.10-inspect-bridge.json");
    const ID: &str = "88ace1c390b5cc9d6a080995c04b6c20c62a2430b89ce8cd4931a02550be6da9";

    #[test]
    fn inspect_gives_identity_pid_and_every_address() {
        let resp: ContainerInspectResponse = serde_json::from_str(INSPECT).unwrap();
        let info = info_from_inspect(resp, &LabelPolicy::default()).unwrap();
        assert_eq!(info.identity.container_id, ID);
        assert_eq!(info.identity.name, "ce-fixture");
        assert_eq!(info.identity.image, "clawker-egress-test/busybox:1");
        assert_eq!(info.identity.agent.as_deref(), Some("ralph"));
        assert_eq!(info.identity.project.as_deref(), Some("clawker"));
        assert!(info.running);
        assert!(info.pid.is_some_and(|p| p > 1));
        let ips: Vec<String> = info.ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["172.29.0.2", "fd00:c1a:ee::2"]);
        assert!(
            !format!("{info:?}").contains("s3cr3t"),
            "environment never kept"
        );
    }

    fn message(
        typ: EventMessageTypeEnum,
        action: &str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            scope: None,
            time: Some(1_795_435_889),
            time_nano: Some(1_795_435_889_990_550_928),
        }
    }

    #[test]
    fn die_carries_the_exit_code_and_the_identity() {
        let msg = message(
            EventMessageTypeEnum::CONTAINER,
            "die",
            ID,
            &[
                ("exitCode", "137"),
                ("name", "ce-1"),
                ("image", "img:1"),
                ("dev.clawker.agent", "a"),
            ],
        );
        let ev = event_from_message(&msg, &LabelPolicy::default()).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Die {
                exit_code: Some(137)
            }
        );
        assert_eq!(ev.cursor, 1_795_435_889_990_550_928);
        let id = ev.identity.unwrap();
        assert_eq!(
            (id.name.as_str(), id.agent.as_deref(), id.project),
            ("ce-1", Some("a"), None)
        );
    }

    #[test]
    fn network_events_name_the_container_in_attributes() {
        let msg = message(
            EventMessageTypeEnum::NETWORK,
            "connect",
            "netid",
            &[("container", ID), ("name", "bridge")],
        );
        let ev = event_from_message(&msg, &LabelPolicy::default()).unwrap();
        assert_eq!(
            (ev.kind, ev.container_id.as_str(), ev.identity),
            (EventKind::Network, ID, None)
        );
    }

    #[test]
    fn other_events_are_ignored() {
        for action in ["exec_start: sh", "kill", "attach", "resize"] {
            let msg = message(EventMessageTypeEnum::CONTAINER, action, ID, &[]);
            assert_eq!(
                event_from_message(&msg, &LabelPolicy::default()),
                None,
                "{action}"
            );
        }
    }
}
