//! `clawker-egress top`: a live per-agent view of the running daemon (its
//! local API's `state`), redrawn once a second and on every key. `q`
//! restores the terminal and exits.

mod app;
mod ui;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::ApiArgs;
use crate::api::client;
use app::{App, View};

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Time between readings (at least 200ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Only agents of this project (repeat for several).
    #[arg(long)]
    pub project: Vec<String>,
    /// Only this agent (repeat for several).
    #[arg(long)]
    pub agent: Vec<String>,
    /// Initial sort column (`s` cycles, `r` reverses).
    #[arg(long, value_enum, default_value = "out")]
    pub sort: app::SortKey,
}

pub fn top(args: &TopArgs) -> Result<()> {
    // A daemon that is not there, or a socket we may not use, is one clear
    // line before the terminal is touched.
    let first = client::state(&args.api.socket, None)?;
    let interval = args.interval.max(Duration::from_millis(200));
    let mut app = App::default();
    app.projects.clone_from(&args.project);
    app.agents.clone_from(&args.agent);
    app.sort_by(args.sort);
    app.update(first, Instant::now());
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, &mut app, args, interval);
    ratatui::restore();
    result
}

fn run(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    args: &TopArgs,
    interval: Duration,
) -> Result<()> {
    let mut next_poll = Instant::now() + interval;
    loop {
        terminal.draw(|f| ui::draw(f, app))?;
        let wait = next_poll.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let detail_before = app.detail_key();
                match key.code {
                    KeyCode::Char('q') => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => app.back(),
                    KeyCode::Enter | KeyCode::Right if app.view == View::Agents => app.enter(),
                    KeyCode::Down | KeyCode::Char('j') => app.down(),
                    KeyCode::Up | KeyCode::Char('k') => app.up(),
                    KeyCode::Char('s') => app.next_sort(),
                    KeyCode::Char('r') => app.reverse(),
                    _ => {}
                }
                // Entering a drill-down fetches its records at once.
                if app.detail_key() != detail_before && app.detail_key().is_some() {
                    next_poll = Instant::now();
                }
            }
            continue;
        }
        next_poll = Instant::now() + interval;
        match client::state(&args.api.socket, app.detail_key()) {
            Ok(state) => app.update(state, Instant::now()),
            Err(e) => app.error = Some(format!("{e:#}")),
        }
    }
}
