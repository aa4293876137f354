//! Hosted rows: paged by id and version, per org.

use super::{orgs, Fixture};
use crate::afternoon;
use metered::store::{OutboxRow, RowChange, RowWrite};
use std::future::Future;

/// Hosted GET's reads: rows (tombstones included) after a cursor in id
/// byte order, and a version that changes with every write of that org's
/// Data Source only.
pub async fn hosted_rows_page_by_id_and_version_per_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    assert_eq!(s.hosted.rows_version(&a, "ds").await.unwrap(), 0);
    let ins = |id: &str| {
        RowWrite::new(
            id.to_string(),
            RowChange::Insert(serde_json::json!({"id": id})),
        )
    };
    s.records
        .put_rows(
            &a,
            "ds",
            &[ins("r2"), ins("r1"), ins("r10"), ins("R0")],
            now,
        )
        .await
        .unwrap();
    s.records
        .put_rows(&b, "ds", &[ins("r1")], now)
        .await
        .unwrap();
    let v1 = s.hosted.rows_version(&a, "ds").await.unwrap();
    assert!(v1 > 0);
    let ids = |rows: Vec<OutboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    // Byte order on both adapters: upper case first, "r10" before "r2".
    assert_eq!(
        ids(s.hosted.rows_after(&a, "ds", None, 10).await.unwrap()),
        ["R0", "r1", "r10", "r2"]
    );
    assert_eq!(
        ids(s.hosted.rows_after(&a, "ds", Some("r1"), 2).await.unwrap()),
        ["r10", "r2"]
    );
    assert!(s
        .hosted
        .rows_after(&a, "ds", Some("r2"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s.hosted.rows_after(&b, "ds", None, 10).await.unwrap()),
        ["r1"]
    );
    assert!(s
        .hosted
        .rows_after(&a, "other", None, 10)
        .await
        .unwrap()
        .is_empty());
    // A delete stays as a tombstone; the version moves for org A only.
    let vb = s.hosted.rows_version(&b, "ds").await.unwrap();
    s.records
        .put_rows(&a, "ds", &[RowWrite::new("r1", RowChange::Delete)], now)
        .await
        .unwrap();
    let rows = s.hosted.rows_after(&a, "ds", Some("R0"), 1).await.unwrap();
    assert_eq!(rows[0].change, RowChange::Delete);
    assert!(s.hosted.rows_version(&a, "ds").await.unwrap() > v1);
    assert_eq!(s.hosted.rows_version(&b, "ds").await.unwrap(), vb);
}
