//! The job-queue and restart conformance suite: every [`JobQueue`] adapter,
//! driven through [`JobRuntime`], must pass it. SQLite runs on a manual
//! clock; SQS on ministack runs in real time with short delays.

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use chrono::Duration;
use metered::jobs::JobQueue;
use metered::jobs::{JobContext, JobHandler, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind, Outcome};
use metered::quota::{Denied, DenyReason};
use metered::SharedClock;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

type Script = dyn Fn(&JobEnvelope, &SharedClock) -> Outcome + Send + Sync;

/// Every case of the suite, for one adapter: `queue_cases!(make())`. Both adapter
/// test files expand this one list, so no case can be missing from one.
#[macro_export]
macro_rules! queue_cases {
    ($make:expr) => {
        $crate::suite_tests!(
            $crate::queue_suite,
            $make,
            [
                denied_job_waits_its_delay,
                long_wait_is_chained_through_not_before,
                restart_cap_sends_to_dead_letters,
                bad_messages_are_dead_lettered_and_neighbours_succeed,
                redrive_after_max_receives,
                dead_letters_are_redriven_by_choice,
            ]
        );
    };
}

/// A handler whose behaviour is a closure; counts its calls.
pub struct Scripted {
    pub calls: AtomicU32,
    script: Box<Script>,
    clock: SharedClock,
}

impl Scripted {
    pub fn new(
        clock: SharedClock,
        script: impl Fn(&JobEnvelope, &SharedClock) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: AtomicU32::new(0),
            script: Box::new(script),
            clock,
        }
    }
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl JobHandler for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn accepts(&self, kind: JobKind) -> bool {
        kind == JobKind::Spend
    }
    async fn handle(&self, job: &JobEnvelope, _ctx: &JobContext) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (self.script)(job, &self.clock)
    }
}

/// A queue whose `send` fails for bodies containing `when` (a restart that
/// cannot be sent); everything else reaches `inner`.
struct FailingSends {
    inner: Arc<dyn JobQueue>,
    when: &'static str,
}

#[async_trait]
impl JobQueue for FailingSends {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> metered::Result<()> {
        if job.to_body().contains(self.when) {
            return Err(metered::Error::Queue {
                operation: "send",
                message: "injected: the queue refused the send".into(),
                disposition: metered::core::Disposition::Retryable,
            });
        }
        self.inner.send(job, delay_secs).await
    }
    async fn dead_letter(&self, body: &str, reason: &str) -> metered::Result<()> {
        self.inner.dead_letter(body, reason).await
    }
    async fn receive(
        &self,
        max: u32,
        visibility_secs: u32,
    ) -> metered::Result<Vec<metered::jobs::Delivery>> {
        self.inner.receive(max, visibility_secs).await
    }
    async fn ack(&self, receipt: &str) -> metered::Result<()> {
        self.inner.ack(receipt).await
    }
    async fn release(&self, receipt: &str, visible_in_secs: u32) -> metered::Result<()> {
        self.inner.release(receipt, visible_in_secs).await
    }
    async fn dead_letters(&self, max: u32) -> metered::Result<Vec<metered::jobs::DeadLetter>> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(&self, choose: &metered::jobs::Choose<'_>) -> metered::Result<u64> {
        self.inner.redrive(choose).await
    }
}

/// Lets time pass by a number of seconds.
pub type Advance = Box<dyn Fn(f64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A queue under test and a way to let time pass for it.
pub struct Fixture {
    pub queue: Arc<dyn JobQueue>,
    pub clock: SharedClock,
    /// Lets `secs` pass: moves a manual clock, or (real servers) waits.
    pub advance: Advance,
    /// Whether time can jump far (manual clock) or only a few seconds (real).
    pub can_jump: bool,
}

impl Fixture {
    fn runtime(&self, policy: RestartPolicy) -> JobRuntime {
        JobRuntime::new(self.queue.clone(), self.clock.clone(), policy)
    }
}

fn no_jitter(max_restarts: u32) -> RestartPolicy {
    RestartPolicy {
        max_restarts,
        max_jitter_secs: 0,
        ..Default::default()
    }
}

fn job(clock: &SharedClock) -> JobEnvelope {
    JobEnvelope::new(
        JobKind::Spend,
        "org",
        "app",
        serde_json::json!({"calls": 1}),
        clock.now(),
    )
}

/// Receives until `n` messages came or a few empty polls passed.
async fn receive_n(queue: &Arc<dyn JobQueue>, n: usize) -> Vec<metered::jobs::Delivery> {
    let mut out = Vec::new();
    for _ in 0..10 {
        out.extend(queue.receive(10, 30).await.unwrap());
        if out.len() >= n {
            break;
        }
    }
    out
}

pub async fn denied_job_waits_its_delay<F: Future<Output = Fixture>>(make: F) {
    let fx = make.await;
    let rt = fx.runtime(no_jitter(10));
    let handler = Scripted::new(fx.clock.clone(), |job, clock| {
        if job.checkpoint.is_none() {
            Outcome::denied(
                &Denied {
                    retry_at: clock.now() + Duration::seconds(2),
                    reason: DenyReason::Concurrency { max: 3 },
                },
                Some(serde_json::json!({"page": 7})),
            )
        } else {
            assert_eq!(
                job.checkpoint,
                Some(serde_json::json!({"page": 7})),
                "resumes from its checkpoint"
            );
            Outcome::Done
        }
    });
    fx.queue.send(&job(&fx.clock), 0).await.unwrap();
    let d = receive_n(&fx.queue, 1).await;
    assert_eq!(d.len(), 1);
    let settled = rt
        .process(&d[0].body, &handler, &JobContext::default())
        .await;
    assert_eq!(
        settled,
        Settled::Restarted {
            delay_secs: 2,
            reason: DenyReason::Concurrency { max: 3 }.to_string()
        }
    );
    fx.queue.ack(&d[0].receipt).await.unwrap();
    assert!(
        fx.queue.receive(10, 30).await.unwrap().is_empty(),
        "not receivable before its delay"
    );
    (fx.advance)(2.5).await;
    let d = receive_n(&fx.queue, 1).await;
    assert_eq!(d.len(), 1, "receivable after its delay");
    let back = JobEnvelope::parse(&d[0].body).unwrap();
    assert_eq!((back.restarts, back.generation), (1, 1));
    assert_eq!(
        back.last_reason,
        Some(DenyReason::Concurrency { max: 3 }.to_string())
    );
    assert_eq!(
        rt.process(&d[0].body, &handler, &JobContext::default())
            .await,
        Settled::Done
    );
    fx.queue.ack(&d[0].receipt).await.unwrap();
    assert_eq!(handler.calls(), 2);
}

pub async fn long_wait_is_chained_through_not_before<F: Future<Output = Fixture>>(make: F) {
    let fx = make.await;
    let rt = fx.runtime(no_jitter(10));
    let handler = Scripted::new(fx.clock.clone(), |job, clock| {
        if job.restarts == 0 {
            Outcome::wait(
                clock.now() + Duration::seconds(3600),
                "day limit reached",
                None,
            )
        } else {
            Outcome::Done
        }
    });
    let start = fx.clock.now();
    fx.queue.send(&job(&fx.clock), 0).await.unwrap();
    let d = receive_n(&fx.queue, 1).await;
    let settled = rt
        .process(&d[0].body, &handler, &JobContext::default())
        .await;
    assert!(
        matches!(
            settled,
            Settled::Restarted {
                delay_secs: 900,
                ..
            }
        ),
        "{settled:?}"
    );
    fx.queue.ack(&d[0].receipt).await.unwrap();
    assert_eq!(handler.calls(), 1);
    if !fx.can_jump {
        // Real time cannot wait 900 s: check the early-arrival path directly
        // on a copy that arrives now, still 3,600 s early.
        let early = JobEnvelope::parse(&d[0].body).unwrap();
        let mut early_copy = early.clone();
        early_copy.not_before = Some(fx.clock.now() + Duration::seconds(3600));
        let settled = rt
            .process(&early_copy.to_body(), &handler, &JobContext::default())
            .await;
        assert!(
            matches!(
                settled,
                Settled::Restarted {
                    delay_secs: 900,
                    ..
                }
            ),
            "{settled:?}"
        );
        assert_eq!(handler.calls(), 1, "an early arrival does no work");
        assert!(fx.queue.receive(10, 30).await.unwrap().is_empty());
        return;
    }
    let mut hops = 0;
    loop {
        (fx.advance)(900.0).await;
        let d = receive_n(&fx.queue, 1).await;
        assert_eq!(
            d.len(),
            1,
            "the chained job is receivable after each 900 s hop"
        );
        let settled = rt
            .process(&d[0].body, &handler, &JobContext::default())
            .await;
        fx.queue.ack(&d[0].receipt).await.unwrap();
        hops += 1;
        if settled == Settled::Done {
            break;
        }
        assert!(
            matches!(
                settled,
                Settled::Restarted {
                    delay_secs: 900,
                    ..
                }
            ),
            "{settled:?}"
        );
        assert_eq!(handler.calls(), 1, "early arrivals do no work");
        assert!(hops < 10, "the chain never ended");
    }
    assert_eq!(hops, 4, "3,600 s = four hops of 900 s");
    assert_eq!(handler.calls(), 2);
    assert!(fx.clock.now() - start >= Duration::seconds(3600));
}

pub async fn restart_cap_sends_to_dead_letters<F: Future<Output = Fixture>>(make: F) {
    let fx = make.await;
    let rt = fx.runtime(no_jitter(2));
    // Neither a wait nor a moved checkpoint: a loop, which is capped.
    let handler = Scripted::new(fx.clock.clone(), |_, clock| {
        Outcome::resume(clock.now(), "near the deadline", None)
    });
    fx.queue.send(&job(&fx.clock), 0).await.unwrap();
    let mut last = None;
    for _ in 0..3 {
        let d = receive_n(&fx.queue, 1).await;
        assert_eq!(d.len(), 1);
        last = Some(
            rt.process(&d[0].body, &handler, &JobContext::default())
                .await,
        );
        fx.queue.ack(&d[0].receipt).await.unwrap();
    }
    let last = last.unwrap();
    assert!(
        matches!(&last, Settled::DeadLettered { reason } if reason.contains("restart cap of 2") && reason.contains("near the deadline")),
        "{last:?}"
    );
    let dead = fx.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("restart cap of 2"), "{:?}", dead[0]);
    assert_eq!(JobEnvelope::parse(&dead[0].body).unwrap().restarts, 2);
    assert!(fx.queue.receive(10, 30).await.unwrap().is_empty());
}

fn sqs_record(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body.into());
    m
}

pub async fn bad_messages_are_dead_lettered_and_neighbours_succeed<F: Future<Output = Fixture>>(
    make: F,
) {
    let fx = make.await;
    let rt = fx.runtime(no_jitter(10));
    let handler = Scripted::new(fx.clock.clone(), |job, _| {
        match job.payload["then"].as_str() {
            Some("retry") => Outcome::transient("upstream timed out", None),
            _ => Outcome::Done,
        }
    });
    let good = job(&fx.clock);
    let mut flaky = job(&fx.clock);
    flaky.payload = serde_json::json!({"then": "retry"});
    let mut unknown = serde_json::to_value(job(&fx.clock)).unwrap();
    unknown["kind"] = "teleport".into();
    let mut other = job(&fx.clock);
    other.kind = JobKind::Workflow;
    let mut event = SqsEvent::default();
    event.records = vec![
        sqs_record("m-good", &good.to_body()),
        sqs_record("m-junk", "{not json"),
        sqs_record("m-unknown", &unknown.to_string()),
        sqs_record("m-flaky", &flaky.to_body()),
        sqs_record("m-other", &other.to_body()),
        sqs_record("m-empty", ""),
    ];
    // The flaky job's restart cannot be sent: it must come back (it was not
    // re-sent), and only it.
    let rt = JobRuntime {
        queue: Arc::new(FailingSends {
            inner: fx.queue.clone(),
            when: "\"then\":\"retry\"",
        }),
        ..rt
    };
    let response = metered::edge::lambda::handle_sqs_event(&rt, event, &handler, None).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        failed,
        vec!["m-flaky".to_string()],
        "only the job whose restart could not be sent comes back"
    );
    assert_eq!(
        handler.calls(),
        2,
        "the handler saw the good and the flaky job only"
    );
    let mut dead = Vec::new();
    for _ in 0..10 {
        dead.extend(fx.queue.dead_letters(10).await.unwrap());
        if dead.len() >= 4 {
            break;
        }
    }
    let mut reasons: Vec<_> = dead.iter().map(|d| d.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("body is not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown variant `teleport`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not take jobs of kind `workflow`")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| r.contains("not JSON")).count(),
        2,
        "junk and empty body: {reasons:?}"
    );
}

pub async fn redrive_after_max_receives<F: Future<Output = Fixture>>(make: F) {
    let fx = make.await;
    fx.queue.send(&job(&fx.clock), 0).await.unwrap();
    // Fixtures are made with a redrive after 2 receives.
    for attempt in 1..=2 {
        let d = loop {
            let d = fx.queue.receive(10, 1).await.unwrap();
            if !d.is_empty() {
                break d;
            }
            (fx.advance)(0.5).await;
        };
        assert_eq!(d[0].receive_count, attempt);
        (fx.advance)(1.5).await; // visibility timeout passes without an ack
    }
    let mut dead = Vec::new();
    for _ in 0..20 {
        assert!(
            fx.queue.receive(10, 1).await.unwrap().is_empty(),
            "a third delivery must not happen"
        );
        dead = fx.queue.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        (fx.advance)(0.5).await;
    }
    assert_eq!(dead.len(), 1, "moved to the dead-letter queue");
    assert!(JobEnvelope::parse(&dead[0].body).is_ok());
}

/// An operator's redrive: only the dead letters chosen go back (here one
/// org's, though the other org's job has the same id), with the body the
/// choice gives (restarts reset); the rest stay, junk included.
pub async fn dead_letters_are_redriven_by_choice<F: Future<Output = Fixture>>(make: F) {
    let fx = make.await;
    let mut jobs = Vec::new();
    for org in ["acme", "globex"] {
        let mut j = job(&fx.clock);
        j.org = org.into();
        j.id = "job-1".into();
        j.restarts = 7;
        fx.queue
            .dead_letter(&j.to_body(), "restart cap reached")
            .await
            .unwrap();
        jobs.push(j);
    }
    fx.queue
        .dead_letter("{not json", "body is not JSON")
        .await
        .unwrap();
    let acme_only = |d: &metered::jobs::DeadLetter| {
        let mut j = JobEnvelope::parse(&d.body).ok()?;
        (j.org == "acme").then(|| {
            j.restarts = 0;
            j.to_body()
        })
    };
    assert_eq!(fx.queue.redrive(&acme_only).await.unwrap(), 1);
    let back = receive_n(&fx.queue, 1).await;
    assert_eq!(back.len(), 1);
    let j = JobEnvelope::parse(&back[0].body).unwrap();
    assert_eq!(
        (j.org.as_str(), j.id.as_str(), j.restarts),
        ("acme", "job-1", 0)
    );
    assert_eq!(j.payload, jobs[0].payload, "the envelope is intact");
    fx.queue.ack(&back[0].receipt).await.unwrap();
    // The other org's job and the junk are still there, and visible.
    let parseable =
        |d: &metered::jobs::DeadLetter| JobEnvelope::parse(&d.body).ok().map(|j| j.to_body());
    assert_eq!(
        fx.queue.redrive(&parseable).await.unwrap(),
        1,
        "globex's job"
    );
    let back = receive_n(&fx.queue, 1).await;
    assert_eq!(JobEnvelope::parse(&back[0].body).unwrap().org, "globex");
    assert_eq!(JobEnvelope::parse(&back[0].body).unwrap().restarts, 7);
    let mut left = Vec::new();
    for _ in 0..10 {
        left.extend(fx.queue.dead_letters(10).await.unwrap());
        if !left.is_empty() {
            break;
        }
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].reason, "body is not JSON");
}
