//! `metered serve`: Hosted GET from the database a run wrote.

use super::*;

/// `metered serve` answers Hosted GET from the database a `metered run`
/// wrote (two processes, one database): the bundled app with its Data
/// Source hosted pushes nothing, serve returns every row its workflow
/// decided, answers a re-sync with 304, and sees the rows another process
/// writes while it runs. The simulated API is gone by then: serving needs
/// no API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_hosted_get_from_the_database_a_run_writes() {
    use metered::store::HostedRows;
    use metered::store::{Outbox, RowChange};
    let dir = tmp("serve");
    let config = format!(
        "{}\n[datasources.gold_invoices]\nmode = \"hosted\"\nsecret = {{ env = \"GOLD_JWT\" }}\n",
        include_str!("../../examples/booking.toml")
    );
    std::fs::write(dir.join("app.toml"), config).unwrap();
    let out = metered(
        &[
            "run",
            "--config",
            "app.toml",
            "--sim",
            "--simulate",
            "2",
            "--db",
            "t.sqlite",
            "--json",
        ],
        &dir,
    );
    let report = json(&out);
    assert_eq!(report["report"]["dead_lettered"], 0, "{report}");
    assert!(
        report["report"]["done"]
            .get("action-datasource-push")
            .is_none(),
        "a hosted Data Source is never flushed: {report}"
    );
    assert!(
        report["report"]["done"]["workflow"].as_u64().unwrap() > 0,
        "{report}"
    );
    let db = metered::adapters::sqlite::Db::open(dir.join("t.sqlite")).unwrap();
    let store = metered::adapters::sqlite::SqliteStore::new(db);
    let key = metered::QuotaKey::new("acme", "sim-booking");
    let expected: std::collections::BTreeSet<String> = store
        .rows_after(&key, "gold_invoices", None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.change, RowChange::Insert(_)))
        .map(|r| r.id)
        .collect();
    assert!(
        expected.len() > 10,
        "the workflow decided rows: {expected:?}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args([
            "serve", "--config", "app.toml", "--db", "t.sqlite", "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .env("GOLD_JWT", "gold-hs256-key-for-the-test-0123456789abcdef")
        .env(
            "METERED_HOSTED_JWT_SECRET",
            "customer-invoices-hs256-key-0123456789abcdef",
        )
        .current_dir(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 30,
            "metered serve did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"org": "acme", "sub": "u1", "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"gold-hs256-key-for-the-test-0123456789abcdef"),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/datasources/gold_invoices/rows?page_size=1000");
    let http = reqwest::Client::new();
    let get = |etag: Option<String>| {
        let mut r = http.get(&url).bearer_auth(&token);
        if let Some(e) = etag {
            r = r.header("if-none-match", e);
        }
        r.send()
    };
    let r = get(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    let served: std::collections::BTreeSet<String> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(served, expected);
    assert_eq!(get(Some(etag.clone())).await.unwrap().status(), 304);
    // The other process writes a row; the next re-sync gets it.
    store
        .put_rows(
            &key,
            "gold_invoices",
            &[metered::store::RowWrite::new(
                "inv_new",
                RowChange::Insert(serde_json::json!({"id": "inv_new"})),
            )],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let r = get(Some(etag)).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rows"].as_array().unwrap().len(), expected.len() + 1);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
