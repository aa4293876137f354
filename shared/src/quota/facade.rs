//! [`Quota`]: what handlers use. It reads the injected clock, lets exempt
//! calls through without the store, asks every level (share, org, app) in
//! turn, remembers recent denials, times wake-ups in waves and tallies
//! usage to write once per invocation.

use super::health::{Health, PausePolicy};
use super::key::QuotaKey;
use super::limits::{Limits, WindowKind};
use super::port::*;
use super::usage::*;
use super::{share, wave};

use crate::core::clock::{SharedClock, Timestamp};
use crate::core::error::{Error, Result};
use crate::core::metrics::{Counter, Metrics};
use chrono::{Duration, NaiveDate, Timelike};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What [`Quota::acquire_levels`] took: the org's grant and the app's,
/// or the refusal of either.
enum Levels {
    /// The org's grant, the app's, and the share's.
    Granted(Box<(Grant, Option<Grant>, Vec<Grant>)>),
    Denied(Denied),
    /// Refused again from this process's recent denial.
    Repeated(Denied),
}

/// Where a process remembers its refusals of one call: under the org, and
/// apart for background work and for each share's kind, so a refusal of
/// one never answers another.
struct Memory {
    /// The org's (or, for background work, the org's background memory).
    org: QuotaKey,
    /// The call's kind, when the limits have shares.
    kind: Option<QuotaKey>,
    /// The call's kind in background work, when both apply.
    background_kind: Option<QuotaKey>,
}

impl Memory {
    fn of(key: &QuotaKey, call: &Call, limits: &Limits, background: bool) -> Self {
        let org = match background {
            true => Quota::background_memory(key),
            false => key.clone(),
        };
        Self {
            kind: limits.has_shares().then(|| Quota::memory_key(key, call)),
            background_kind: (limits.has_shares() && background)
                .then(|| Quota::memory_key(&org, call)),
            org,
        }
    }

    /// Every memory a refusal of this call may be recalled from.
    fn keys<'a>(&'a self, key: &'a QuotaKey) -> impl Iterator<Item = &'a QuotaKey> {
        [
            Some(key),
            Some(&self.org),
            self.kind.as_ref(),
            self.background_kind.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Where a refusal for `reason` is remembered: a share's refusal under
    /// the kind, any other under the org.
    fn for_reason(&self, reason: &DenyReason) -> &QuotaKey {
        match (reason, &self.kind, &self.background_kind) {
            (DenyReason::Share { .. }, _, Some(k)) | (DenyReason::Share { .. }, Some(k), None) => k,
            _ => &self.org,
        }
    }
}

/// One call (or reservation of several) a handler wants to make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Call {
    /// Calls it takes (1, or a reservation's page count).
    pub cost: u32,
    /// The sync or workflow spending it, for the usage report.
    pub source: String,
    /// The endpoint, `METHOD /path`, for the usage report.
    pub endpoint: String,
    /// Calls the platform does not count (e.g. pushes from the app to us).
    pub exempt: bool,
    /// Work nobody waits for at the moment (a scheduled complete
    /// transfer, a bulk run): held to `background_percent` of each window
    /// ([`super::priority`]).
    pub background: bool,
    /// Calls the job still needs in all, when it knows (0: just this
    /// call). A refusal by a window then takes a wake turn of that size
    /// ([`super::wave`]), so a window wakes only as many waiting jobs as it
    /// can finish, not one per call it holds.
    pub work: u32,
}

impl Call {
    /// One call of `source` to `endpoint`.
    pub fn new(source: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            cost: 1,
            source: source.into(),
            endpoint: endpoint.into(),
            exempt: false,
            background: false,
            work: 0,
        }
    }

    /// The job still needs about `calls` calls in all (a lookup batch's
    /// keys, a job's calls left): see [`Call::work`].
    pub fn needing(mut self, calls: u32) -> Self {
        self.work = calls;
        self
    }

    /// The size of the wake turn a refusal of this call takes.
    fn turn(&self) -> u32 {
        self.work.max(self.cost).max(1)
    }

    /// Reserve `cost` calls at once (a transfer with a known page count).
    pub fn reserve(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Marks the call exempt: counted in usage, not in the budget.
    pub fn exempt(mut self) -> Self {
        self.exempt = true;
        self
    }

    /// Marks the call background work when `background` is true
    /// ([`super::priority`]): interactive work goes first.
    pub fn in_background(mut self, background: bool) -> Self {
        self.background = background;
        self
    }
}

/// Permission to make calls, returned by [`Quota::acquire`]. Give it back
/// with [`Quota::release`], saying how many calls were really made.
#[derive(Debug)]
#[must_use = "a permit holds a concurrency lease until released"]
pub struct Permit {
    grant: Option<Grant>,
    /// The app-wide level's grant, when the limits have one.
    app_grant: Option<Grant>,
    /// The grants of the call's share ([`share`]), when shares are set.
    share_grants: Vec<Grant>,
    key: QuotaKey,
    call: Call,
    day: NaiveDate,
    hour: u8,
    granted_at: Timestamp,
}

impl Permit {
    /// A permit of `call` granted at `now`: the org's grant, the app's and
    /// the share's, or none for an exempt call.
    fn new(
        key: &QuotaKey,
        call: Call,
        now: Timestamp,
        grants: Option<(Grant, Option<Grant>, Vec<Grant>)>,
    ) -> Self {
        let (grant, app_grant, share_grants) = match grants {
            Some((grant, app, shares)) => (Some(grant), app, shares),
            None => (None, None, Vec::new()),
        };
        Self {
            grant,
            app_grant,
            share_grants,
            key: key.clone(),
            call,
            day: now.date_naive(),
            hour: now.hour() as u8,
            granted_at: now,
        }
    }

    /// When it was granted: the windows its calls count in are the ones of
    /// this time, however late the calls' answers come back.
    pub(crate) fn granted_at(&self) -> Timestamp {
        self.granted_at
    }
    /// The store's grant; `None` for exempt calls, which took nothing.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }
    /// Calls the permit allows.
    pub fn cost(&self) -> u32 {
        self.call.cost
    }
    /// The endpoint its calls go to.
    pub fn endpoint(&self) -> &str {
        &self.call.endpoint
    }
}

/// Outcome of [`Quota::acquire`].
// A permit is returned once per call and moved, never stored in bulk: boxing
// it would add an allocation to the hot path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; release the permit after the calls.
    Granted(Permit),
    /// Restart at `retry_at`; never sleep.
    Denied(Denied),
}

type UsageKey = (QuotaKey, NaiveDate, String, String, bool);

/// Calls and denials of one usage key, per hour (the total is their sum).
type UsageTally = BTreeMap<u8, HourUse>;

/// What handlers use: a store, the clock, and a usage tally flushed once per
/// invocation.
#[derive(Clone)]
pub struct Quota {
    store: Arc<dyn QuotaStore>,
    clock: SharedClock,
    tally: Arc<Mutex<BTreeMap<UsageKey, UsageTally>>>,
    metrics: Metrics,
    /// Recent denials of this process, per budget (see [`RecentDenial`]).
    denials: Arc<Mutex<std::collections::HashMap<QuotaKey, RecentDenial>>>,
    /// Per wake-slot budget and first window after a refusal, how many
    /// windows this process found full of wake slots ([`wave`]).
    full_waves: Arc<Mutex<std::collections::HashMap<(QuotaKey, Timestamp), u32>>>,
    /// Per budget, how long this process's calls hold a slot and when the
    /// next slot is expected to free for a waiter (see [`Quota::queue_for_slot`]).
    slot_queues: Arc<Mutex<std::collections::HashMap<QuotaKey, SlotQueue>>>,
}

/// The slots of one budget as this process sees them.
#[derive(Debug, Clone, Copy)]
struct SlotQueue {
    /// A moving average of how long a permit was held, in ms.
    hold_ms: f64,
    /// When the next waiter is sent back.
    next_at: Timestamp,
}

/// How long a denial is repeated from memory: short, so another process's
/// release is noticed within it.
pub(crate) const REPEAT_DENIAL_FOR: Duration = Duration::seconds(1);

/// A denial this process received, answered again from memory for a
/// moment instead of asking the store.
///
/// Why: a refused conditional write still costs DynamoDB a write unit, and
/// the messages of one batch, or jobs woken together, ask for the same
/// full budget one after another. A repeat within [`REPEAT_DENIAL_FOR`]
/// (and before its `retry_at`) of a call costing at least as much is
/// refused from here. It only ever refuses, never admits; a release in
/// this process forgets it, and another process's refund is seen within
/// the second. Waits for a concurrency slot are not repeated: any
/// holder's release ends them.
#[derive(Debug, Clone)]
struct RecentDenial {
    cost: u32,
    denied: Denied,
    until: Timestamp,
    /// Wake slots handed out from it so far (the refusal's own turn, then
    /// each repeat's, [`Call::turn`]): a repeat's turn starts there
    /// ([`wave::repeat_at`]), so repeats do not all wake at once, and a
    /// job that needs 100 calls is sent 100 slots after the one before.
    repeats: u64,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota").field("clock", &self.clock).finish()
    }
}

impl Quota {
    /// A quota kept in `store`, on `clock`.
    pub fn new(store: Arc<dyn QuotaStore>, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            tally: Arc::default(),
            metrics: Metrics::new(),
            denials: Arc::default(),
            full_waves: Arc::default(),
            slot_queues: Arc::default(),
        }
    }

    /// The denial to repeat for `cost` calls of `key` at `now`, if a recent
    /// one still stands.
    fn recent_denial(&self, key: &QuotaKey, call: &Call, now: Timestamp) -> Option<(Denied, u64)> {
        let cost = call.cost;
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        match denials.get_mut(key) {
            Some(d) if now < d.until && cost >= d.cost => {
                // This repeat's turn starts after the turns before it.
                let offset = d.repeats;
                d.repeats += u64::from(call.turn());
                Some((d.denied.clone(), offset))
            }
            Some(d) if now >= d.until => {
                denials.remove(key);
                None
            }
            _ => None,
        }
    }

    fn remember_denial(&self, key: &QuotaKey, call: &Call, denied: &Denied, now: Timestamp) {
        let cost = call.cost;
        // A wait for a slot is over when any holder, in any process,
        // releases (or when a contended store lets go): not repeated.
        // (A share's refusal is remembered under its kind's key, see
        // `memory_key`: another kind of the org may still be admitted.)
        if matches!(denied.reason, DenyReason::Concurrency { .. }) {
            return;
        }
        let until = denied.retry_at.min(now + REPEAT_DENIAL_FOR);
        if until <= now {
            return;
        }
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the cheapest denial: it answers the most requests.
        let keep = denials
            .get(key)
            .is_some_and(|d| now < d.until && d.cost <= cost);
        if !keep {
            denials.insert(
                key.clone(),
                RecentDenial {
                    cost,
                    denied: denied.clone(),
                    until,
                    repeats: u64::from(call.turn()),
                },
            );
        }
    }

    /// Capacity of `key` came back in this process: ask the store again.
    /// With `app_level`, the app's level got capacity back too, which
    /// every org of the app may have been refused for.
    fn forget_denials(&self, key: &QuotaKey, app_level: bool) {
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        if app_level {
            denials.retain(|k, _| k.app != key.app);
        } else {
            // The org's own denial and its kinds' (share refusals).
            let kinds = format!("{}{}", key.org, share::SHARE_MARK);
            denials.retain(|k, _| {
                k.app != key.app || (k.org != key.org && !k.org.starts_with(&kinds))
            });
        }
    }

    /// Where a background call's refusals are remembered: apart from the
    /// org's, since a background refusal by a held-back window must not
    /// refuse interactive work (an interactive refusal does refuse
    /// background work: its ceiling is lower). Under the org's share mark,
    /// so a release of the org forgets it too.
    fn background_memory(key: &QuotaKey) -> QuotaKey {
        QuotaKey::new(
            format!("{}{}background", key.org, share::SHARE_MARK),
            &key.app,
        )
    }

    /// Where a refusal of `call` is remembered: a share's refusal under its
    /// kind (the org's other kinds may still be admitted), any other under
    /// the org.
    fn memory_key(key: &QuotaKey, call: &Call) -> QuotaKey {
        QuotaKey::new(
            format!(
                "{}{}denied:{}",
                key.org,
                share::SHARE_MARK,
                share::kind_of(&call.source)
            ),
            &key.app,
        )
    }

    /// Counts calls, denials and the day's burn into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where calls, denials and the burn are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    /// The clock it reads.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Moves a window's refusal on `level` (of `limits`) to a wake slot in
    /// the first window after it that has one ([`wave`]); the slots are
    /// counted under `slots_key`. A bucket's or any other refusal, and any
    /// store error here, leave the refusal as it was.
    async fn wave(
        &self,
        slots_key: QuotaKey,
        limits: &Limits,
        denied: Denied,
        turn: u32,
        now: Timestamp,
    ) -> Denied {
        let DenyReason::Window { window, limit, .. } = &denied.reason else {
            return denied;
        };
        // A job that needs more than a window takes a window to itself.
        let turn = turn.clamp(1, *limit);
        let Some(slots) = wave::slot_limits(*window, *limit) else {
            return denied;
        };
        let len = i64::from(window.secs());
        let spacing = wave::spacing_ms(limits, window.secs());
        let first = denied.retry_at.max(now);
        let memo = (slots_key.clone(), first);
        let mut k = {
            let mut full = self.full_waves.lock().unwrap_or_else(|e| e.into_inner());
            full.retain(|(_, at), _| *at >= now);
            full.get(&memo).copied().unwrap_or(0)
        };
        while k < wave::MAX_WAVES {
            let start = first + Duration::seconds(len * i64::from(k));
            let turn_key = wave::turn_key(&slots_key, start, len);
            match self.store.acquire(&turn_key, &slots, turn, start).await {
                Ok(Acquire::Granted(g)) => {
                    // The turn's first slot sets when it wakes.
                    let slot = g
                        .windows
                        .first()
                        .map_or(u64::from(turn), |w| w.used)
                        .saturating_sub(u64::from(turn));
                    if let Err(e) = self.store.release(&g, turn).await {
                        tracing::debug!(quota = %slots_key, error = %e, "could not release a wake slot's lease; it expires");
                    }
                    self.full_waves
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(memo, k);
                    return Denied {
                        retry_at: wave::wake_at(start, window.secs(), slot, spacing),
                        reason: denied.reason,
                    };
                }
                Ok(Acquire::Denied(_)) => k += 1,
                Err(e) => {
                    tracing::warn!(quota = %slots_key, error = %e, "could not take a wake slot; the job comes back when the window ends");
                    return denied;
                }
            }
        }
        Denied {
            retry_at: first + Duration::seconds(len * i64::from(wave::MAX_WAVES)),
            reason: denied.reason,
        }
    }

    /// Queues a wait for a concurrency slot behind the others this process
    /// sent back: the n-th waiter returns about n × (hold time / slots)
    /// after now, the pace at which slots free, instead of every waiter
    /// polling at the store's hint (a second) and most being refused again.
    /// Before this process has seen a permit held, the hint stands for the
    /// hold time.
    fn queue_for_slot(&self, key: &QuotaKey, max: u32, denied: Denied, now: Timestamp) -> Denied {
        let mut queues = self.slot_queues.lock().unwrap_or_else(|e| e.into_inner());
        // Before any permit was seen held, the store's hint stands for the
        // hold time.
        let hint_ms = (denied.retry_at - now).num_milliseconds().max(1) as f64;
        let q = queues.entry(key.clone()).or_insert(SlotQueue {
            hold_ms: hint_ms,
            next_at: now,
        });
        let spacing = Duration::milliseconds((q.hold_ms / f64::from(max.max(1))).ceil() as i64);
        let at = denied.retry_at.max(q.next_at).max(now + spacing);
        q.next_at = at + spacing;
        Denied {
            retry_at: at,
            reason: denied.reason,
        }
    }

    /// A permit of `key` held since `granted_at` was released at `now`.
    fn note_hold(&self, key: &QuotaKey, granted_at: Timestamp, now: Timestamp) {
        let held = (now - granted_at).num_milliseconds().max(0) as f64;
        let mut queues = self.slot_queues.lock().unwrap_or_else(|e| e.into_inner());
        let q = queues.entry(key.clone()).or_insert(SlotQueue {
            hold_ms: held,
            next_at: now,
        });
        q.hold_ms = 0.8 * q.hold_ms + 0.2 * held;
    }

    /// Gives back whole the grants a refused or failed acquire took on the
    /// way. Logged, not returned: the refusal or error it follows is the
    /// answer, and a grant not given back frees when its lease expires.
    async fn give_back(&self, grants: &[Grant], why: &str) {
        for g in grants {
            if let Err(undo) = self.store.release(g, 0).await {
                tracing::warn!(quota = %g.key, error = %undo, why, "could not give a grant back; its lease expires");
            }
        }
    }

    /// The wake slots of `key`'s refusals (of `part`, for a share).
    fn slots_key(key: &QuotaKey, part: &str) -> QuotaKey {
        QuotaKey::new(
            format!("{}{}wake{part}", key.org, share::SHARE_MARK),
            &key.app,
        )
    }

    /// The share's budgets for `call` ([`share`]): its reserve, else the
    /// unreserved part and its cap; near the end of a fixed window whose
    /// unreserved part refused, another kind's unspent reserve. The grants,
    /// or the refusal naming the share (nothing held then).
    async fn acquire_share(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        call: &Call,
        now: Timestamp,
    ) -> Result<std::result::Result<Vec<Grant>, Denied>> {
        use share::Part;
        let kind = share::kind_of(&call.source);
        if let Some(Acquire::Granted(g)) = self
            .take_part(key, limits, Part::Reserve, kind, call.cost, now)
            .await?
        {
            return Ok(Ok(vec![g]));
        }
        let pool = match self
            .take_part(key, limits, Part::Pool, kind, call.cost, now)
            .await?
        {
            Some(Acquire::Granted(g)) => Some(g),
            None => None,
            Some(Acquire::Denied(d)) => {
                if super::rules::lends_reserve(&d, now) {
                    if let Some(g) = self
                        .borrow_reserve(key, limits, kind, call.cost, now)
                        .await?
                    {
                        return Ok(Ok(vec![g]));
                    }
                }
                let d = match limits.share_part(Part::Pool, kind) {
                    Some(part) => {
                        self.wave(Self::slots_key(key, ":pool"), &part, d, call.turn(), now)
                            .await
                    }
                    None => d,
                };
                return Ok(Err(super::rules::named_for_share(
                    d,
                    kind,
                    "unreserved part",
                )));
            }
        };
        let pool: Vec<Grant> = pool.into_iter().collect();
        match self
            .take_part(key, limits, Part::Cap, kind, call.cost, now)
            .await
        {
            Ok(None) => Ok(Ok(pool)),
            Ok(Some(Acquire::Granted(cap))) => Ok(Ok(pool.into_iter().chain([cap]).collect())),
            Ok(Some(Acquire::Denied(d))) => {
                for g in &pool {
                    self.store.release(g, 0).await?;
                }
                let d = match limits.share_part(Part::Cap, kind) {
                    Some(part) => {
                        let slots = Self::slots_key(key, &format!(":cap:{kind}"));
                        self.wave(slots, &part, d, call.turn(), now).await
                    }
                    None => d,
                };
                Ok(Err(super::rules::named_for_share(d, kind, "cap")))
            }
            Err(e) => {
                self.give_back(&pool, "the share's cap could not be asked")
                    .await;
                Err(e)
            }
        }
    }

    /// `cost` of `kind`'s `part` under `key`; `None` when the limits give
    /// the kind no such part.
    async fn take_part(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        part: share::Part,
        kind: &str,
        cost: u32,
        now: Timestamp,
    ) -> Result<Option<Acquire>> {
        let Some(l) = limits.share_part(part, kind) else {
            return Ok(None);
        };
        if l.check_cost(cost).is_err() {
            return Ok(Some(Acquire::Denied(super::rules::beyond_part(&l, now))));
        }
        let level_key = share::share_key(key, part, kind);
        self.store
            .acquire(&level_key, &l, cost, now)
            .await
            .map(Some)
    }

    /// Another kind's unspent reserve, lent near a fixed window's end.
    async fn borrow_reserve(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        kind: &str,
        cost: u32,
        now: Timestamp,
    ) -> Result<Option<Grant>> {
        for other in limits.shares.keys().filter(|k| k.as_str() != kind) {
            let taken = self
                .take_part(key, limits, share::Part::Reserve, other, cost, now)
                .await?;
            if let Some(Acquire::Granted(g)) = taken {
                tracing::info!(quota = %key, kind, lender = %other, "near the window's end: another kind's unspent reserve is lent");
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// The org's level, then the app's: both granted, or nothing held.
    /// Two atomic steps, not one: while the second is asked, the first
    /// holds its calls (a moment of over-counting the org, never of
    /// over-admitting either level), and a refusal by the app's level
    /// gives the org's grant back whole.
    async fn acquire_levels(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        call: &Call,
        now: Timestamp,
    ) -> Result<Levels> {
        let cost = call.cost;
        // The share first, then the org: a call the org's budget holds has
        // passed its share, so the org's count is never raised, even for a
        // moment, by a call its share then refuses (that would refuse
        // another kind's call against its reserve). A share's budget may be
        // held a moment by a call the org then refuses (a concurrency
        // slot): only calls of the same kind or the unreserved part see it.
        let shared = if limits.has_shares() {
            match self.acquire_share(key, limits, call, now).await? {
                Ok(grants) => grants,
                Err(d) => return Ok(Levels::Denied(d)),
            }
        } else {
            Vec::new()
        };
        let mut grant = match self.store.acquire(key, limits, cost, now).await {
            Ok(Acquire::Granted(g)) => g,
            Ok(Acquire::Denied(d)) => {
                self.give_back(&shared, "the org refused").await;
                let d = match d.reason {
                    DenyReason::Concurrency { max } => self.queue_for_slot(key, max, d, now),
                    _ => {
                        self.wave(Self::slots_key(key, ""), limits, d, call.turn(), now)
                            .await
                    }
                };
                return Ok(Levels::Denied(d));
            }
            Err(e) => {
                self.give_back(&shared, "the org's acquire failed").await;
                return Err(e);
            }
        };
        for g in &shared {
            grant.valid_until = grant.valid_until.min(g.valid_until);
        }
        match &limits.app_wide {
            None => Ok(Levels::Granted(Box::new((grant, None, shared)))),
            Some(app) => self.acquire_app(key, app, call, now, grant, shared).await,
        }
    }

    /// The app's level, for a call the org (`grant`) and its share
    /// (`shared`) granted: all three, or nothing held.
    async fn acquire_app(
        &self,
        key: &QuotaKey,
        app: &Limits,
        call: &Call,
        now: Timestamp,
        mut grant: Grant,
        shared: Vec<Grant>,
    ) -> Result<Levels> {
        let app_grant = match app.check_cost(call.cost) {
            Ok(()) => {
                self.store
                    .acquire(&key.app_level(), app, call.cost, now)
                    .await
            }
            Err(e) => Err(e),
        };
        match app_grant {
            Ok(Acquire::Granted(mut app_grant)) => {
                // Calls must be made before either level's window ends.
                let until = grant.valid_until.min(app_grant.valid_until);
                grant.valid_until = until;
                app_grant.valid_until = until;
                Ok(Levels::Granted(Box::new((grant, Some(app_grant), shared))))
            }
            Ok(Acquire::Denied(d)) => {
                tracing::info!(quota = %key, reason = %d.reason, "the app-wide level refused (every org of the app shares it)");
                for g in std::iter::once(&grant).chain(&shared) {
                    self.store.release(g, 0).await?;
                }
                let slots = Self::slots_key(&key.app_level(), "");
                let d = self.wave(slots, app, d, call.turn(), now).await;
                Ok(Levels::Denied(super::rules::app_wide(d)))
            }
            Err(e) => {
                self.give_back(std::slice::from_ref(&grant), "the app level failed")
                    .await;
                self.give_back(&shared, "the app level failed").await;
                Err(e)
            }
        }
    }

    /// Asks for `call.cost` calls, of the org's limits and, when they have
    /// one, the app's level. Exempt calls are granted without a store
    /// round trip.
    pub async fn acquire(&self, key: &QuotaKey, limits: &Limits, call: Call) -> Result<Admission> {
        let now = self.clock.now();
        if call.exempt {
            return Ok(Admission::Granted(Permit::new(key, call, now, None)));
        }
        limits.check_cost(call.cost)?;
        // Background work is held back ([`super::priority`]), and its
        // refusals are remembered apart from the org's.
        let written = limits;
        let held_back = (call.background && limits.background_percent < 100)
            .then(|| limits.for_background(now, call.cost));
        let limits = held_back.as_ref().unwrap_or(written);
        let memory = Memory::of(key, &call, limits, held_back.is_some());
        let levels = match self.recall(key, limits, &call, &memory, now) {
            Some(denied) => Levels::Repeated(denied),
            None => self.acquire_levels(key, limits, &call, now).await?,
        };
        let (day, hour) = (now.date_naive(), now.hour() as u8);
        match levels {
            Levels::Granted(granted) => {
                let (grant, app_grant, share_grants) = *granted;
                tracing::debug!(quota = %key, cost = call.cost, lease = %grant.lease_id, "quota granted");
                self.report_burn(key, written, &grant);
                let grants = (grant, app_grant, share_grants);
                Ok(Admission::Granted(Permit::new(
                    key,
                    call,
                    now,
                    Some(grants),
                )))
            }
            Levels::Repeated(denied) => Ok(self.refuse(key, call, day, hour, denied)),
            Levels::Denied(mut denied) => {
                if denied.reason == DenyReason::Blocked {
                    // Paused, or the API's Retry-After? One read, on a
                    // denial only, so the job's wait names the right cause.
                    if let Ok(health) = self.store.health(key).await {
                        if health.paused_at(now) {
                            denied.reason = DenyReason::Paused {
                                health: health.describe(now),
                            };
                        }
                    }
                }
                if held_back.is_some() {
                    super::priority::lent_at(
                        written.background_percent,
                        &mut denied,
                        call.cost,
                        now,
                    );
                }
                self.remember_denial(memory.for_reason(&denied.reason), &call, &denied, now);
                Ok(self.refuse(key, call, day, hour, denied))
            }
        }
    }

    /// A refusal this process made a moment ago, repeated without asking
    /// the store, its wake time a turn later for every repeat.
    fn recall(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        call: &Call,
        memory: &Memory,
        now: Timestamp,
    ) -> Option<Denied> {
        let (mut denied, repeats) = memory
            .keys(key)
            .find_map(|k| self.recent_denial(k, call, now))?;
        tracing::debug!(quota = %key, cost = call.cost, "denied again from this process's recent denial; no store request");
        if let DenyReason::Window { window, limit, .. }
        | DenyReason::Share { window, limit, .. }
        | DenyReason::AppWide { window, limit, .. } = &denied.reason
        {
            denied.retry_at = wave::repeat_at(
                denied.retry_at,
                *window,
                *limit,
                repeats,
                wave::spacing_ms(limits, window.secs()),
            );
        }
        Some(denied)
    }

    /// The day's burn rate, for the early-burn metric.
    fn report_burn(&self, key: &QuotaKey, written: &Limits, grant: &Grant) {
        let day_limit = written.windows().find(|(w, _)| *w == WindowKind::Day);
        let day_used = grant.windows.iter().find(|w| w.kind == WindowKind::Day);
        if let (Some((_, limit)), Some(taken)) = (day_limit, day_used) {
            self.metrics
                .burn(&key.app, &key.org, &taken.id, taken.used, limit);
        }
    }

    /// Counts and reports a refusal (from the store or repeated).
    fn refuse(
        &self,
        key: &QuotaKey,
        call: Call,
        day: NaiveDate,
        hour: u8,
        denied: Denied,
    ) -> Admission {
        tracing::info!(quota = %key, cost = call.cost, reason = %denied.reason, retry_at = %denied.retry_at, "quota denied");
        let counter = match &denied.reason {
            DenyReason::Window {
                window: WindowKind::Day,
                ..
            } => Counter::DenialsDayLimit,
            DenyReason::Window {
                window: WindowKind::Hour,
                ..
            } => Counter::DenialsHourLimit,
            DenyReason::Window {
                window: WindowKind::Minute,
                ..
            } => Counter::DenialsMinuteLimit,
            // Other windows by their length: the metric's three
            // names are what the alarms know.
            DenyReason::Window {
                window: WindowKind::Span(span),
                ..
            } => match span.secs {
                86_400.. => Counter::DenialsDayLimit,
                3_600.. => Counter::DenialsHourLimit,
                _ => Counter::DenialsMinuteLimit,
            },
            // A bucket refills in seconds: a short wait, like a
            // minute's.
            DenyReason::Window {
                window: WindowKind::Bucket(_),
                ..
            } => Counter::DenialsMinuteLimit,
            DenyReason::Concurrency { .. } => Counter::DenialsConcurrency,
            DenyReason::Blocked | DenyReason::Paused { .. } => Counter::DenialsBlocked,
            DenyReason::Share { window, .. } | DenyReason::AppWide { window, .. } => {
                match window.secs() {
                    86_400.. => Counter::DenialsDayLimit,
                    3_600.. => Counter::DenialsHourLimit,
                    _ => Counter::DenialsMinuteLimit,
                }
            }
        };
        self.metrics.add(&key.app, &key.org, counter, 1);
        self.tally(
            (key.clone(), day, call.source, call.endpoint, false),
            hour,
            HourUse {
                calls: 0,
                denied: 1,
                waited: u64::from(matches!(denied.reason, DenyReason::Concurrency { .. })),
            },
        );
        Admission::Denied(denied)
    }

    /// Returns the permit: `used` calls were made (at most its cost); the
    /// rest is refunded. Usage is tallied, not written: call
    /// [`Quota::flush_usage`] once per invocation.
    pub async fn release(&self, permit: Permit, used: u32) -> Result<()> {
        self.release_forfeiting(permit, used, 0).await
    }

    /// Like [`Quota::release`], when the API's own count said `forfeited`
    /// of the reserved calls are gone (another client of the org spent
    /// them): those are kept in the window, not refunded, and reported as
    /// `spent elsewhere`. Without this a reservation that masked the API's
    /// count while it was out would refund calls the API no longer allows.
    pub(crate) async fn release_forfeiting(
        &self,
        permit: Permit,
        used: u32,
        forfeited: u32,
    ) -> Result<()> {
        let used = used.min(permit.call.cost);
        let forfeited = forfeited.min(permit.call.cost - used);
        if permit.grant.is_some() && used + forfeited < permit.call.cost {
            // Calls come back: the next request asks. (A release that
            // refunds nothing frees only a concurrency slot, and waits for
            // a slot are never remembered.)
            self.forget_denials(&permit.key, permit.app_grant.is_some());
        }
        if let Some(grant) = &permit.grant {
            self.note_hold(&permit.key, permit.granted_at, self.clock.now());
            self.store.release(grant, used + forfeited).await?;
            // The slot is free: the runtime hands it to a parked job when
            // this one ends.
            crate::core::freed::note_slot_freed();
        }
        if let Some(grant) = &permit.app_grant {
            self.store.release(grant, used + forfeited).await?;
        }
        for grant in &permit.share_grants {
            self.store.release(grant, used + forfeited).await?;
        }
        if forfeited > 0 {
            self.tally_elsewhere(&permit.key, permit.day, permit.hour, u64::from(forfeited));
        }
        if used > 0 {
            self.metrics.add(
                &permit.key.app,
                &permit.key.org,
                Counter::CallsMade,
                u64::from(used),
            );
            self.tally(
                (
                    permit.key.clone(),
                    permit.day,
                    permit.call.source.clone(),
                    permit.call.endpoint.clone(),
                    permit.call.exempt,
                ),
                permit.hour,
                HourUse {
                    calls: u64::from(used),
                    ..HourUse::default()
                },
            );
        }
        Ok(())
    }

    /// Calls the API counted that metered did not make, as usage source
    /// [`SPENT_ELSEWHERE`].
    fn tally_elsewhere(&self, key: &QuotaKey, day: NaiveDate, hour: u8, calls: u64) {
        self.tally(
            (
                key.clone(),
                day,
                SPENT_ELSEWHERE.to_string(),
                "-".to_string(),
                false,
            ),
            hour,
            HourUse {
                calls,
                ..HourUse::default()
            },
        );
    }

    fn tally(&self, key: UsageKey, hour: u8, add: HourUse) {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally
            .entry(key)
            .or_default()
            .entry(hour)
            .or_default()
            .add(add);
    }

    /// The API reported `spent` calls in the current `kind` window, counting
    /// every client of the org: raises metered's count to it (never lower;
    /// the caller clamps to the limit) and reports the difference as
    /// `spent elsewhere` in the usage.
    pub(crate) async fn raise_from_api(
        &self,
        key: &QuotaKey,
        kind: WindowKind,
        spent: u64,
        at: Timestamp,
    ) -> Result<u64> {
        let target = kind.counter_for(spent, at);
        let raised = self.store.raise_window(key, &kind.id(at), target).await?;
        // A bucket's counter is a time: what was below the clock counted
        // nothing, so at most `spent` calls are added.
        let added = kind.calls_in(raised.min(target.saturating_sub(kind.counter_for(0, at))));
        if added > 0 {
            tracing::info!(quota = %key, window = %kind, added, api_count = spent, "the API counts calls metered did not make (another client of the org); the quota takes them");
            self.tally_elsewhere(key, at.date_naive(), at.hour() as u8, added);
        }
        Ok(added)
    }

    /// Extends a permit's lease for a long call.
    pub async fn renew(&self, permit: &Permit, by: Duration) -> Result<()> {
        for grant in permit
            .grant
            .iter()
            .chain(&permit.app_grant)
            .chain(&permit.share_grants)
        {
            self.store.renew(grant, self.clock.now() + by).await?;
        }
        Ok(())
    }

    /// The API refused the connection's credential (401/403): counts it
    /// ([`Health::after_auth_failure`], one compare-and-swap, retried) and,
    /// when that pauses the connection, blocks the org until the pause
    /// ends. Returns the health after it.
    pub(crate) async fn auth_failed(
        &self,
        key: &QuotaKey,
        reason: &str,
        policy: PausePolicy,
    ) -> Result<Health> {
        let now = self.clock.now();
        self.update_health(key, |old| Some(old.after_auth_failure(reason, now, policy)))
            .await
    }

    /// A sync run ended in the dead-letter queue: counts it
    /// ([`Health::after_run_failure`]); the same failure `after_runs` runs
    /// in a row pauses the connection.
    pub(crate) async fn run_failed(
        &self,
        key: &QuotaKey,
        reason: &str,
        after_runs: u32,
    ) -> Result<Health> {
        let now = self.clock.now();
        self.update_health(key, |old| {
            Some(old.after_run_failure(reason, now, after_runs))
        })
        .await
    }

    /// A sync run completed: forgets runs that failed before it (one read;
    /// a write only when there was something to forget).
    pub(crate) async fn run_succeeded(&self, key: &QuotaKey) -> Result<Health> {
        self.update_health(key, Health::after_run_success).await
    }

    /// Applies `change` to the connection's health (compare-and-swap,
    /// retried); a new pause blocks the org until it ends and is counted.
    async fn update_health(
        &self,
        key: &QuotaKey,
        change: impl Fn(&Health) -> Option<Health>,
    ) -> Result<Health> {
        let now = self.clock.now();
        for _ in 0..8 {
            let old = self.store.health(key).await?;
            let Some(new) = change(&old) else {
                return Ok(old);
            };
            if !self.store.swap_health(key, &old, &new).await? {
                continue;
            }
            if new.paused_at(now) && new.paused_until != old.paused_until {
                tracing::error!(quota = %key, until = ?new.paused_until, failures = new.failures, failed_runs = new.failed_runs, reason = new.reason.as_deref().unwrap_or(""), "connection paused");
                self.metrics
                    .add(&key.app, &key.org, Counter::ConnectionsPaused, 1);
            }
            if let Some(until) = new.paused_until.filter(|u| *u > now) {
                self.store.block_until(key, until).await?;
            }
            return Ok(new);
        }
        Err(Error::store(
            "connection health",
            "too many writers at once",
            crate::core::error::Disposition::Retryable,
        ))
    }

    /// The API said 429 / Retry-After: nobody of this org/app calls before `until`.
    pub async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> Result<()> {
        tracing::warn!(quota = %key, until = %until, "API asked us to back off");
        self.store.block_until(key, until).await
    }

    /// Writes the tallied usage in one store call. On failure the tally is
    /// kept for the next flush, so usage is not lost.
    pub async fn flush_usage(&self) -> Result<()> {
        let entries: Vec<UsageEntry> = {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *tally)
                .into_iter()
                .map(|((key, day, source, endpoint, exempt), hours)| UsageEntry {
                    key,
                    day,
                    source,
                    endpoint,
                    exempt,
                    calls: hours.values().map(|h| h.calls).sum(),
                    hours,
                })
                .collect()
        };
        if entries.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.record_usage(&entries).await {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            for u in entries {
                let hours = tally
                    .entry((u.key, u.day, u.source, u.endpoint, u.exempt))
                    .or_default();
                for (h, n) in u.hours {
                    hours.entry(h).or_default().add(n);
                }
            }
            return Err(e);
        }
        Ok(())
    }
}
