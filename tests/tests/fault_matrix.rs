//! The fault matrix: each fault against the job kind it hits, on both
//! adapter sets, in the two-org scenario of `metered_tests::scenario`. One
//! row per case; every row must read 0 lost, 0 doubled, 0 over budget — or
//! show the work in the dead-letter queue with a reason that names it.
//!
//! Print the table:
//!
//! ```sh
//! cargo nextest run -p metered-tests --test fault_matrix --no-capture
//! ```

use futures::StreamExt;
use metered::core::Disposition;
use metered::JobKind;
use metered_tests::faults::Fault;
use metered_tests::lost_responses::{dynamodb_client, Losses};
use metered_tests::scenario;
use metered_tests::sync_world::{Adapter, World, ORGS};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
enum Inject {
    None,
    At(&'static str, JobKind, u64, Fault),
    /// The API answers the next N calls with 500.
    Api5xx(u32),
    /// The API answers the next N calls with 429 and a Retry-After.
    Api429(u32),
    /// DynamoDB applies these UpdateItems twice (their responses are lost
    /// and the SDK sends them again). AWS adapter set only.
    UpdateItemTwice(&'static [u32]),
    /// Hostile mode: this percentage of all API calls fails (500, 502 and
    /// 503 without Retry-After, bodies not JSON, cut short, dropped).
    ApiFailing(u32),
    /// An invoice without an id, one over 400 KB, a VIP without the name
    /// its action needs ([`scenario::add_bad_records`]).
    BadRecords,
    /// The API throttles every call for a minute, saying `Retry-After: 0`.
    RetryAfterZero,
    /// The API throttles every call for a minute with an `X-RateLimit-Reset`
    /// 10 s behind its clock (no `Retry-After`).
    PastReset,
    /// Customers are transferred too, and their cursor listing never ends:
    /// empty pages with new cursors after the last record.
    EmptyPagesNewCursors,
    /// A VIP customer's `score` is `null`: the `vip` condition
    /// (`record.score < 30`) cannot judge it.
    NullCondition,
    /// The note goes to `/notes/{{ record.name }}` and one VIP's name is
    /// `../../admin/x?force=1#`.
    HostilePathValue,
    /// The first `POST /notes` is answered `307` to another path; the
    /// operator then fixes it and redrives the dead letter.
    Redirect,
    /// Every push holding one VIP's row is refused (`422` naming it).
    RefusedRow,
    /// Org A's key is revoked after its 20th call; a day later the key is
    /// fixed and the connection resumed.
    RevokedMidDay,
}

const RETRYABLE: Fault = Fault::Fail(Disposition::Retryable);
const PERMANENT: Fault = Fault::Fail(Disposition::Permanent);

const CASES: &[(&str, Inject)] = &[
    ("no fault", Inject::None),
    (
        "store error on commit",
        Inject::At("store.commit", JobKind::CompleteTransfer, 2, RETRYABLE),
    ),
    (
        "crash after claims, before commit",
        Inject::At("store.commit", JobKind::CompleteTransfer, 2, Fault::Crash),
    ),
    (
        "store error on lookup claim",
        Inject::At(
            "store.claim_lookups",
            JobKind::CompleteTransfer,
            1,
            RETRYABLE,
        ),
    ),
    (
        "crash right after a lookup claim",
        Inject::At(
            "store.claim_lookups.after",
            JobKind::PkLookup,
            1,
            Fault::Crash,
        ),
    ),
    (
        "quota store error mid-transfer",
        Inject::At("quota.acquire", JobKind::CompleteTransfer, 2, RETRYABLE),
    ),
    (
        "quota store error on lookup",
        Inject::At("quota.acquire", JobKind::PkLookup, 1, RETRYABLE),
    ),
    (
        "quota release fails after the call",
        Inject::At("quota.release", JobKind::ActionHttp, 1, RETRYABLE),
    ),
    (
        "follow-up send fails",
        Inject::At("queue.send", JobKind::CompleteTransfer, 3, RETRYABLE),
    ),
    (
        "action enqueue fails",
        Inject::At("queue.send", JobKind::Workflow, 1, RETRYABLE),
    ),
    (
        "crash after settle, before ack",
        Inject::At("queue.ack", JobKind::PkLookup, 1, Fault::Crash),
    ),
    (
        "ledger claim fails",
        Inject::At("ledger.claim", JobKind::Workflow, 1, RETRYABLE),
    ),
    (
        "crash after the send, before settle",
        Inject::At("ledger.settle", JobKind::CompleteTransfer, 1, Fault::Crash),
    ),
    (
        "crash after the call, before the mark",
        Inject::At("actions.finish", JobKind::ActionHttp, 1, Fault::Crash),
    ),
    (
        "crash after a chunk is fixed, before the push",
        Inject::At(
            "outbox.begin.after",
            JobKind::ActionDatasourcePush,
            1,
            Fault::Crash,
        ),
    ),
    (
        "crash after a push, before its rows leave",
        Inject::At("outbox.ack", JobKind::ActionDatasourcePush, 1, Fault::Crash),
    ),
    (
        "outbox write fails",
        Inject::At("outbox.put", JobKind::Workflow, 1, RETRYABLE),
    ),
    (
        "action ledger error",
        Inject::At("actions.begin", JobKind::ActionHttp, 2, RETRYABLE),
    ),
    (
        "permanent store error in a lookup",
        Inject::At("store.diff", JobKind::PkLookup, 1, PERMANENT),
    ),
    (
        "a slot line that cannot park",
        Inject::At("slots.park", JobKind::ActionHttp, 1, RETRYABLE),
    ),
    (
        "crash while handing a freed slot on",
        Inject::At("slots.pop", JobKind::ActionHttp, 1, Fault::Crash),
    ),
    ("API 500 twice", Inject::Api5xx(2)),
    ("API 429 once", Inject::Api429(1)),
    (
        "DynamoDB writes applied twice",
        Inject::UpdateItemTwice(&[3, 40, 90, 150]),
    ),
    ("10% of API calls fail", Inject::ApiFailing(10)),
    ("Retry-After: 0 for a minute", Inject::RetryAfterZero),
    (
        "a reset header behind our clock for a minute",
        Inject::PastReset,
    ),
    (
        "a completion write failure",
        Inject::At("store.finish_sync", JobKind::CompleteTransfer, 1, RETRYABLE),
    ),
    ("empty pages with new cursors", Inject::EmptyPagesNewCursors),
    (
        "records without id, over 400 KB, missing a field",
        Inject::BadRecords,
    ),
    ("a null condition", Inject::NullCondition),
    ("a path value with `../` and `?`", Inject::HostilePathValue),
    ("a redirect to another host", Inject::Redirect),
    ("a chunk the API refuses for one row", Inject::RefusedRow),
    ("credentials revoked mid-day", Inject::RevokedMidDay),
];

/// Where the redirect points: another host name for the simulator (so a
/// request that followed it would be counted there, under `POST /stolen`,
/// and fail the "calls outside the config" check).
const REDIRECT_PATH: &str = "stolen";

struct Row {
    text: String,
    ok: bool,
}

async fn run_case(adapter: Adapter, name: &str, inject: Inject) -> Option<Row> {
    let losses = Arc::new(Losses::default());
    let w: World = match inject {
        Inject::UpdateItemTwice(nths) => {
            if adapter != Adapter::Aws {
                return None;
            }
            for n in nths {
                losses.lose("UpdateItem", *n);
            }
            scenario::world_on(adapter, Some(dynamodb_client(losses.clone()))).await
        }
        Inject::PastReset => {
            scenario::world_with(adapter, |c| {
                c.app.rate_limit.reset_header = Some("X-RateLimit-Reset".into());
            })
            .await
        }
        Inject::EmptyPagesNewCursors => {
            scenario::world_with(adapter, |c| {
                if let Some(s) = c.syncs.get_mut("customers") {
                    s.complete_transfer = Some(metered::config::CompleteTransferSettings {
                        every: std::time::Duration::from_secs(86_400),
                    });
                }
            })
            .await
        }
        Inject::HostilePathValue => {
            scenario::world_with(adapter, scenario::note_path_from_name).await
        }
        _ => scenario::world(adapter).await,
    };
    match inject {
        Inject::At(point, kind, nth, fault) => w.faults.at(point, Some(kind), nth, fault),
        Inject::Api5xx(n) => w.sim().faults().next_5xx = n,
        Inject::Api429(n) => {
            let mut f = w.sim().faults();
            f.next_429 = n;
            f.burst_retry_after_secs = 60;
        }
        Inject::ApiFailing(percent) => w.sim().faults().fail_percent = percent,
        Inject::BadRecords => scenario::add_bad_records(&w),
        Inject::RetryAfterZero | Inject::PastReset => {
            let mut f = w.sim().faults();
            f.throttle_until = Some(w.shared.now() + chrono::Duration::seconds(60));
            f.burst_retry_after_secs = 0;
            if matches!(inject, Inject::PastReset) {
                f.burst_reset_offset_secs = Some(-10);
            }
        }
        Inject::EmptyPagesNewCursors => w.sim().faults().endless_empty_pages = true,
        Inject::NullCondition => {
            let vip = &scenario::referenced_vips(&w)[0];
            w.sim()
                .set_field("customers", vip, "score", serde_json::Value::Null);
        }
        Inject::HostilePathValue => {
            let vip = &scenario::referenced_vips(&w)[0];
            w.sim()
                .set_field("customers", vip, "name", scenario::HOSTILE_NAME.into());
        }
        Inject::Redirect => {
            let mut f = w.sim().faults();
            f.redirect_on.insert("POST /notes".into(), 1);
            f.redirect_to = format!(
                "{}{REDIRECT_PATH}",
                w.fx.server.base_url().replace("127.0.0.1", "localhost")
            );
        }
        Inject::RefusedRow => {
            let vip = scenario::referenced_vips(&w)[0].clone();
            w.sim().faults().refuse_row_ids.insert(vip);
        }
        Inject::RevokedMidDay => {
            let key = w.api_keys[ORGS[0]].clone();
            w.sim().faults().revoke_after_calls.insert(key, 20);
        }
        Inject::None | Inject::UpdateItemTwice(_) => {}
    }
    scenario::start(&w).await;
    if matches!(inject, Inject::EmptyPagesNewCursors) {
        for org in ORGS {
            w.start_for(org, JobKind::CompleteTransfer, "customers")
                .await;
        }
    }
    // What the case needs besides "settles": the operator's part, and what
    // must hold before it.
    let mut notes = Vec::new();
    let mut extra_ok = true;
    let report = match inject {
        Inject::Redirect => {
            let mut report = w.drive_report().await;
            let dead = w.all_dead_letters().await;
            extra_ok &= dead.len() == 1 && dead[0].1.reason.contains("redirect");
            notes.push(format!(
                "dead-lettered, then redriven: {}",
                dead.iter()
                    .map(|(_, d)| d.reason.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            w.redrive_all().await;
            let more = w.drive_report().await;
            report.restarts.extend(more.restarts);
            report.crashes += more.crashes;
            report.dead.extend(more.dead);
            report
        }
        Inject::RevokedMidDay => {
            let a = ORGS[0];
            let start = w.shared.now();
            let mut report = w
                .drive_until(Some(start + chrono::Duration::hours(24)))
                .await;
            let refused = w
                .sim()
                .stats()
                .rejected_401_by_key
                .get(&w.api_keys[a])
                .copied()
                .unwrap_or(0);
            let health = w.svc.quota.store().health(&w.svc.key(a)).await.unwrap();
            let paused = health.paused_at(w.shared.now());
            let dead = w.dead_letters().await;
            // 3 to pause, up to the concurrency cap (3) in flight, then one
            // probe round per pause (15 m, 30 m, 1 h, 2 h, 4 h, 8 h, 16 h):
            // the jobs that wake as a pause ends may call together, up to
            // the cap (here every call takes 10 s of the clock, so they
            // overlap far more than real calls of a few hundred ms).
            extra_ok &= paused && dead == 0 && (3..=3 + 3 + 7 * 3).contains(&refused);
            notes.push(format!(
                "a day later: {refused} calls refused, paused {paused} ({}), {dead} dead; key fixed, resumed",
                health.reason.as_deref().unwrap_or("-")
            ));
            w.sim().faults().revoked_keys.clear();
            w.svc.quota.store().resume(&w.svc.key(a)).await.unwrap();
            let more = w.drive_report().await;
            report.restarts.extend(more.restarts);
            report.crashes += more.crashes;
            report.dead.extend(more.dead);
            report
        }
        _ => w.drive_report().await,
    };
    if matches!(inject, Inject::HostilePathValue) {
        // One segment, decoded back to the name, and no other endpoint.
        let stats = w.sim().stats();
        let parents: Vec<String> = stats
            .created_by_key
            .values()
            .flatten()
            .filter_map(|n| n["parent"].as_str().map(str::to_string))
            .collect();
        let hostile = parents
            .iter()
            .filter(|p| *p == scenario::HOSTILE_NAME)
            .count();
        extra_ok &= hostile == ORGS.len();
        notes.push(format!(
            "{hostile} notes addressed to the hostile name as one segment"
        ));
    }
    // No request ever left the endpoints the config names.
    let strays: Vec<String> = w
        .sim()
        .stats()
        .calls_by_endpoint
        .keys()
        .filter(|e| {
            ![
                "GET /invoices",
                "GET /customers",
                "GET /customers (by ids)",
                "POST /notes",
                "POST /notes/{id}",
                "POST /datasources/{name}/rows",
            ]
            .contains(&e.as_str())
        })
        .cloned()
        .collect();
    if !strays.is_empty() {
        extra_ok = false;
        notes.push(format!("calls outside the config: {strays:?}"));
    }
    let accounts = scenario::account(&w).await;
    let dead: Vec<String> = w
        .all_dead_letters()
        .await
        .into_iter()
        .map(|(k, d)| format!("{k}: {}", d.reason))
        .collect();
    // The fault really happened.
    let fired = match inject {
        Inject::At(..) => w.faults.fired().len() == 1,
        Inject::UpdateItemTwice(nths) => {
            losses.lost.load(std::sync::atomic::Ordering::SeqCst) as usize == nths.len()
        }
        Inject::Api5xx(_) | Inject::Api429(_) => {
            let f = w.sim().faults();
            f.next_5xx == 0 && f.next_429 == 0
        }
        Inject::ApiFailing(_) => !w.sim().faults().failed_by_kind.is_empty(),
        Inject::RetryAfterZero | Inject::PastReset => w.sim().stats().rejected_429 > 0,
        Inject::EmptyPagesNewCursors => w.sim().stats().calls("GET /customers") > 0,
        Inject::NullCondition | Inject::HostilePathValue => true,
        Inject::Redirect => w.sim().faults().redirect_on.values().all(|n| *n == 0),
        Inject::RefusedRow => w.sim().stats().calls("POST /datasources/{name}/rows") > 0,
        Inject::RevokedMidDay => !w.sim().stats().rejected_401_by_key.is_empty(),
        Inject::BadRecords | Inject::None => true,
    };
    let lost: usize = accounts.iter().map(|a| a.lost()).sum();
    let doubled: usize = accounts.iter().map(|a| a.doubled()).sum();
    let over: u64 = accounts.iter().map(|a| a.over_budget()).sum();
    let explained = dead.iter().all(|d| d.contains("injected"));
    // Hostile APIs and data, and waiting at its edges, must cost nothing:
    // no loss and no dead letter.
    let must_finish = matches!(
        inject,
        Inject::ApiFailing(_)
            | Inject::BadRecords
            | Inject::RetryAfterZero
            | Inject::PastReset
            | Inject::EmptyPagesNewCursors
            | Inject::NullCondition
            | Inject::HostilePathValue
            | Inject::Redirect
            | Inject::RefusedRow
            | Inject::RevokedMidDay
    ) || name == "a completion write failure"
        // The slot line only ever speeds a wake-up: its failures cost time.
        || name.starts_with("a slot line")
        || name.starts_with("crash while handing");
    let ok = extra_ok
        && fired
        && doubled == 0
        && over == 0
        && explained
        && (lost == 0 || (!dead.is_empty() && !must_finish))
        && (dead.is_empty() || !must_finish);
    let per = |f: &dyn Fn(&scenario::Account) -> String| {
        accounts.iter().map(f).collect::<Vec<_>>().join(" ")
    };
    let text = format!(
        "| {name} | {adapter} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{} |{}",
        per(&|a| format!("{}/{}", a.records_stored, a.records_due)),
        per(&|a| format!("{}/{}", a.quarantined, a.quarantine_due)),
        per(&|a| format!(
            "{}/{}/{}",
            a.performed_once, a.actions_due, a.performed_twice
        )),
        per(&|a| if a.rows_refused_due == 0 {
            format!("{}/{}", a.rows_pushed, a.rows_due)
        } else {
            format!(
                "{}/{} +{}/{} set aside",
                a.rows_pushed, a.rows_due, a.rows_set_aside, a.rows_refused_due
            )
        }),
        per(&|a| format!("{}/{}", a.max_calls_a_day, a.budget)),
        lost,
        doubled,
        report.crashes,
        report.restarts.len(),
        if dead.is_empty() {
            " 0".to_string()
        } else {
            format!(" {}: {}", dead.len(), dead.join("; "))
        },
        if notes.is_empty() {
            String::new()
        } else {
            format!(" {} |", notes.join("; "))
        },
    );
    Some(Row { text, ok })
}

async fn matrix(adapter: Adapter) {
    let rows: Vec<Option<Row>> = futures::stream::iter(CASES)
        .map(|(name, inject)| run_case(adapter, name, *inject))
        .buffered(4)
        .collect()
        .await;
    println!(
        "| case | adapters | records stored/due (A B) | quarantined/due (A B) | actions once/due/twice (A B) | rows pushed/due (A B) | max calls a day/budget (A B) | lost | doubled | crashes | restarts | dead letters |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = Vec::new();
    for row in rows.into_iter().flatten() {
        println!("{}", row.text);
        if !row.ok {
            failed.push(row.text);
        }
    }
    assert!(
        failed.is_empty(),
        "rows that lost, doubled or overspent without a dead letter:\n{}",
        failed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_on_sqlite() {
    matrix(Adapter::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_on_dynamodb_local_and_ministack() {
    matrix(Adapter::Aws).await;
}
