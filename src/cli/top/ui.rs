//! `top`'s screens, drawn with ratatui: the agents table with a denials
//! pane, or one agent's open flows and last records. Fits 80x24.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Table, TableState};
use ratatui::Frame;

use super::app::{App, View};
use crate::api::render;

const KEYS_AGENTS: &str = " q quit  ↑↓ select  ⏎ drill-down  s sort  r reverse ";
const KEYS_DETAIL: &str = " q quit  esc back ";

pub fn draw(frame: &mut Frame, app: &App) {
    let [title, body, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let status = match &app.error {
        Some(e) => Span::styled(format!(" {e}"), Style::new().fg(Color::Red)),
        None => Span::raw(format!(
            " {} agents, {} open flows, sort: {}{}",
            app.rows.len(),
            app.state.open_flows.len(),
            app.sort.name(),
            if app.descending { " ↓" } else { " ↑" }
        )),
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" clawker-egress top ", Style::new().reversed()),
            status,
        ])),
        title,
    );
    match &app.view {
        View::Agents => agents(frame, body, app),
        View::Detail(_) => detail(frame, body, app),
    }
    let help = match app.view {
        View::Agents => KEYS_AGENTS,
        View::Detail(_) => KEYS_DETAIL,
    };
    frame.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::REVERSED)),
        keys,
    );
}

fn rate(bps: f64) -> String {
    render::bytes_short(bps.round() as u64)
}

fn agents(frame: &mut Frame, area: Rect, app: &App) {
    let [table_area, denials_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(7)]).areas(area);
    let rows = app.rows.iter().map(|r| {
        let a = &r.agent;
        let name = if a.agent.is_empty() {
            a.key.as_str()
        } else {
            a.agent.as_str()
        };
        let container = if a.container_name.is_empty() {
            a.container_id.get(..12).unwrap_or(&a.container_id)
        } else {
            a.container_name.as_str()
        };
        let deny = Cell::from(a.denials.to_string()).style(if a.denials > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        });
        TableRow::new([
            Cell::from(name.to_owned()),
            Cell::from(a.project.clone()),
            Cell::from(container.to_owned()),
            Cell::from(a.open_flows.to_string()),
            Cell::from(rate(r.out_rate)),
            Cell::from(rate(r.in_rate)),
            Cell::from(format!("{:.1}", r.flow_rate)),
            deny,
            Cell::from(a.last_denied.clone()),
            Cell::from(a.dns_names.last().cloned().unwrap_or_default()),
        ])
    });
    // 80 columns: 9 gaps, 50 fixed, the rest for the names.
    let widths = [
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Min(15),
        Constraint::Fill(1),
    ];
    let header = [
        "AGENT",
        "PROJECT",
        "CONTAINER",
        "OPEN",
        "OUT/s",
        "IN/s",
        "FL/s",
        "DENY",
        "LAST DENIED",
        "DNS",
    ];
    let table =
        titled_table(rows, widths, header, " agents ").row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);

    newest_first(
        frame,
        denials_area,
        &app.state.denials,
        pane(" denials (newest first) ").title_style(Style::new().fg(Color::Red)),
    );
}

/// A pane under a titled rule.
fn pane(title: &str) -> Block<'_> {
    Block::new().borders(Borders::TOP).title(title)
}

/// A table in a `pane`, its header in bold.
fn titled_table<'a, const N: usize>(
    rows: impl IntoIterator<Item = TableRow<'a>>,
    widths: [Constraint; N],
    header: [&'a str; N],
    title: &'a str,
) -> Table<'a> {
    Table::new(rows, widths)
        .header(TableRow::new(header).bold())
        .block(pane(title))
}

/// Records, newest first, as many as fit below the block's rule.
fn newest_first(frame: &mut Frame, area: Rect, records: &[serde_json::Value], block: Block) {
    let lines: Vec<Line> = records
        .iter()
        .rev()
        .take(usize::from(area.height.saturating_sub(1)))
        .map(|r| Line::raw(render::line(r, false)))
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn detail(frame: &mut Frame, area: Rect, app: &App) {
    let Some(row) = app.detail_row() else {
        frame.render_widget(Paragraph::new(" (agent no longer reported) "), area);
        return;
    };
    let a = &row.agent;
    let [head, flows_area, recent_area] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Percentage(45),
        Constraint::Min(3),
    ])
    .areas(area);
    let summary = vec![
        Line::from(vec![
            Span::styled(
                format!(" {} ", if a.agent.is_empty() { &a.key } else { &a.agent }),
                Style::new().bold(),
            ),
            Span::raw(format!(
                "project {}  container {}",
                if a.project.is_empty() {
                    "-"
                } else {
                    &a.project
                },
                if a.container_name.is_empty() {
                    &a.key
                } else {
                    &a.container_name
                }
            )),
        ]),
        Line::raw(format!(
            " out {}/s in {}/s  flows {} ({:.1}/s)  open {}  denied {}",
            rate(row.out_rate),
            rate(row.in_rate),
            a.flows,
            row.flow_rate,
            a.open_flows,
            a.denials
        )),
        Line::raw(format!(
            " cpu {:.1}%  mem {}  pids {}  dns: {}",
            a.cpu_millicores as f64 / 10.0,
            render::bytes(a.memory_bytes),
            a.pids,
            a.dns_names.join(" ")
        )),
    ];
    frame.render_widget(Paragraph::new(summary), head);

    let flows = app
        .state
        .open_flows
        .iter()
        .filter(|f| f.key == a.key)
        .map(|f| {
            let dst = if f.dst_ip.contains(':') {
                format!("[{}]:{}", f.dst_ip, f.dst_port)
            } else {
                format!("{}:{}", f.dst_ip, f.dst_port)
            };
            // an accepted connection: the peer connected to the container
            let dst = if f.inbound { format!("← {dst}") } else { dst };
            TableRow::new([
                f.l4_proto.clone(),
                dst,
                format!("{}[{}]", f.comm, f.pid),
                f.exe.clone(),
                render::bytes(f.bytes_out),
                render::bytes(f.bytes_in),
                format!("{}s", f.age_ms / 1000),
            ])
        });
    let widths = [
        Constraint::Length(5),
        Constraint::Min(20),
        Constraint::Length(18),
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    let header = ["PROTO", "DESTINATION", "PROCESS", "EXE", "OUT", "IN", "AGE"];
    frame.render_widget(
        titled_table(flows, widths, header, " open flows "),
        flows_area,
    );

    newest_first(
        frame,
        recent_area,
        &app.state.recent,
        pane(" last records (newest first) "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::{AgentState, OpenFlow, State};
    use ratatui::backend::TestBackend;
    use serde_json::json;

    /// Both screens of an agent with open flows, denials and recent records.
    fn screens() -> Vec<String> {
        let record = |dst: &str, verdict: &str| {
            json!({"@timestamp": "2026-11-30T12:00:00Z", "clawker.source": "egress",
                   "verdict": verdict, "l4_proto": "tcp", "dst_ip": dst, "dst_port": 443,
                   "agent": "ralph", "comm": "curl", "pid": 7})
        };
        let mut app = App::default();
        app.update(
            State {
                agents: vec![AgentState {
                    key: "k".into(),
                    agent: "ralph".into(),
                    project: "web".into(),
                    container_name: "clawker.web.ralph".into(),
                    open_flows: 1,
                    denials: 2,
                    last_denied: "10.0.0.9:443".into(),
                    dns_names: vec!["github.com".into()],
                    ..Default::default()
                }],
                open_flows: vec![OpenFlow {
                    key: "k".into(),
                    l4_proto: "tcp".into(),
                    dst_ip: "::1".into(),
                    dst_port: 8443,
                    comm: "git".into(),
                    pid: 42,
                    bytes_out: 3 << 20,
                    age_ms: 5_000,
                    ..Default::default()
                }],
                denials: vec![record("10.0.0.9", "DENIED"), record("10.0.0.8", "DENIED")],
                recent: vec![record("140.82.112.3", "ALLOWED")],
                ..Default::default()
            },
            std::time::Instant::now(),
        );
        [View::Agents, View::Detail("k".into())]
            .into_iter()
            .map(|view| {
                app.view = view;
                let mut term = ratatui::Terminal::new(TestBackend::new(80, 24)).unwrap();
                term.draw(|f| draw(f, &app)).unwrap();
                let buf = term.backend().buffer();
                (0..buf.area.height)
                    .map(|y| {
                        (0..buf.area.width)
                            .map(|x| buf[(x, y)].symbol())
                            .collect::<String>()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect()
    }

    #[test]
    fn both_screens_show_their_tables_and_records_newest_first() {
        let [agents, detail] = <[String; 2]>::try_from(screens()).unwrap();
        for want in [
            " agents ─",
            "AGENT     PROJECT  CONTAINER OPEN",
            "ralph     web      clawker.w 1",
            " denials (newest first) ─",
        ] {
            assert!(agents.contains(want), "{want:?} in\n{agents}");
        }
        let newer = agents.find("10.0.0.8:443").unwrap();
        let older = agents.rfind("→ 10.0.0.9:443").unwrap();
        assert!(newer < older, "newest first:\n{agents}");
        for want in [
            " open flows ─",
            "PROTO DESTINATION",
            "tcp   [::1]:8443",
            "git[42]",
            "3.0MiB",
            "5s",
            " last records (newest first) ─",
            "→ 140.82.112.3:443",
        ] {
            assert!(detail.contains(want), "{want:?} in\n{detail}");
        }
    }
}
