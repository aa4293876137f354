//! Hosted GET: requests per second and p50/p99 of one page, through
//! `metered serve`'s HTTP stack on SQLite and through the handler on
//! DynamoDB, at 100, 1,000 and 10,000 rows; then, at 10,000 rows, p99 per
//! page size. Every request carries a fresh JWT check and the row filter
//! (half the rows pass), as the platform's sync would.

use super::{row, uuid_like, Latencies};
use metered::connector::Secret;
use metered::handlers::{HostedRequest, HostedService};
use metered::store::{HostedRows, IndexState};
use metered::store::{Outbox, RowChange};
use metered::AppConfig;
use metered::Tenant;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-hs256-key-0123456789abcdef0123456789";
const CONCURRENCY: usize = 8;
const REQUESTS: usize = 400;

const CONFIG: &str = r#"
[app]
name = "bench"
base_url = "http://127.0.0.1:1/"
[app.limits]
per_day = 100
max_concurrent = 1
[record_types.customers]
list_path = "/customers"
pagination = { style = "page", param = "page" }
max_page_size = 100
records_pointer = "/data"
id_pointer = "/id"
[workflows.w]
trigger = { record_type = "customers" }
[[workflows.w.actions]]
kind = "datasource_push"
datasource = "rows"
row = { id = "{{ record.id }}" }
[datasources.rows]
mode = "hosted"
secret = { env = "UNUSED" }
filter = "row.team == user.team"
max_page_size = 1000
"#;

async fn fill<S: Outbox + ?Sized>(
    store: &S,
    key: &Tenant,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows: Vec<metered::store::RowWrite> = (0..n)
        .map(|i| {
            let id = format!("row_{i:06}");
            let change = RowChange::Insert(serde_json::json!({
                "id": id, "team": if i % 2 == 0 { "a" } else { "b" },
                "customer": format!("Customer {i}"), "amount_cents": i * 100,
            }));
            metered::store::RowWrite::new(id, change)
        })
        .collect();
    for chunk in rows.chunks(500) {
        store
            .put_rows(key, "rows", chunk, chrono::Utc::now())
            .await?;
    }
    Ok(())
}

fn token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"org": "bench", "sub": "u1", "team": "a", "exp": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

fn service(
    config: &AppConfig,
    store: Arc<dyn HostedRows>,
) -> Result<HostedService, metered::Error> {
    let secrets = BTreeMap::from([("rows".to_string(), Secret::new(SECRET))]);
    HostedService::new(config, secrets, store, Arc::new(metered::SystemClock))
}

/// `REQUESTS` requests from `CONCURRENCY` tasks: (rps, p50 ms, p99 ms).
async fn measure<F, Fut>(one: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..REQUESTS / CONCURRENCY {
                out.push(one().await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64();
    let mut l = Latencies(all);
    (rps, l.pct(0.5), l.pct(0.99))
}

fn request(page_size: u32) -> HostedRequest {
    HostedRequest {
        method: "GET".into(),
        path: "/datasources/rows/rows".into(),
        query: Some(format!("page_size={page_size}")),
        authorization: Some(format!("Bearer {}", token())),
        if_none_match: None,
    }
}

/// Through the handler directly (what the Lambda runs per event).
async fn handler(service: Arc<HostedService>, page_size: u32) -> (f64, f64, f64) {
    measure(move || {
        let service = service.clone();
        async move {
            let t = Instant::now();
            let r = service.handle(&request(page_size)).await;
            debug_assert_eq!(r.status, 200);
            t.elapsed()
        }
    })
    .await
}

/// Through HTTP: `metered serve`'s router on a loopback port.
async fn http(
    service: Arc<HostedService>,
    page_size: u32,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, crate::serve::router(service)).await;
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/datasources/rows/rows?page_size={page_size}");
    let figures = measure(move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t = Instant::now();
            if let Ok(r) = client.get(&url).bearer_auth(token()).send().await {
                let _ = r.bytes().await;
            }
            t.elapsed()
        }
    })
    .await;
    server.abort();
    Ok(figures)
}

fn print(what: &str, (rps, p50, p99): (f64, f64, f64)) {
    row(
        what,
        format!("{rps:>7.0} req/s   p50 {p50:>6.2} ms   p99 {p99:>6.2} ms"),
    );
}

pub(super) async fn section(dynamodb_url: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    println!("\nHosted GET ({REQUESTS} requests of one page, {CONCURRENCY} at a time, half the rows pass the filter)");
    let config = AppConfig::parse(CONFIG)?;
    let key = Tenant::new("bench", "bench");
    let dir = std::env::temp_dir().join(format!("metered-bench-hosted-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let mut sweep = Vec::new();
    for n in [100usize, 1_000, 10_000] {
        let db = metered::adapters::sqlite::Db::open(dir.join(format!("{n}.sqlite")))?;
        let store = Arc::new(metered::adapters::sqlite::SqliteStore::new(db));
        fill(store.as_ref(), &key, n).await?;
        let s = Arc::new(service(&config, store)?);
        print(
            &format!("metered serve (HTTP, SQLite), {n} rows, page 100"),
            http(s.clone(), 100).await?,
        );
        if n == 10_000 {
            sweep.push(("metered serve (HTTP, SQLite)", s));
        }
    }
    if let Some(url) = dynamodb_url {
        let cfg = metered::adapters::aws::local_sdk_config(url);
        for n in [100usize, 1_000, 10_000] {
            let table = metered::adapters::aws::Table::new(
                aws_sdk_dynamodb::Client::new(&cfg),
                format!("metered-bench-hosted-{}", uuid_like()),
            );
            table.create_if_missing().await?;
            let store = Arc::new(metered::adapters::aws::DynamoStore::new(table));
            fill(store.as_ref(), &key, n).await?;
            let s = Arc::new(service(&config, store)?);
            print(
                &format!("handler on DynamoDB, {n} rows, page 100"),
                handler(s.clone(), 100).await,
            );
            if n == 10_000 {
                sweep.push(("handler on DynamoDB", s));
            }
        }
    }
    for (what, s) in sweep {
        let mut under = None;
        for page in [50u32, 100, 250, 500, 1000] {
            let f = if what.starts_with("handler") {
                handler(s.clone(), page).await
            } else {
                http(s.clone(), page).await?
            };
            print(&format!("{what}, 10000 rows, page {page}"), f);
            if f.2 < 50.0 {
                under = Some(page);
            }
        }
        row(
            &format!("{what}: largest page with p99 < 50 ms"),
            under.map_or("none measured".into(), |p| format!("{p} rows")),
        );
    }
    per_user(&dir, dynamodb_url).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A row store that counts the rows it hands out.
struct Counting {
    inner: Arc<dyn HostedRows>,
    read: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl HostedRows for Counting {
    async fn rows_version(&self, key: &Tenant, datasource: &str) -> metered::Result<u64> {
        self.inner.rows_version(key, datasource).await
    }
    async fn rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<metered::store::OutboxRow>> {
        let rows = self.inner.rows_after(key, datasource, after, limit).await?;
        self.read
            .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(rows)
    }
    async fn index_state(
        &self,
        key: &Tenant,
        datasource: &str,
        parts: &[String],
    ) -> metered::Result<IndexState> {
        self.inner.index_state(key, datasource, parts).await
    }
    async fn part_rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        part: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<metered::store::OutboxRow>> {
        let rows = self
            .inner
            .part_rows_after(key, datasource, part, after, limit)
            .await?;
        self.read
            .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(rows)
    }
}

/// Users sampled per size in [`per_user`].
const USERS: usize = 50;

fn customer_token(customer: usize) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"org": "bench", "sub": format!("u{customer}"), "customer": format!("c{customer}"), "exp": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// One user's whole row set (every page, 100 a page): (rows served,
/// requests, the first page's ETag).
async fn user_rows(service: &HostedService, customer: usize) -> (usize, usize, String) {
    let bearer = format!("Bearer {}", customer_token(customer));
    let (mut served, mut requests, mut first_etag) = (0, 0, String::new());
    let mut token: Option<String> = None;
    loop {
        let query = match &token {
            None => "page_size=100".to_string(),
            Some(t) => format!("page_size=100&page_token={t}"),
        };
        let r = service
            .handle(&HostedRequest {
                method: "GET".into(),
                path: "/datasources/rows/rows".into(),
                query: Some(query),
                authorization: Some(bearer.clone()),
                if_none_match: None,
            })
            .await;
        requests += 1;
        if requests == 1 {
            first_etag = r
                .headers
                .iter()
                .find(|(k, _)| *k == "etag")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
        }
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        served += body["rows"].as_array().map_or(0, Vec::len);
        token = body["next_page_token"].as_str().map(str::to_string);
        if token.is_none() || r.status != 200 {
            return (served, requests, first_etag);
        }
    }
}

/// The issue's shape: a Data Source of N rows, users with 10 rows each
/// (`row.customer == user.customer`, an indexed filter), each user fetching
/// their whole row set as the platform's sync does; rows read per row
/// served; and after one customer's rows change, how many users still get
/// 304. On SQLite, and on DynamoDB Local when given.
async fn per_user(
    dir: &std::path::Path,
    dynamodb_url: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = AppConfig::parse(&CONFIG.replace(
        "filter = \"row.team == user.team\"",
        "filter = \"row.customer == user.customer\"",
    ))?;
    println!("\nHosted GET per user ({USERS} users with 10 rows each, every page of 100, handler on SQLite)");
    for n in [1_000usize, 10_000, 100_000] {
        let db = metered::adapters::sqlite::Db::open(dir.join(format!("users-{n}.sqlite")))?;
        let sqlite = Arc::new(metered::adapters::sqlite::SqliteStore::new(db));
        per_user_at(&config, sqlite, n).await?;
    }
    if let Some(url) = dynamodb_url {
        println!("\nHosted GET per user ({USERS} users with 10 rows each, every page of 100, handler on DynamoDB Local)");
        let cfg = metered::adapters::aws::local_sdk_config(url);
        for n in [1_000usize, 10_000, 100_000] {
            let table = metered::adapters::aws::Table::new(
                aws_sdk_dynamodb::Client::new(&cfg),
                format!("metered-bench-users-{}", uuid_like()),
            );
            table.create_if_missing().await?;
            let store = Arc::new(metered::adapters::aws::DynamoStore::new(table));
            per_user_at(&config, store, n).await?;
        }
    }
    Ok(())
}

async fn per_user_at<S: Outbox + HostedRows + 'static>(
    config: &AppConfig,
    store: Arc<S>,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let key = Tenant::new("bench", "bench");
    let index = config.datasource("rows")?.row_index();
    let write = |i: usize| {
        let id = format!("row_{i:06}");
        metered::store::RowWrite::new(
            id.clone(),
            RowChange::Insert(serde_json::json!({
                "id": id, "customer": format!("c{}", i / 10), "amount_cents": i * 100,
            })),
        )
    };
    let rows: Vec<_> = (0..n).map(write).collect();
    for chunk in rows.chunks(500) {
        store
            .put_rows_indexed(&key, "rows", chunk, index.as_ref(), chrono::Utc::now())
            .await?;
    }
    let counting = Arc::new(Counting {
        inner: store.clone(),
        read: Default::default(),
    });
    let s = service(config, counting.clone())?;
    // Users spread over the whole id range.
    let users: Vec<usize> = (0..USERS).map(|u| u * (n / 10) / USERS).collect();
    let started = Instant::now();
    let mut times = Vec::new();
    let (mut served, mut requests) = (0usize, 0usize);
    let mut etags = Vec::new();
    for c in &users {
        let t = Instant::now();
        let (rows, reqs, etag) = user_rows(&s, *c).await;
        times.push(t.elapsed());
        served += rows;
        requests += reqs;
        etags.push(etag);
    }
    let users_per_sec = users.len() as f64 / started.elapsed().as_secs_f64();
    let read = counting.read.load(std::sync::atomic::Ordering::Relaxed);
    let mut l = Latencies(times);
    row(
        &format!("{n} rows: a user's whole row set"),
        format!(
            "{users_per_sec:>7.1} users/s   p50 {:>7.2} ms   p99 {:>7.2} ms   {:.1} requests/user   {:.2} rows read per row served",
            l.pct(0.5),
            l.pct(0.99),
            requests as f64 / users.len() as f64,
            read as f64 / served.max(1) as f64
        ),
    );
    // One customer's rows change; who still gets 304?
    let mut changed = write(users[0] * 10);
    changed.change = RowChange::Insert(serde_json::json!({
        "id": changed.id, "customer": format!("c{}", users[0]), "amount_cents": 1,
    }));
    store
        .put_rows_indexed(&key, "rows", &[changed], index.as_ref(), chrono::Utc::now())
        .await?;
    let mut not_modified = 0;
    for (c, etag) in users.iter().zip(&etags) {
        let r = s
            .handle(&HostedRequest {
                method: "GET".into(),
                path: "/datasources/rows/rows".into(),
                query: Some("page_size=100".into()),
                authorization: Some(format!("Bearer {}", customer_token(*c))),
                if_none_match: Some(etag.clone()),
            })
            .await;
        not_modified += usize::from(r.status == 304);
    }
    row(
        &format!("{n} rows: after one customer's rows changed"),
        format!("{not_modified} of {} users answered 304", users.len()),
    );
    Ok(())
}
