//! `top`'s model: the last reading, per-agent rates from successive
//! readings, sorting, selection and the current view. No terminal here.

use std::collections::HashMap;
use std::time::Instant;

use crate::api::render::clean;
use crate::api::wire::{AgentState, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Agent,
    Project,
    Open,
    Out,
    In,
    Flows,
    Denials,
}

impl SortKey {
    pub const ALL: [SortKey; 7] = [
        SortKey::Out,
        SortKey::In,
        SortKey::Open,
        SortKey::Flows,
        SortKey::Denials,
        SortKey::Agent,
        SortKey::Project,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Agent => "agent",
            SortKey::Project => "project",
            SortKey::Open => "open",
            SortKey::Out => "out/s",
            SortKey::In => "in/s",
            SortKey::Flows => "flows/s",
            SortKey::Denials => "denied",
        }
    }

    /// Names read best A to Z, figures largest first.
    fn descending(self) -> bool {
        !matches!(self, SortKey::Agent | SortKey::Project)
    }

    fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }
}

/// One agent with its rates (per second, since the previous reading).
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub agent: AgentState,
    pub out_rate: f64,
    pub in_rate: f64,
    pub flow_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Agents,
    /// Drill-down into the agent with this key.
    Detail(String),
}

pub struct App {
    pub rows: Vec<Row>,
    pub state: State,
    pub sort: SortKey,
    pub descending: bool,
    pub selected: usize,
    pub view: View,
    pub error: Option<String>,
    /// Only agents of these projects / with these names (empty: all).
    pub projects: Vec<String>,
    pub agents: Vec<String>,
    prev: HashMap<String, (Instant, u64, u64, u64)>,
}

impl Default for App {
    fn default() -> Self {
        App {
            rows: Vec::new(),
            state: State::default(),
            sort: SortKey::Out,
            descending: true,
            selected: 0,
            view: View::Agents,
            error: None,
            projects: Vec::new(),
            agents: Vec::new(),
            prev: HashMap::new(),
        }
    }
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    // Totals can step back (a flow leaving the kernel table before its
    // record arrives): never show a negative rate.
    now.saturating_sub(before) as f64 / secs
}

/// Text from records reaches the terminal only without control characters
/// (a comm or a DNS name an agent chose must not drive the terminal).
fn sanitize(state: &mut State) {
    for a in &mut state.agents {
        for s in [
            &mut a.key,
            &mut a.agent,
            &mut a.project,
            &mut a.container_name,
            &mut a.container_id,
            &mut a.last_denied,
        ] {
            *s = clean(s);
        }
        for n in &mut a.dns_names {
            *n = clean(n);
        }
    }
    for f in &mut state.open_flows {
        for s in [
            &mut f.key,
            &mut f.agent,
            &mut f.project,
            &mut f.container_name,
            &mut f.l4_proto,
            &mut f.dst_ip,
            &mut f.comm,
            &mut f.exe,
        ] {
            *s = clean(s);
        }
    }
}

impl App {
    /// Fold in a new reading taken at `at`.
    pub fn update(&mut self, mut state: State, at: Instant) {
        sanitize(&mut state);
        let selected_key = self.selected_key();
        let mut prev = HashMap::with_capacity(state.agents.len());
        let wanted = |a: &AgentState| {
            (self.projects.is_empty() || self.projects.contains(&a.project))
                && (self.agents.is_empty() || self.agents.contains(&a.agent))
        };
        self.rows = state
            .agents
            .iter()
            .filter(|a| wanted(a))
            .map(|a| {
                let mut row = Row {
                    agent: a.clone(),
                    ..Default::default()
                };
                if let Some((t, o, i, f)) = self.prev.get(&a.key) {
                    let secs = at.duration_since(*t).as_secs_f64();
                    row.out_rate = rate(a.bytes_out, *o, secs);
                    row.in_rate = rate(a.bytes_in, *i, secs);
                    row.flow_rate = rate(a.flows, *f, secs);
                }
                prev.insert(a.key.clone(), (at, a.bytes_out, a.bytes_in, a.flows));
                row
            })
            .collect();
        self.prev = prev;
        self.state = state;
        self.error = None;
        self.sort_rows();
        // Keep the cursor on the same agent across re-sorts.
        if let Some(k) = selected_key {
            if let Some(i) = self.rows.iter().position(|r| r.agent.key == k) {
                self.selected = i;
            }
        }
        self.clamp();
    }

    fn sort_rows(&mut self) {
        let key = self.sort;
        self.rows.sort_by(|a, b| {
            use std::cmp::Ordering;
            let f = |x: f64, y: f64| x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            let o = match key {
                SortKey::Agent => a.agent.agent.cmp(&b.agent.agent),
                SortKey::Project => a.agent.project.cmp(&b.agent.project),
                SortKey::Open => a.agent.open_flows.cmp(&b.agent.open_flows),
                SortKey::Out => f(a.out_rate, b.out_rate),
                SortKey::In => f(a.in_rate, b.in_rate),
                SortKey::Flows => f(a.flow_rate, b.flow_rate),
                SortKey::Denials => a.agent.denials.cmp(&b.agent.denials),
            };
            let o = if self.descending { o.reverse() } else { o };
            o.then_with(|| a.agent.key.cmp(&b.agent.key))
        });
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    pub fn selected_key(&self) -> Option<String> {
        self.rows.get(self.selected).map(|r| r.agent.key.clone())
    }

    /// The key whose last records the next reading should bring.
    pub fn detail_key(&self) -> Option<String> {
        match &self.view {
            View::Detail(k) => Some(k.clone()),
            View::Agents => None,
        }
    }

    pub fn detail_row(&self) -> Option<&Row> {
        let k = self.detail_key()?;
        self.rows.iter().find(|r| r.agent.key == k)
    }

    pub fn next_sort(&mut self) {
        self.sort_by(self.sort.next());
    }

    pub fn sort_by(&mut self, key: SortKey) {
        self.sort = key;
        self.descending = key.descending();
        self.sort_rows();
    }

    pub fn reverse(&mut self) {
        self.descending = !self.descending;
        self.sort_rows();
    }

    pub fn down(&mut self) {
        self.selected += 1;
        self.clamp();
    }

    pub fn up(&mut self) {
        self.selected = self.selected.saturating_sub(1);
    }

    pub fn enter(&mut self) {
        if let Some(k) = self.selected_key() {
            self.view = View::Detail(k);
        }
    }

    pub fn back(&mut self) {
        self.view = View::Agents;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn agent(key: &str, out: u64, flows: u64) -> AgentState {
        AgentState {
            key: key.into(),
            agent: key.into(),
            bytes_out: out,
            flows,
            ..Default::default()
        }
    }

    fn state(agents: Vec<AgentState>) -> State {
        State {
            agents,
            ..Default::default()
        }
    }

    #[test]
    fn rates_from_successive_readings_and_sorting() {
        let mut app = App::default();
        let t = Instant::now();
        app.update(state(vec![agent("a", 0, 0), agent("b", 0, 0)]), t);
        assert!(app.rows.iter().all(|r| r.out_rate == 0.0));
        app.update(
            state(vec![agent("a", 1000, 2), agent("b", 4000, 0)]),
            t + Duration::from_secs(2),
        );
        assert_eq!(app.rows[0].agent.key, "b");
        assert_eq!(app.rows[0].out_rate, 2000.0);
        assert_eq!(app.rows[1].out_rate, 500.0);
        assert_eq!(app.rows[1].flow_rate, 1.0);
        app.next_sort(); // in/s: all equal, by key
        app.next_sort(); // open
        app.next_sort(); // flows/s
        assert_eq!(app.sort, SortKey::Flows);
        assert_eq!(app.rows[0].agent.key, "a");
        app.reverse();
        assert_eq!(app.rows[0].agent.key, "b");
        app.sort_by(SortKey::Agent);
        assert!(!app.descending);
        assert_eq!(app.rows[0].agent.key, "a");
    }

    /// An agent names its process or its DNS query after a terminal escape
    /// sequence: the screen shows a replacement character, the terminal
    /// never gets the ESC.
    #[test]
    fn escape_sequences_from_records_never_reach_the_terminal() {
        use crate::api::wire::OpenFlow;
        use ratatui::backend::TestBackend;
        let evil = "x\x1b]0;pwned\x07\x1b[2J";
        let mut a = agent("k", 0, 0);
        a.agent = evil.into();
        a.last_denied = evil.into();
        a.dns_names = vec![evil.into()];
        let mut app = App::default();
        app.update(
            State {
                agents: vec![a],
                open_flows: vec![OpenFlow {
                    key: "k".into(),
                    comm: evil.into(),
                    exe: evil.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Instant::now(),
        );
        for view in [View::Agents, View::Detail("k".into())] {
            app.view = view;
            let mut term = ratatui::Terminal::new(TestBackend::new(80, 24)).unwrap();
            term.draw(|f| super::super::ui::draw(f, &app)).unwrap();
            let buf = term.backend().buffer();
            assert!(
                buf.content()
                    .iter()
                    .all(|c| !c.symbol().contains(char::is_control)),
                "a control character reached the screen"
            );
            let text: String = buf.content().iter().map(|c| c.symbol()).collect();
            assert!(text.contains("x\u{fffd}]0;pwned"), "{text}");
        }
    }

    #[test]
    fn project_and_agent_filters() {
        let mut app = App {
            projects: vec!["p".into()],
            ..Default::default()
        };
        let mut a = agent("a", 0, 0);
        a.project = "p".into();
        app.update(state(vec![a, agent("b", 0, 0)]), Instant::now());
        assert_eq!(app.rows.len(), 1);
        assert_eq!(app.rows[0].agent.key, "a");
    }

    #[test]
    fn totals_stepping_back_give_zero_not_negative() {
        let mut app = App::default();
        let t = Instant::now();
        app.update(state(vec![agent("a", 500, 0)]), t);
        app.update(state(vec![agent("a", 100, 0)]), t + Duration::from_secs(1));
        assert_eq!(app.rows[0].out_rate, 0.0);
    }

    #[test]
    fn selection_follows_the_agent_and_drills_down() {
        let mut app = App::default();
        let t = Instant::now();
        app.update(state(vec![agent("a", 0, 0), agent("b", 0, 0)]), t);
        app.down();
        let k = app.selected_key().unwrap();
        app.update(
            state(vec![agent("a", 10, 0), agent("b", 0, 0)]),
            t + Duration::from_secs(1),
        );
        assert_eq!(app.selected_key().unwrap(), k);
        app.enter();
        assert_eq!(app.detail_key(), Some(k));
        app.back();
        assert_eq!(app.view, View::Agents);
        app.down();
        app.down();
        assert_eq!(app.selected, 1);
    }
}
