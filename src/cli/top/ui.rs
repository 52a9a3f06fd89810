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
    let header = TableRow::new([
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
    ])
    .style(Style::new().bold());
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
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().reversed())
        .block(Block::new().borders(Borders::TOP).title(" agents "));
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);

    let lines: Vec<Line> = app
        .state
        .denials
        .iter()
        .rev()
        .take(usize::from(denials_area.height.saturating_sub(1)))
        .map(|r| Line::raw(render::line(r, false)))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .title(" denials (newest first) ")
                .title_style(Style::new().fg(Color::Red)),
        ),
        denials_area,
    );
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
            TableRow::new([
                f.l4_proto.clone(),
                dst,
                format!("{}[{}]", f.comm, f.pid),
                render::bytes(f.bytes_out),
                render::bytes(f.bytes_in),
                format!("{}s", f.age_ms / 1000),
            ])
        });
    let table = Table::new(
        flows,
        [
            Constraint::Length(5),
            Constraint::Min(20),
            Constraint::Length(18),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
        ],
    )
    .header(TableRow::new(["PROTO", "DESTINATION", "PROCESS", "OUT", "IN", "AGE"]).bold())
    .block(Block::new().borders(Borders::TOP).title(" open flows "));
    frame.render_widget(table, flows_area);

    let lines: Vec<Line> = app
        .state
        .recent
        .iter()
        .rev()
        .take(usize::from(recent_area.height.saturating_sub(1)))
        .map(|r| Line::raw(render::line(r, false)))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .title(" last records (newest first) "),
        ),
        recent_area,
    );
}
