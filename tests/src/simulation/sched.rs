//! A seeded scheduler over the ports: one job task runs at a time, and at
//! every port call (store, ledger, outbox, quota, queue, API) it hands the
//! baton back; the seed decides which parked task goes on next, or whether
//! the driver does something else first (start an invocation, move the
//! clock, crash a task). Everything a job does between two port calls is
//! local to it, so these are the only points where the order of jobs can
//! matter, and the seed visits them in a repeatable order.
//!
//! A task is parked on a one-shot channel; a crash is an abort of the task
//! while it is parked, so it stops exactly at a port call, before the call
//! is made (like a Lambda that died there). Real I/O (SQLite, the simulated
//! API over loopback, DynamoDB Local) happens while a task holds the baton,
//! so its timing cannot change the order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// The seeded generator decisions come from (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x005e_ed0f_5eed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Which simulated task a future belongs to; set by the driver.
pub type TaskId = u64;

tokio::task_local! {
    static TASK: TaskId;
}

/// A parked port call: which task, its call number, what it is about to do.
#[derive(Debug)]
struct Parked {
    label: &'static str,
    resume: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    /// (task, call number) → the parked call.
    parked: BTreeMap<(TaskId, u64), Parked>,
    /// Calls made so far per task (numbers parked calls).
    calls: BTreeMap<TaskId, u64>,
    /// Tasks resumed that have not parked again or ended.
    running: usize,
    /// Every resumption, as (task, label), for the replay check.
    trace_hash: u64,
    steps: u64,
    /// Resumptions per label (what the steps of a run were spent on).
    by_label: BTreeMap<&'static str, u64>,
}

/// The baton: at most one simulated task runs between two port calls.
#[derive(Debug, Default)]
pub struct Sched {
    state: Mutex<State>,
    changed: Notify,
}

impl Sched {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Spawns `fut` as simulated task `id`: it waits to be chosen before
    /// its first step. Counted running from here until it parks, so the
    /// driver's next [`Sched::quiet`] sees it parked.
    pub fn spawn<F>(self: &Arc<Self>, id: TaskId, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use futures::FutureExt;
        self.state.lock().unwrap().running += 1;
        let sched = self.clone();
        tokio::spawn(TASK.scope(id, async move {
            sched.yield_point("start").await;
            let out = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
            sched.ended();
            match out {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }))
    }

    /// A port call is about to be made: park until the driver resumes this
    /// task. Outside a simulated task (the driver, the API server) it
    /// returns at once.
    pub async fn yield_point(&self, label: &'static str) {
        let Ok(task) = TASK.try_with(|t| *t) else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state.lock().unwrap();
            let n = st.calls.entry(task).or_default();
            *n += 1;
            let key = (task, *n);
            st.parked.insert(key, Parked { label, resume: tx });
            st.running = st.running.saturating_sub(1);
        }
        self.changed.notify_one();
        // Aborted while parked: the task ends here, as a crash.
        let _ = rx.await;
    }

    fn ended(&self) {
        {
            let mut st = self.state.lock().unwrap();
            st.running = st.running.saturating_sub(1);
        }
        self.changed.notify_one();
    }

    /// Waits (in real time, briefly) until every resumed task has parked
    /// again or ended. Panics after `limit`: a task blocked on something
    /// only another parked task could give (a lock held across a port
    /// call) would hang the run.
    pub async fn quiet(&self, limit: std::time::Duration) {
        let started = std::time::Instant::now();
        loop {
            let notified = self.changed.notified();
            if self.state.lock().unwrap().running == 0 {
                return;
            }
            if tokio::time::timeout(limit.saturating_sub(started.elapsed()), notified)
                .await
                .is_err()
            {
                panic!("a simulated task neither parked nor ended within {limit:?}");
            }
        }
    }

    /// The parked calls, in a stable order: (task, call, label).
    pub fn parked(&self) -> Vec<(TaskId, u64, &'static str)> {
        self.state
            .lock()
            .unwrap()
            .parked
            .iter()
            .map(|((t, n), p)| (*t, *n, p.label))
            .collect()
    }

    /// Lets task `task`'s parked call go on.
    pub fn resume(&self, task: TaskId) {
        let mut st = self.state.lock().unwrap();
        let key = st.parked.keys().find(|(t, _)| *t == task).copied();
        if let Some(key) = key {
            let parked = st.parked.remove(&key).expect("parked");
            st.running += 1;
            st.steps += 1;
            *st.by_label.entry(parked.label).or_default() += 1;
            let mut h = st.trace_hash ^ key.0.wrapping_mul(0x100_0000_01b3) ^ key.1;
            for b in parked.label.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            st.trace_hash = h;
            let _ = parked.resume.send(());
        }
    }

    /// Forgets a task that is being aborted (its parked call is dropped).
    pub fn forget(&self, task: TaskId) {
        let mut st = self.state.lock().unwrap();
        st.parked.retain(|(t, _), _| *t != task);
    }

    /// Resumptions per label so far.
    pub fn steps_by_label(&self) -> BTreeMap<&'static str, u64> {
        self.state.lock().unwrap().by_label.clone()
    }

    /// A digest of every resumption so far: the same seed gives the same.
    pub fn trace(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.steps, st.trace_hash)
    }
}
