//! `metered run`'s status in real time, read once a second: per
//! organization, the day's calls against its budget, the tightest other
//! window, calls in flight, jobs done and dead since start and jobs waiting
//! now; and the next job due. One updating line on a terminal, a plain line
//! whenever something changed otherwise, a JSON event per change with
//! `--json`.

use metered::core::Counter;
use metered::edge::local::LocalRunner;
use metered::quota::WindowKind;
use metered::JobKind;
use metered::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;

/// One window's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowUse {
    /// Which window.
    pub window: WindowKind,
    /// Calls counted in it.
    pub used: u64,
    /// Its limit.
    pub limit: u32,
}

/// One organization's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgStatus {
    pub org: String,
    /// The day window, if the app has one.
    pub today: Option<WindowUse>,
    /// The tightest shorter window (hour or minute), if any.
    pub window: Option<WindowUse>,
    /// Calls in flight (live concurrency leases).
    pub in_flight: u32,
    /// Until when the API's `Retry-After` blocks the org.
    pub blocked_until: Option<Timestamp>,
    /// Until when the connection is paused because the API keeps refusing
    /// its credential (`metered connections` says why, `--resume` lifts it).
    pub paused_until: Option<Timestamp>,
    /// Jobs finished since the run started.
    pub done: u64,
    /// Jobs dead-lettered since the run started.
    pub dead: u64,
    /// Restarts since the run started.
    pub restarts: u64,
    /// Jobs waiting or in flight now.
    pub waiting: u64,
    /// The latest problem since the run started (a transient failure such
    /// as an unreachable API, a dead letter), so a failing run says why.
    pub last_problem: Option<String>,
}

/// The next job to become due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextDue {
    pub kind: JobKind,
    pub org: String,
    pub at: Timestamp,
}

/// Everything the status line shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunStatus {
    pub at: Timestamp,
    pub orgs: Vec<OrgStatus>,
    pub next_due: Option<NextDue>,
}

impl RunStatus {
    /// Reads the runner's quota, counters and queues for `orgs` at `now`.
    pub async fn read(
        runner: &LocalRunner,
        orgs: &[String],
        now: Timestamp,
    ) -> metered::core::Result<Self> {
        let svc = &runner.svc;
        let counted = svc.metrics.peek();
        let app = &svc.config.app.name;
        let mut waiting: BTreeMap<String, u64> = BTreeMap::new();
        let mut next_due: Option<NextDue> = None;
        for kind in JobKind::QUEUED {
            let Some(q) = runner.queue(kind) else {
                continue;
            };
            for (org, n, at) in q.waiting_by_org().await? {
                *waiting.entry(org.clone()).or_default() += n;
                if next_due.as_ref().is_none_or(|d| at < d.at) {
                    next_due = Some(NextDue { kind, org, at });
                }
            }
        }
        let mut out = Vec::new();
        for org in orgs {
            let limits = svc.limits(org);
            let state = svc.quota.store().state(&svc.key(org), &limits, now).await?;
            let uses: Vec<WindowUse> = limits
                .windows()
                .map(|(window, limit)| WindowUse {
                    window,
                    used: state.used.get(&window.id(now)).copied().unwrap_or(0),
                    limit,
                })
                .collect();
            let today = uses.iter().find(|u| u.window == WindowKind::Day).cloned();
            // The shorter window closest to its limit.
            let window = uses
                .iter()
                .filter(|u| u.window != WindowKind::Day)
                .max_by(|a, b| {
                    (a.used * u64::from(b.limit.max(1))).cmp(&(b.used * u64::from(a.limit.max(1))))
                })
                .cloned();
            let health = svc.quota.store().health(&svc.key(org)).await?;
            let paused_until = health.paused_until.filter(|_| health.paused_at(now));
            out.push(OrgStatus {
                org: org.clone(),
                paused_until,
                today,
                window,
                in_flight: state.live_leases,
                blocked_until: state.blocked_until.filter(|t| *t > now),
                done: counted.count(app, org, Counter::JobsDone),
                dead: counted.count(app, org, Counter::DeadLetters),
                restarts: counted.count(app, org, Counter::Restarts),
                waiting: waiting.get(org).copied().unwrap_or(0),
                last_problem: counted.problem(app, org).map(str::to_string),
            });
        }
        Ok(Self {
            at: now,
            orgs: out,
            next_due,
        })
    }

    /// Whether anything but the time differs from `other`.
    pub fn same_as(&self, other: &RunStatus) -> bool {
        self.orgs == other.orgs && self.next_due == other.next_due
    }

    /// One line a person reads, e.g.
    /// `14:02:07 acme 120/2500 today, hour 12/100, 1 in flight, 30 done 2 waiting 0 dead | next: action-http (acme) in 4m`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for o in &self.orgs {
            let mut p = o.org.clone();
            if let Some(t) = &o.today {
                p.push_str(&format!(" {}/{} today", t.used, t.limit));
            }
            if let Some(w) = &o.window {
                p.push_str(&format!(", {} {}/{}", w.window, w.used, w.limit));
            }
            p.push_str(&format!(", {} in flight", o.in_flight));
            match (o.paused_until, o.blocked_until) {
                (Some(p_until), _) => p.push_str(&format!(
                    ", PAUSED until {} (credential refused: `metered connections`)",
                    p_until.format("%H:%M:%S")
                )),
                (None, Some(b)) => p.push_str(&format!(", blocked until {}", b.format("%H:%M:%S"))),
                (None, None) => {}
            }
            p.push_str(&format!(
                ", {} done {} waiting {} dead",
                o.done, o.waiting, o.dead
            ));
            if o.restarts > 0 {
                p.push_str(&format!(" ({} restarts)", o.restarts));
            }
            if let Some(problem) = &o.last_problem {
                p.push_str(&format!(", last: {problem}"));
            }
            parts.push(p);
        }
        format!(
            "{} {} | {}",
            self.at.format("%H:%M:%S"),
            parts.join(" | "),
            self.next(false)
        )
    }

    /// The next due job, in full or short.
    fn next(&self, short: bool) -> String {
        match (&self.next_due, short) {
            (None, _) => "nothing waiting".to_string(),
            (Some(d), false) if d.at <= self.at => format!("next: {} ({}) now", d.kind, d.org),
            (Some(d), false) => {
                format!("next: {} ({}) in {}", d.kind, d.org, human(d.at - self.at))
            }
            (Some(d), true) if d.at <= self.at => format!("next {} now", d.kind),
            (Some(d), true) => format!("next {} {}", d.kind, human(d.at - self.at)),
        }
    }

    /// [`RunStatus::line`] fitted to `width` characters (a terminal's): the
    /// full line when it fits; otherwise each organization in short (the
    /// day's budget, what is wrong, its latest problem or else its waiting
    /// jobs) with the problems cut to share what is left, so every org and
    /// the next job stay in view.
    pub fn fit(&self, width: usize) -> String {
        let full = self.line();
        if full.chars().count() <= width {
            return full;
        }
        let heads: Vec<String> = self
            .orgs
            .iter()
            .map(|o| {
                let mut p = o.org.clone();
                if let Some(t) = &o.today {
                    p.push_str(&format!(" {}/{}", t.used, t.limit));
                }
                if o.paused_until.is_some() {
                    p.push_str(" PAUSED");
                } else if o.blocked_until.is_some() {
                    p.push_str(" blocked");
                }
                if o.dead > 0 {
                    p.push_str(&format!(" {} dead", o.dead));
                }
                if o.last_problem.is_none() {
                    p.push_str(&format!(" {} waiting", o.waiting));
                }
                p
            })
            .collect();
        let next = self.next(true);
        let fixed =
            next.chars().count() + heads.iter().map(|h| h.chars().count() + 3).sum::<usize>();
        let problems = self
            .orgs
            .iter()
            .filter(|o| o.last_problem.is_some())
            .count();
        let share = width.saturating_sub(fixed) / problems.max(1);
        let parts: Vec<String> = heads
            .into_iter()
            .zip(&self.orgs)
            .map(|(h, o)| match &o.last_problem {
                // The cause, without the attempt count the full line has.
                Some(p) if share > 8 => {
                    let cause = p.split_once("): ").map_or(p.as_str(), |(_, c)| c);
                    format!("{h}: {}", cut(cause, share - 2))
                }
                _ => h,
            })
            .collect();
        cut(&format!("{} | {next}", parts.join(" | ")), width)
    }
}

/// `text` cut to `max` characters, ending in `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `45s`, `4m`, `2h05m`, `3d04h`.
fn human(d: chrono::Duration) -> String {
    // Rounded up: a job due in 0.4 s is due in 1s, not "0s".
    let s = (d.num_milliseconds().max(0) + 999) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_line_says_budget_window_flight_jobs_and_next() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 14, 2, 7)
            .unwrap();
        let org = |name: &str, used: u64| OrgStatus {
            org: name.into(),
            today: Some(WindowUse {
                window: WindowKind::Day,
                used,
                limit: 2500,
            }),
            window: Some(WindowUse {
                window: WindowKind::Hour,
                used: 12,
                limit: 100,
            }),
            in_flight: 1,
            blocked_until: None,
            paused_until: None,
            done: 30,
            dead: 0,
            restarts: 0,
            waiting: 2,
            last_problem: None,
        };
        let status = RunStatus {
            at,
            orgs: vec![org("acme", 120), org("globex", 7)],
            next_due: Some(NextDue {
                kind: JobKind::ActionHttp,
                org: "acme".into(),
                at: at + chrono::Duration::minutes(4),
            }),
        };
        assert_eq!(
            status.line(),
            "14:02:07 acme 120/2500 today, hour 12/100, 1 in flight, 30 done 2 waiting 0 dead \
             | globex 7/2500 today, hour 12/100, 1 in flight, 30 done 2 waiting 0 dead \
             | next: action-http (acme) in 4m"
        );
        let mut later = status.clone();
        later.at = at + chrono::Duration::seconds(1);
        assert!(later.same_as(&status), "only the time moved");
        later.orgs[1].done += 1;
        assert!(!later.same_as(&status));
        later.orgs[1].paused_until = Some(at + chrono::Duration::minutes(15));
        assert!(
            later.line().contains(
                "globex 7/2500 today, hour 12/100, 1 in flight, PAUSED until 14:17:07 (credential refused: `metered connections`)"
            ),
            "{}",
            later.line()
        );
        // At 80 columns every org and the next job stay in view, with the
        // last problem cut to fit (the full line was cut by the terminal).
        later.orgs[0].last_problem = Some(
            "transient failure (attempt 2 of 5): GET /v1/invoices: connection refused (os error 111)"
                .into(),
        );
        assert!(later.line().len() > 80);
        let fitted = later.fit(80);
        assert!(fitted.chars().count() <= 80, "{fitted}");
        for part in [
            "acme 120/2500",
            "globex 7/2500 PAUSED",
            "next action-http 3m",
        ] {
            assert!(fitted.contains(part), "{part} in {fitted}");
        }
        let wider = later.fit(110);
        assert!(wider.chars().count() <= 110, "{wider}");
        assert!(
            wider.contains("acme 120/2500: GET /v1/invoices: connection"),
            "{wider}"
        );
        assert_eq!(status.fit(200), status.line(), "the full line when it fits");
        assert_eq!(human(chrono::Duration::seconds(7_500)), "2h05m");
        assert_eq!(
            human(chrono::Duration::seconds(3 * 86_400 + 4 * 3600)),
            "3d04h"
        );
    }
}
