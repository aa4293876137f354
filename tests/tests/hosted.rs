//! Hosted GET on both adapter sets: a hosted Data Source filled by a
//! workflow from a complete transfer of two orgs whose customer ids
//! coincide, served per user and per org, paged exactly once while rows
//! change, 304 when nothing changed, and every way of reading someone
//! else's rows refused. Zero calls reach the simulated API while it serves.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use metered::config::{CompleteTransferSettings, SyncConfig};
use metered::connector::Secret;
use metered::handlers::{HostedRequest, HostedResponse, HostedService};
use metered::store::OutboxRow;
use metered::store::RowChange;
use metered::store::{HostedRows, IndexState};
use metered::JobKind;
use metered::Tenant;
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World, ORG, ORGS};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SECRET: &str = "vips-hs256-key-for-tests-only-0123456789";
const OTHER_SECRET: &str = "pushed-hs256-key-for-tests-only-987654321";
const TIERS_SECRET: &str = "tiers-hs256-key-for-tests-only-5555555555";

/// Every customer gets a row in `vips` (hosted, per tier) and in `feed`
/// (another hosted Data Source with its own key).
const ROWS: &str = r#"
[workflows.rows]
trigger = { record_type = "customers", on = ["created"] }
[[workflows.rows.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}", tier = "{{ record.tier }}", score = "{{ record.score }}" }
[[workflows.rows.actions]]
kind = "datasource_push"
datasource = "feed"
row = { id = "{{ record.id }}" }
[[workflows.rows.actions]]
kind = "datasource_push"
datasource = "tiers"
row = { id = "{{ record.id }}", tier = "{{ record.tier }}" }
"#;

async fn world(adapter: Adapter) -> World {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 120,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert(
                "customers".into(),
                SyncConfig {
                    complete_transfer: Some(CompleteTransferSettings {
                        every: std::time::Duration::from_secs(86_400),
                    }),
                    ..Default::default()
                },
            );
            metered_tests::add_workflows(c, ROWS);
            c.datasources.insert(
                "vips".into(),
                toml::from_str(
                    "mode = \"hosted\"\nsecret = { env = \"VIPS_JWT\" }\n\
                     filter = \"row.tier == user.tier\"\nmax_page_size = 50",
                )
                .unwrap(),
            );
            c.datasources.insert(
                "feed".into(),
                toml::from_str("mode = \"hosted\"\nsecret = { env = \"FEED_JWT\" }").unwrap(),
            );
            c.datasources.insert(
                "tiers".into(),
                toml::from_str(
                    "mode = \"hosted\"\nsecret = { env = \"TIERS_JWT\" }\n\
                     filter = \"row.tier in user.tiers\"",
                )
                .unwrap(),
            );
        })
        .workflows()
        .build()
        .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    let report = w.drive_report().await;
    assert!(report.dead.is_empty(), "{report:?}");
    w
}

fn secrets() -> BTreeMap<String, Secret> {
    BTreeMap::from([
        ("vips".to_string(), Secret::new(SECRET)),
        ("feed".to_string(), Secret::new(OTHER_SECRET)),
        ("tiers".to_string(), Secret::new(TIERS_SECRET)),
    ])
}

fn service(w: &World) -> HostedService {
    HostedService::new(&w.svc.config, secrets(), w.hosted.clone(), w.shared.clone()).unwrap()
}

fn token_with(w: &World, key: &str, alg: Algorithm, claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(w.shared.now().timestamp() + 600);
    }
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// A user of `org` in `tier`.
fn token(w: &World, org: &str, sub: &str, tier: &str) -> String {
    token_with(
        w,
        SECRET,
        Algorithm::HS256,
        json!({"org": org, "sub": sub, "tier": tier}),
    )
}

fn get(ds: &str, query: &str, bearer: Option<&str>) -> HostedRequest {
    HostedRequest {
        method: "GET".into(),
        path: format!("/datasources/{ds}/rows"),
        query: (!query.is_empty()).then(|| query.to_string()),
        authorization: bearer.map(|t| format!("Bearer {t}")),
        if_none_match: None,
    }
}

fn body(r: &HostedResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn etag(r: &HostedResponse) -> String {
    r.headers
        .iter()
        .find(|(k, _)| *k == "etag")
        .map(|(_, v)| v.clone())
        .expect("an ETag")
}

/// Pages through everything `bearer` may read; every row id in order.
async fn read_all(s: &HostedService, bearer: &str, page_size: u32) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..1000 {
        let q = match &next {
            Some(t) => format!("page_size={page_size}&page_token={t}"),
            None => format!("page_size={page_size}"),
        };
        let r = s.handle(&get("vips", &q, Some(bearer))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b = body(&r);
        rows.extend(b["rows"].as_array().unwrap().iter().cloned());
        match b["next_page_token"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => return rows,
        }
    }
    panic!("paging never ended");
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The customers of a tier, as the simulator serves them.
fn tier_ids(w: &World, tier: &str) -> BTreeSet<String> {
    w.sim()
        .records("customers")
        .iter()
        .filter(|r| r["tier"] == tier)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Each user reads their tier's rows of their org, each exactly once; an
/// org-B-only row is seen by org B's user alone; no push call was made
/// and not one API call is spent while serving.
async fn hosted_rows_are_served_per_user_and_org_without_api_calls(adapter: Adapter) {
    let w = world(adapter).await;
    let org_b = ORGS[1];
    let stats = w.sim().stats();
    assert_eq!(
        stats.datasource_pushes, 0,
        "a hosted Data Source is never pushed"
    );
    let calls_before = stats.served() + stats.rejected_429;
    for org in ORGS {
        let key = w.svc.key(org);
        assert_eq!(w.store.pending_count(&key, "vips").await.unwrap(), 120);
    }
    // A row only org B has, with an id org A's rows could have had.
    w.store
        .put_rows(
            &w.svc.key(org_b),
            "vips",
            &[metered::store::RowWrite::new(
                "cus_99999",
                RowChange::Insert(json!({"id": "cus_99999", "tier": "gold"})),
            )],
            w.shared.now(),
        )
        .await
        .unwrap();
    let s = service(&w);
    let gold = tier_ids(&w, "gold");
    let silver = tier_ids(&w, "silver");
    assert!(!gold.is_empty() && !silver.is_empty());

    let alice = read_all(&s, &token(&w, ORG, "alice", "gold"), 7).await;
    let alice_ids = ids(&alice);
    assert_eq!(
        alice_ids.len(),
        alice_ids.iter().collect::<BTreeSet<_>>().len(),
        "each row once"
    );
    assert_eq!(alice_ids.iter().cloned().collect::<BTreeSet<_>>(), gold);
    assert!(alice.iter().all(|r| r["tier"] == "gold"));

    // A platform token carrying an audience (and an issue time) is fine.
    let with_aud = token_with(
        &w,
        SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "alice", "tier": "gold", "aud": "platform-app", "iat": w.shared.now().timestamp()}),
    );
    assert_eq!(ids(&read_all(&s, &with_aud, 50).await), {
        let mut v: Vec<String> = gold.iter().cloned().collect();
        v.sort();
        v
    });
    let bob = read_all(&s, &token(&w, ORG, "bob", "silver"), 50).await;
    assert_eq!(ids(&bob).into_iter().collect::<BTreeSet<_>>(), silver);

    let carol = read_all(&s, &token(&w, org_b, "carol", "gold"), 13).await;
    let mut expected_b = gold.clone();
    expected_b.insert("cus_99999".into());
    assert_eq!(ids(&carol).into_iter().collect::<BTreeSet<_>>(), expected_b);
    assert!(!alice_ids.contains(&"cus_99999".to_string()));

    // Without a filter (`feed`), a user reads all of their org's rows.
    let feed_token = token_with(
        &w,
        OTHER_SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "dave"}),
    );
    let r = s
        .handle(&get("feed", "page_size=1000", Some(&feed_token)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["rows"].as_array().unwrap().len(), 120);

    assert_eq!(
        {
            let s = w.sim().stats();
            s.served() + s.rejected_429
        },
        calls_before,
        "serving spends no API call"
    );
}

/// Every way the API allows of reading another user's or org's rows, or
/// of reading without a valid token, and malformed parameters: each is
/// refused with no row in the answer.
async fn no_way_in_to_another_users_rows(adapter: Adapter) {
    let w = world(adapter).await;
    let s = service(&w);
    let now = w.shared.now().timestamp();
    let alice = token(&w, ORG, "alice", "gold");
    let bob = token(&w, ORG, "bob", "silver");
    let carol_b = token(&w, ORGS[1], "alice", "gold");

    // Bob's page token, Alice's page token.
    let first = |bearer: String| {
        let s = &s;
        async move {
            let r = s.handle(&get("vips", "page_size=5", Some(&bearer))).await;
            assert_eq!(r.status, 200, "{}", r.body);
            body(&r)["next_page_token"].as_str().unwrap().to_string()
        }
    };
    let bob_page = first(bob.clone()).await;
    let alice_page = first(alice.clone()).await;
    let tampered = {
        // Change the cursor inside the signed payload, keep the signature.
        let parts: Vec<&str> = alice_page.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["after"] = json!("");
        claims["sub"] = json!("bob");
        format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        )
    };
    let alg_none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(
                json!({"org": ORG, "sub": "alice", "tier": "silver", "exp": now + 600}).to_string()
            )
        )
    };
    let cases: Vec<(&str, HostedRequest, u16, &str)> = vec![
        (
            "no credentials",
            get("vips", "", None),
            401,
            "missing Authorization",
        ),
        (
            "not a bearer",
            HostedRequest {
                authorization: Some(format!("Basic {alice}")),
                ..get("vips", "", None)
            },
            401,
            "Bearer",
        ),
        (
            "expired token",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "sub": "alice", "tier": "gold", "exp": now - 3600}),
                )),
            ),
            401,
            "Expired",
        ),
        (
            "a token not valid yet (nbf in an hour)",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "sub": "alice", "tier": "gold", "nbf": now + 3600}),
                )),
            ),
            401,
            "not valid yet",
        ),
        (
            "a token issued in the future (iat in an hour)",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "sub": "alice", "tier": "gold", "iat": now + 3600}),
                )),
            ),
            401,
            "issued in the future",
        ),
        (
            "exp at the smallest integer (no overflow, no panic)",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "sub": "alice", "tier": "gold", "exp": i64::MIN + 1}),
                )),
            ),
            401,
            "refused",
        ),
        (
            "signed with another Data Source's secret",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    OTHER_SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "sub": "alice", "tier": "silver"}),
                )),
            ),
            401,
            "refused",
        ),
        ("alg none", get("vips", "", Some(&alg_none)), 401, "refused"),
        (
            "HS512 with the right key (algorithm confusion)",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS512,
                    json!({"org": ORG, "sub": "alice", "tier": "gold"}),
                )),
            ),
            401,
            "refused",
        ),
        (
            "no org claim",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"sub": "alice", "tier": "gold"}),
                )),
            ),
            401,
            "org",
        ),
        (
            "no sub claim",
            get(
                "vips",
                "",
                Some(&token_with(
                    &w,
                    SECRET,
                    Algorithm::HS256,
                    json!({"org": ORG, "tier": "gold"}),
                )),
            ),
            401,
            "sub",
        ),
        (
            "org as a query parameter",
            get("vips", &format!("org={}", ORGS[1]), Some(&alice)),
            400,
            "org: unknown query parameter",
        ),
        (
            "tier as a query parameter",
            get("vips", "tier=silver", Some(&alice)),
            400,
            "tier: unknown query parameter",
        ),
        (
            "Bob's page token replayed by Alice",
            get(
                "vips",
                &format!("page_size=5&page_token={bob_page}"),
                Some(&alice),
            ),
            400,
            "page_token: issued to another caller",
        ),
        (
            "Alice's page token under org B's token for the same sub",
            get(
                "vips",
                &format!("page_size=5&page_token={alice_page}"),
                Some(&carol_b),
            ),
            400,
            "page_token: issued to another caller",
        ),
        (
            "Alice's page token with another page size",
            get(
                "vips",
                &format!("page_size=6&page_token={alice_page}"),
                Some(&alice),
            ),
            400,
            "page_token: issued to another caller",
        ),
        (
            "a tampered page token",
            get(
                "vips",
                &format!("page_size=5&page_token={tampered}"),
                Some(&alice),
            ),
            400,
            "page_token: not a page token this service issued",
        ),
        (
            "a caller's JWT as a page token",
            get(
                "vips",
                &format!("page_size=5&page_token={alice}"),
                Some(&alice),
            ),
            400,
            "page_token: not a page token",
        ),
        (
            "page_size 0",
            get("vips", "page_size=0", Some(&alice)),
            400,
            "page_size: expected a whole number from 1 to 50",
        ),
        (
            "page_size over the max",
            get("vips", "page_size=51", Some(&alice)),
            400,
            "page_size",
        ),
        (
            "page_size not a number",
            get("vips", "page_size=ten", Some(&alice)),
            400,
            "page_size",
        ),
        (
            "an unknown Data Source",
            get("nope", "", Some(&alice)),
            404,
            "no hosted Data Source `nope`",
        ),
        (
            "another route",
            HostedRequest {
                path: "/datasources/vips/rows/cus_00001".into(),
                ..get("vips", "", Some(&alice))
            },
            404,
            "no such route",
        ),
        (
            "POST",
            HostedRequest {
                method: "POST".into(),
                ..get("vips", "", Some(&alice))
            },
            405,
            "use GET",
        ),
    ];
    for (name, req, status, says) in cases {
        let r = s.handle(&req).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        let b = body(&r);
        assert!(b.get("rows").is_none(), "{name}: no data: {}", r.body);
        let error = b["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says),
            "{name}: {error:?} should say {says:?}"
        );
        assert!(
            !error.contains(SECRET) && !error.contains(OTHER_SECRET),
            "{name}: no secret in {error}"
        );
    }
    // The same page tokens still work for whom they were issued.
    let r = s
        .handle(&get(
            "vips",
            &format!("page_size=5&page_token={bob_page}"),
            Some(&bob),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(body(&r)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["tier"] == "silver"));
    // A page token expires.
    w.clock.advance(chrono::Duration::hours(2));
    let alice = token(&w, ORG, "alice", "gold");
    let r = s
        .handle(&get(
            "vips",
            &format!("page_size=5&page_token={alice_page}"),
            Some(&alice),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
}

/// `If-None-Match` with the last ETag is 304 while nothing was written (a
/// fresh token with a later `exp` still hits); a write to the org's Data
/// Source changes it; a write to the other org's does not.
async fn unchanged_rows_answer_304(adapter: Adapter) {
    let w = world(adapter).await;
    let s = service(&w);
    let r = s
        .handle(&get(
            "vips",
            "page_size=10",
            Some(&token(&w, ORG, "alice", "gold")),
        ))
        .await;
    assert_eq!(r.status, 200);
    let tag = etag(&r);
    w.clock.advance(chrono::Duration::minutes(1));
    let again = |tag: String| {
        let s = &s;
        let w = &w;
        async move {
            s.handle(&HostedRequest {
                if_none_match: Some(tag),
                ..get(
                    "vips",
                    "page_size=10",
                    Some(&token(w, ORG, "alice", "gold")),
                )
            })
            .await
        }
    };
    let r = again(tag.clone()).await;
    assert_eq!(r.status, 304, "{}", r.body);
    assert!(r.body.is_empty());
    assert_eq!(etag(&r), tag);
    // Another user's ETag differs (their filter result may differ).
    let r = s
        .handle(&HostedRequest {
            if_none_match: Some(tag.clone()),
            ..get(
                "vips",
                "page_size=10",
                Some(&token(&w, ORG, "bob", "silver")),
            )
        })
        .await;
    assert_eq!(r.status, 200);
    assert_ne!(etag(&r), tag);
    let bob_tag = etag(&r);
    let alice_first = body(&again(String::new()).await)["rows"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_first = body(&r)["rows"][0]["id"].as_str().unwrap().to_string();
    let write = |org: &'static str, id: String, tier: &'static str| {
        let w = &w;
        async move {
            put(w, org, "vips", &id, Some(tier)).await;
        }
    };
    // Org B writes: org A's ETag holds.
    write(ORGS[1], alice_first.clone(), "gold").await;
    assert_eq!(again(tag.clone()).await.status, 304);
    // Org A changes one of bob's rows: alice's ETag still holds (her rows
    // did not change), bob's does not.
    write(ORG, bob_first, "silver").await;
    let r = again(tag.clone()).await;
    assert_eq!(r.status, 304, "alice's rows did not change");
    let bob = s
        .handle(&HostedRequest {
            if_none_match: Some(bob_tag.clone()),
            ..get(
                "vips",
                "page_size=10",
                Some(&token(&w, ORG, "bob", "silver")),
            )
        })
        .await;
    assert_eq!(bob.status, 200, "bob's row changed");
    assert_ne!(etag(&bob), bob_tag);
    // A change to one of alice's rows changes her ETag.
    write(ORG, alice_first, "gold").await;
    let r = again(tag.clone()).await;
    assert_eq!(r.status, 200, "a write to her rows changes the ETag");
    assert_ne!(etag(&r), tag);
    let fresh = etag(&r);
    assert_eq!(again(fresh).await.status, 304);
}

/// Rows written between pages: every row that exists throughout is served
/// exactly once (with its newest content if rewritten ahead of the
/// cursor), a row deleted ahead of the cursor is not served, a row added
/// ahead is served once.
async fn paging_serves_each_row_once_while_rows_change(adapter: Adapter) {
    let w = world(adapter).await;
    let s = service(&w);
    let key = w.svc.key(ORG);
    let bearer = token(&w, ORG, "alice", "gold");
    let gold: Vec<String> = tier_ids(&w, "gold").into_iter().collect();
    let mut served: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    let mut page = 0;
    let (deleted, rewritten_ahead, rewritten_behind) = (
        gold[gold.len() - 1].clone(),
        gold[gold.len() - 2].clone(),
        gold[0].clone(),
    );
    loop {
        let q = match &next {
            Some(t) => format!("page_size=4&page_token={t}"),
            None => "page_size=4".to_string(),
        };
        let r = s.handle(&get("vips", &q, Some(&bearer))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b = body(&r);
        served.extend(b["rows"].as_array().unwrap().iter().cloned());
        page += 1;
        if page == 2 {
            let row = |id: &str, score: &str| {
                metered::store::RowWrite::new(
                    id.to_string(),
                    RowChange::Insert(json!({"id": id, "tier": "gold", "score": score})),
                )
            };
            w.store
                .put_rows(
                    &key,
                    "vips",
                    &[
                        row(&rewritten_behind, "rewritten"),
                        row(&rewritten_ahead, "rewritten"),
                        metered::store::RowWrite::new(deleted.clone(), RowChange::Delete),
                        row("cus_zz_new", "new"),
                    ],
                    w.shared.now(),
                )
                .await
                .unwrap();
        }
        match b["next_page_token"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => break,
        }
    }
    let got = ids(&served);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no row twice: {got:?}");
    let mut expected: BTreeSet<String> = gold.iter().cloned().collect();
    expected.remove(&deleted);
    expected.insert("cus_zz_new".into());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    let score_of = |id: &str| {
        served
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["score"].clone())
            .unwrap()
    };
    assert_eq!(score_of(&rewritten_ahead), "rewritten");
    assert_ne!(
        score_of(&rewritten_behind),
        "rewritten",
        "served before it changed"
    );
}

/// Writes one row as the workflow does (indexed by the Data Source's
/// filter): `tier` None deletes it.
async fn put(w: &World, org: &str, ds: &str, id: &str, tier: Option<&str>) {
    let change = match tier {
        Some(tier) => RowChange::Insert(json!({"id": id, "tier": tier, "score": "changed"})),
        None => RowChange::Delete,
    };
    let index = w.svc.config.datasource(ds).unwrap().row_index();
    w.store
        .put_rows_indexed(
            &w.svc.key(org),
            ds,
            &[metered::store::RowWrite::new(id, change)],
            index.as_ref(),
            w.shared.now(),
        )
        .await
        .unwrap()
}

/// Counts the stored rows a service reads, through either read.
struct Counting {
    inner: Arc<dyn HostedRows>,
    read: AtomicUsize,
}

#[async_trait::async_trait]
impl HostedRows for Counting {
    async fn rows_version(&self, key: &Tenant, ds: &str) -> metered::Result<u64> {
        self.inner.rows_version(key, ds).await
    }
    async fn rows_after(
        &self,
        key: &Tenant,
        ds: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<OutboxRow>> {
        let rows = self.inner.rows_after(key, ds, after, limit).await?;
        self.read.fetch_add(rows.len(), Ordering::Relaxed);
        Ok(rows)
    }
    async fn index_state(
        &self,
        key: &Tenant,
        ds: &str,
        parts: &[String],
    ) -> metered::Result<IndexState> {
        self.inner.index_state(key, ds, parts).await
    }
    async fn part_rows_after(
        &self,
        key: &Tenant,
        ds: &str,
        part: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<OutboxRow>> {
        let rows = self
            .inner
            .part_rows_after(key, ds, part, after, limit)
            .await?;
        self.read.fetch_add(rows.len(), Ordering::Relaxed);
        Ok(rows)
    }
}

/// Pages of `ds` for `bearer` to the end: the rows of each page.
async fn page_sizes(s: &HostedService, ds: &str, bearer: &str, size: u32) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..1000 {
        let q = match &next {
            Some(t) => format!("page_size={size}&page_token={t}"),
            None => format!("page_size={size}"),
        };
        let r = s.handle(&get(ds, &q, Some(bearer))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b = body(&r);
        out.push(b["rows"].as_array().unwrap().clone());
        match b["next_page_token"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => return out,
        }
    }
    panic!("paging never ended");
}

/// A filter `row.tier == user.tier` is an index: a user's pages read their
/// own rows only (rows read ≈ rows served), every page but the last is
/// full, a row that moves to another tier leaves one user's pages and
/// enters another's and changes only their ETags, a delete leaves, org B
/// (same ids) is untouched, and rows written without the index are read
/// by scanning until an indexed write indexes them again. `in` over a
/// list claim merges the tiers in id order.
async fn an_indexed_filter_reads_only_the_users_rows(adapter: Adapter) {
    let w = world(adapter).await;
    let counting = Arc::new(Counting {
        inner: w.hosted.clone(),
        read: AtomicUsize::new(0),
    });
    let s =
        HostedService::new(&w.svc.config, secrets(), counting.clone(), w.shared.clone()).unwrap();
    let gold = tier_ids(&w, "gold");
    let silver = tier_ids(&w, "silver");
    let alice = token(&w, ORG, "alice", "gold");
    let pages = page_sizes(&s, "vips", &alice, 7).await;
    let served: Vec<Value> = pages.iter().flatten().cloned().collect();
    assert_eq!(ids(&served).into_iter().collect::<BTreeSet<_>>(), gold);
    assert_eq!(served.len(), gold.len(), "each row once");
    let (last, full) = pages.split_last().unwrap();
    assert!(full.iter().all(|p| p.len() == 7), "full pages but the last");
    assert!(last.len() < 7);
    let read = counting.read.swap(0, Ordering::Relaxed);
    assert!(
        read <= served.len() + 7,
        "{read} rows read for {} served: the index was not used",
        served.len()
    );

    // Org A moves one of alice's rows to silver and deletes another.
    let mut gold_ids = gold.iter().cloned();
    let (moved, deleted) = (gold_ids.next().unwrap(), gold_ids.next().unwrap());
    let tag_of = |bearer: String, tag: Option<String>| {
        let s = &s;
        async move {
            s.handle(&HostedRequest {
                if_none_match: tag,
                ..get("vips", "page_size=50", Some(&bearer))
            })
            .await
        }
    };
    let alice_tag = etag(&tag_of(alice.clone(), None).await);
    let bob = token(&w, ORG, "bob", "silver");
    let bob_tag = etag(&tag_of(bob.clone(), None).await);
    let erin = token(&w, ORG, "erin", "bronze");
    let erin_tag = etag(&tag_of(erin.clone(), None).await);
    let carol = token(&w, ORGS[1], "carol", "gold");
    let carol_tag = etag(&tag_of(carol.clone(), None).await);
    put(&w, ORG, "vips", &moved, Some("silver")).await;
    put(&w, ORG, "vips", &deleted, None).await;
    counting.read.swap(0, Ordering::Relaxed);
    assert_eq!(
        tag_of(erin.clone(), Some(erin_tag)).await.status,
        304,
        "bronze did not change"
    );
    assert_eq!(
        counting.read.load(Ordering::Relaxed),
        0,
        "a 304 for an unchanged part reads no row"
    );
    assert_eq!(tag_of(carol.clone(), Some(carol_tag)).await.status, 304);
    let a = tag_of(alice.clone(), Some(alice_tag)).await;
    assert_eq!(a.status, 200, "alice lost two rows");
    let a_ids: BTreeSet<String> = ids(body(&a)["rows"].as_array().unwrap())
        .into_iter()
        .collect();
    let mut expect = gold.clone();
    expect.remove(&moved);
    expect.remove(&deleted);
    assert_eq!(a_ids, expect);
    let b = tag_of(bob.clone(), Some(bob_tag)).await;
    assert_eq!(b.status, 200, "bob gained one");
    let b_ids: BTreeSet<String> = ids(body(&b)["rows"].as_array().unwrap())
        .into_iter()
        .collect();
    let mut expect_b = silver.clone();
    expect_b.insert(moved.clone());
    assert_eq!(b_ids, expect_b);
    // Org B still has both rows as they were.
    let c_ids: BTreeSet<String> = ids(&page_sizes(&s, "vips", &carol, 50).await.concat())
        .into_iter()
        .collect();
    assert_eq!(c_ids, gold);

    // A write without the index (an older writer): read by scanning, and
    // nothing is missed; the next indexed write indexes every row again.
    w.store
        .put_rows(
            &w.svc.key(ORG),
            "vips",
            &[metered::store::RowWrite::new(
                &moved,
                RowChange::Insert(json!({"id": moved, "tier": "gold"})),
            )],
            w.shared.now(),
        )
        .await
        .unwrap();
    let all_but_deleted: BTreeSet<String> =
        gold.iter().filter(|i| **i != deleted).cloned().collect();
    counting.read.swap(0, Ordering::Relaxed);
    let scanned = ids(&page_sizes(&s, "vips", &alice, 50).await.concat());
    assert_eq!(
        scanned.into_iter().collect::<BTreeSet<_>>(),
        all_but_deleted
    );
    assert!(
        counting.read.swap(0, Ordering::Relaxed) >= 120,
        "read by scanning"
    );
    put(&w, ORG, "vips", &deleted, Some("gold")).await;
    let indexed = ids(&page_sizes(&s, "vips", &alice, 50).await.concat());
    assert_eq!(indexed.into_iter().collect::<BTreeSet<_>>(), gold);
    assert!(counting.read.swap(0, Ordering::Relaxed) <= gold.len() + 50);

    // `in` over a list claim: gold and silver merged in id order, pages full.
    let both = token_with(
        &w,
        TIERS_SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "frank", "tiers": ["silver", "gold", "gold"]}),
    );
    let pages = page_sizes(&s, "tiers", &both, 9).await;
    let (_, full) = pages.split_last().unwrap();
    assert!(full.iter().all(|p| p.len() == 9), "full pages but the last");
    let merged = ids(&pages.concat());
    let mut want: Vec<String> = gold.union(&silver).cloned().collect();
    want.sort();
    assert_eq!(merged, want, "each row once, in id order");
    let none = token_with(
        &w,
        TIERS_SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "gus"}),
    );
    assert!(page_sizes(&s, "tiers", &none, 9).await.concat().is_empty());
}

/// Writers moving the same rows between tiers at once (as workflow jobs of
/// consecutive syncs may): afterwards each tier's user reads exactly the
/// rows whose stored tier is theirs, as a full scan of the stored rows
/// says, and org B (same ids) is untouched.
async fn concurrent_moves_leave_the_index_equal_to_the_rows(adapter: Adapter) {
    let w = world(adapter).await;
    let s = service(&w);
    let ids_a: Vec<String> = {
        let mut v: Vec<String> = w
            .sim()
            .records("customers")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v.truncate(30);
        v
    };
    let tiers = ["gold", "silver", "bronze"];
    let tasks = (0..8u64).map(|t| {
        let (w, ids) = (&w, &ids_a);
        async move {
            let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..25 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let id = &ids[(seed % ids.len() as u64) as usize];
                let tier = match (seed >> 8) % 4 {
                    3 => None,
                    k => Some(tiers[k as usize]),
                };
                put(w, ORG, "vips", id, tier).await;
            }
        }
    });
    futures::future::join_all(tasks).await;
    // The truth: the stored rows, read in full.
    let stored = w
        .hosted
        .rows_after(&w.svc.key(ORG), "vips", None, 10_000)
        .await
        .unwrap();
    for tier in tiers {
        let want: BTreeSet<String> = stored
            .iter()
            .filter(|r| matches!(&r.change, RowChange::Insert(v) if v["tier"] == tier))
            .map(|r| r.id.clone())
            .collect();
        let got = ids(&page_sizes(&s, "vips", &token(&w, ORG, "u", tier), 50)
            .await
            .concat());
        assert_eq!(got.len(), want.len(), "{tier}: each row once");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "{tier}");
    }
    let b = ids(
        &page_sizes(&s, "vips", &token(&w, ORGS[1], "u", "gold"), 50)
            .await
            .concat(),
    );
    assert_eq!(b.into_iter().collect::<BTreeSet<_>>(), tier_ids(&w, "gold"));
}

metered_tests::on_both!(
    concurrent_moves_leave_the_index_equal_to_the_rows,
    an_indexed_filter_reads_only_the_users_rows,
    hosted_rows_are_served_per_user_and_org_without_api_calls,
    no_way_in_to_another_users_rows,
    unchanged_rows_answer_304,
    paging_serves_each_row_once_while_rows_change,
);

/// The function answers the event a Lambda Function URL sends (payload
/// v2, as in AWS's documentation), through lambda_http's own conversion,
/// on DynamoDB Local: 200 with the rows, and 401 without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_answers_a_function_url_event() {
    let w = world(Adapter::Aws).await;
    let s = Arc::new(service(&w));
    let event = |query: &str, auth: Option<String>| {
        let mut v: Value =
            serde_json::from_str(include_str!("../fixtures/function-url-request.json")).unwrap();
        v["rawQueryString"] = json!(query);
        match auth {
            Some(a) => v["headers"]["authorization"] = json!(a),
            None => {
                v["headers"]
                    .as_object_mut()
                    .unwrap()
                    .remove("authorization");
            }
        }
        let request: lambda_http::request::LambdaRequest = serde_json::from_value(v).unwrap();
        lambda_http::Request::from(request)
    };
    let bearer = format!("Bearer {}", token(&w, ORG, "alice", "gold"));
    let req = event("page_size=50", Some(bearer));
    let response =
        metered::edge::hosted::to_http(s.handle(&metered::edge::hosted::from_http(&req)).await);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("etag"));
    let text = match response.body() {
        lambda_http::Body::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        ids(b["rows"].as_array().unwrap())
            .into_iter()
            .collect::<BTreeSet<_>>(),
        tier_ids(&w, "gold")
    );
    let response = metered::edge::hosted::to_http(
        s.handle(&metered::edge::hosted::from_http(&event("", None)))
            .await,
    );
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

/// A row store that fails, naming its table, as an adapter's error would.
struct BrokenRows;

#[async_trait::async_trait]
impl metered::store::HostedRows for BrokenRows {
    async fn index_state(&self, _: &Tenant, _: &str, _: &[String]) -> metered::Result<IndexState> {
        Ok(IndexState::default())
    }
    async fn part_rows_after(
        &self,
        _: &Tenant,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> metered::Result<Vec<OutboxRow>> {
        unreachable!("never indexed")
    }
    async fn rows_version(&self, _: &metered::Tenant, _: &str) -> metered::Result<u64> {
        Err(metered::Error::Config(
            "table prod-metered-internal: ProvisionedThroughputExceeded".into(),
        ))
    }
    async fn rows_after(
        &self,
        _: &metered::Tenant,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> metered::Result<Vec<metered::store::OutboxRow>> {
        Err(metered::Error::Config(
            "table prod-metered-internal: ProvisionedThroughputExceeded".into(),
        ))
    }
}

/// A failing store answers 503 "retry", and nothing of its error reaches
/// the caller (it named the table before).
#[tokio::test]
async fn a_store_failure_is_a_503_without_internal_detail() {
    let w = world(Adapter::Sqlite).await;
    let service = HostedService::new(
        &w.svc.config,
        secrets(),
        Arc::new(BrokenRows),
        w.shared.clone(),
    )
    .unwrap();
    let token = token_with(
        &w,
        SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "alice", "tier": "gold"}),
    );
    let r = service.handle(&get("vips", "", Some(&token))).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("retry"), "{}", r.body);
    assert!(
        !r.body.contains("prod-metered") && !r.body.contains("Throughput"),
        "{}",
        r.body
    );
}

/// Rows made up on the fly, counting what a request reads.
struct Synthetic {
    rows: Vec<metered::store::OutboxRow>,
    read: std::sync::atomic::AtomicUsize,
}

impl Synthetic {
    fn new(n: usize, row: impl Fn(usize) -> Value) -> Self {
        Self {
            rows: (0..n)
                .map(|i| metered::store::OutboxRow {
                    id: format!("r{i:06}"),
                    change: RowChange::Insert(row(i)),
                    stamp: "s".into(),
                })
                .collect(),
            read: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl metered::store::HostedRows for Synthetic {
    async fn index_state(&self, _: &Tenant, _: &str, _: &[String]) -> metered::Result<IndexState> {
        Ok(IndexState::default())
    }
    async fn part_rows_after(
        &self,
        _: &Tenant,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> metered::Result<Vec<OutboxRow>> {
        unreachable!("never indexed")
    }
    async fn rows_version(&self, _: &metered::Tenant, _: &str) -> metered::Result<u64> {
        Ok(1)
    }
    async fn rows_after(
        &self,
        _: &metered::Tenant,
        _: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<metered::store::OutboxRow>> {
        let out: Vec<_> = self
            .rows
            .iter()
            .filter(|r| after.is_none_or(|a| r.id.as_str() > a))
            .take(limit as usize)
            .cloned()
            .collect();
        self.read
            .fetch_add(out.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }
}

/// Follows one caller's pages to the end: (rows, bodies of each page).
async fn pages(service: &HostedService, ds: &str, bearer: &str, size: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let query = match &token {
            None => format!("page_size={size}"),
            Some(t) => format!("page_size={size}&page_token={t}"),
        };
        let r = service.handle(&get(ds, &query, Some(bearer))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.len() < 6_000_000,
            "under Lambda's response limit: {} bytes",
            r.body.len()
        );
        let b = body(&r);
        token = b["next_page_token"].as_str().map(str::to_string);
        out.push(b);
        if token.is_none() {
            return out;
        }
        assert!(out.len() < 1_000, "pages end");
    }
}

/// The bounds of one request (#31): rows of 60 KB at 200 a page would be
/// 12 MB, over Lambda's 6 MB; the page is cut under the byte cap with a
/// token and says so, and the pages still carry every row exactly once. A
/// filter that keeps 3 rows of 12,000 reads at most its bound of rows per
/// request: early pages come back empty, say why, and go on.
#[tokio::test]
async fn a_response_stays_under_its_byte_cap_and_a_request_reads_a_bounded_number_of_rows() {
    let w = world(Adapter::Sqlite).await;
    let big = Arc::new(Synthetic::new(
        200,
        |i| json!({"id": format!("r{i:06}"), "pad": "x".repeat(60_000)}),
    ));
    let service =
        HostedService::new(&w.svc.config, secrets(), big.clone(), w.shared.clone()).unwrap();
    let feed = token_with(
        &w,
        OTHER_SECRET,
        Algorithm::HS256,
        json!({"org": ORG, "sub": "alice"}),
    );
    let got = pages(&service, "feed", &feed, 200).await;
    assert_eq!(
        got[0]["cut_short"], "bytes",
        "{}",
        got[0]["next_page_token"]
    );
    let first = got[0]["rows"].as_array().unwrap().len();
    assert!((50..200).contains(&first), "{first} rows fit");
    let all: Vec<Value> = got
        .iter()
        .flat_map(|p| p["rows"].as_array().unwrap().clone())
        .collect();
    let distinct: BTreeSet<String> = ids(&all).into_iter().collect();
    assert_eq!((all.len(), distinct.len()), (200, 200), "each row once");

    let sparse = Arc::new(Synthetic::new(
        12_000,
        |i| json!({"id": format!("r{i:06}"), "tier": if i >= 11_997 { "gold" } else { "bronze" }}),
    ));
    let service =
        HostedService::new(&w.svc.config, secrets(), sparse.clone(), w.shared.clone()).unwrap();
    let gold = token(&w, ORG, "bob", "gold");
    let got = pages(&service, "vips", &gold, 50).await;
    assert_eq!(got[0]["rows"], json!([]), "{}", got[0]);
    assert_eq!(got[0]["cut_short"], "rows_read", "{}", got[0]);
    let all: Vec<Value> = got
        .iter()
        .flat_map(|p| p["rows"].as_array().unwrap().clone())
        .collect();
    assert_eq!(ids(&all), ["r011997", "r011998", "r011999"]);
    let read = sparse.read.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        read <= got.len() * metered::handlers::MAX_ROWS_READ.min(10 * 50),
        "{read} rows read over {} requests",
        got.len()
    );
    assert!(read >= 12_000, "every row was read once: {read}");
}
