//! `clawker-egress observe`: the running daemon's records, filtered by the
//! daemon, one compact line each (or --json: the stdout schema verbatim).
//! A closed stdout (`| head -1`) ends it quietly, exit 0.

use std::io::{BufReader, IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::ApiArgs;
use crate::api::client::{self, Line};
use crate::api::filter::{Filter, FilterSpec};
use crate::api::render;
use crate::api::wire::{Control, Request};

#[derive(Debug, Clone, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only this agent (repeat for several).
    #[arg(long)]
    pub agent: Vec<String>,
    #[arg(long)]
    pub project: Vec<String>,
    /// A container name, or a prefix of its id.
    #[arg(long)]
    pub container: Vec<String>,
    /// ALLOWED, DENIED or BYPASSED.
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Destination: a host glob (*.github.com), an IP address or a CIDR.
    #[arg(long)]
    pub dst: Vec<String>,
    /// Destination port.
    #[arg(long)]
    pub port: Vec<u16>,
    /// Transport: tcp, udp, icmp, raw, packet.
    #[arg(long)]
    pub proto: Vec<String>,
    /// Application protocol: dns, unknown.
    #[arg(long)]
    pub l7: Vec<String>,
    /// Record stream: egress, overseer, exec, cp.
    #[arg(long)]
    pub source: Vec<String>,
    /// First the records of this recent past (e.g. 5m), from the daemon's
    /// history (by default the last 4,096 records / 5 minutes).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// First the last N matching records from the daemon's history.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep following new records (the default without --since/--last).
    #[arg(long, overrides_with = "no_follow")]
    pub follow: bool,
    /// Stop after the history (the default with --since/--last).
    #[arg(long)]
    pub no_follow: bool,
    /// JSON lines, exactly the daemon's stdout schema.
    #[arg(long)]
    pub json: bool,
}

impl ObserveArgs {
    fn spec(&self) -> FilterSpec {
        FilterSpec {
            agent: self.agent.clone(),
            project: self.project.clone(),
            container: self.container.clone(),
            verdict: self.verdict.clone(),
            dst: self.dst.clone(),
            port: self.port.clone(),
            proto: self.proto.clone(),
            l7: self.l7.clone(),
            source: self.source.clone(),
        }
    }

    fn follows(&self) -> bool {
        match (self.follow, self.no_follow) {
            (true, _) => true,
            (_, true) => false,
            _ => self.since.is_none() && self.last.is_none(),
        }
    }

    fn request(&self) -> Result<Request> {
        // Validate here so a typo is one clear line before connecting.
        let spec = Filter::compile(self.spec())?.spec().clone();
        Ok(Request::Subscribe {
            filter: Box::new(spec),
            since_ms: self
                .since
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            last: self.last,
            follow: self.follows(),
        })
    }
}

pub fn observe(args: &ObserveArgs) -> Result<()> {
    let request = args.request()?;
    let mut reader = client::request(&args.api.socket, &request)?;
    let stdout = std::io::stdout();
    let colour = !args.json && stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    match stream(&mut reader, &mut out, args.json, colour, args.follows()) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn stream(
    reader: &mut BufReader<impl Read>,
    out: &mut impl Write,
    json: bool,
    colour: bool,
    follow: bool,
) -> Result<()> {
    let mut buf = String::new();
    loop {
        let line = client::next_line(reader, &mut buf, !json)?;
        match line {
            None => {
                out.flush().context("write to stdout")?;
                if follow {
                    bail!("the daemon closed the connection (stopped?)");
                }
                return Ok(());
            }
            Some(Line::Record(raw, value)) => {
                if json {
                    out.write_all(raw.as_bytes()).context("write to stdout")?;
                } else {
                    out.write_all(render::line(&value, colour).as_bytes())
                        .context("write to stdout")?;
                }
                out.write_all(b"\n").context("write to stdout")?;
            }
            Some(Line::Control(Control::Lost { lost })) => {
                out.flush().context("write to stdout")?;
                eprintln!("clawker-egress observe: {lost} records dropped for this client (it read too slowly)");
            }
            Some(Line::Control(Control::HistoryEnd { .. })) => {
                if !follow {
                    out.flush().context("write to stdout")?;
                    return Ok(());
                }
            }
            Some(Line::Control(Control::Error { error })) => {
                return Err(anyhow!("daemon: {error}"));
            }
            Some(Line::Control(Control::State(_))) => bail!("unexpected state line in a stream"),
        }
        // Flush when nothing more is waiting: prompt, yet one write per burst.
        if reader.buffer().is_empty() {
            out.flush().context("write to stdout")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ObserveArgs,
    }

    fn parse(args: &[&str]) -> ObserveArgs {
        T::parse_from(std::iter::once("observe").chain(args.iter().copied())).a
    }

    #[test]
    fn follow_defaults() {
        assert!(parse(&[]).follows());
        assert!(!parse(&["--last", "5"]).follows());
        assert!(!parse(&["--since", "5m"]).follows());
        assert!(parse(&["--since", "5m", "--follow"]).follows());
        assert!(!parse(&["--no-follow"]).follows());
    }

    #[test]
    fn flags_become_the_request() {
        let a = parse(&[
            "--agent", "a", "--agent", "b", "--port", "443", "--since", "2s",
        ]);
        match a.request().unwrap() {
            Request::Subscribe {
                filter,
                since_ms,
                follow,
                ..
            } => {
                assert_eq!(filter.agent, vec!["a", "b"]);
                assert_eq!(filter.port, vec![443]);
                assert_eq!(since_ms, Some(2000));
                assert!(!follow);
            }
            r => panic!("{r:?}"),
        }
        assert!(parse(&["--dst", "1.2.3.4/40"]).request().is_err());
    }

    #[test]
    fn stream_prints_records_and_reports_losses() {
        let input = concat!(
            r#"{"@timestamp":"2026-11-30T12:00:00.000Z","clawker.source":"egress","verdict":"ALLOWED"}"#,
            "\n",
            r#"{"api":"lost","lost":3}"#,
            "\n",
            r#"{"api":"history_end","records":1}"#,
            "\n",
        );
        let mut out = Vec::new();
        stream(
            &mut BufReader::new(input.as_bytes()),
            &mut out,
            true,
            false,
            false,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with(r#"{"@timestamp""#));
    }
}
