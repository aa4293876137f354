//! DynamoDB writes applied twice: the response of a write that succeeded is
//! lost, the SDK sends it again, DynamoDB Local applies it again. The quota
//! must take once, release once, and repair a `lease_count` that drifted
//! from its leases (before these fixes an acquire applied twice added 2 to
//! `lease_count` for one lease, and after `max_concurrent` such events the
//! org was denied forever).

use aws_sdk_dynamodb::types::AttributeValue;
use metered::adapters::aws::DynamoQuota;
use metered::adapters::aws::Table;
use metered::quota::{Acquire, Grant, Limits, QuotaKey, QuotaStore};
use metered_tests::lost_responses::{dynamodb_client, Losses};
use metered_tests::{afternoon, dynamo_table};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn granted(a: Acquire) -> Grant {
    match a {
        Acquire::Granted(g) => g,
        Acquire::Denied(d) => panic!("expected a grant, got {d:?}"),
    }
}

async fn setup() -> (Table, DynamoQuota, Arc<Losses>, QuotaKey) {
    let table = dynamo_table().await;
    let losses = Arc::new(Losses::default());
    let quota = DynamoQuota::new(Table::new(
        dynamodb_client(losses.clone()),
        table.name.clone(),
    ));
    let key = QuotaKey::new(format!("org{}", uuid::Uuid::new_v4().simple()), "crm");
    (table, quota, losses, key)
}

/// `lease_count` as stored, read with a client that loses nothing.
async fn lease_count(table: &Table, key: &QuotaKey) -> i64 {
    let item = table
        .client
        .get_item()
        .table_name(&table.name)
        .key(
            "pk",
            AttributeValue::S(format!("quota#{}#{}", key.org, key.app)),
        )
        .key("sk", AttributeValue::S("quota".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_default();
    item.get("lease_count")
        .and_then(|v| v.as_n().ok())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn an_acquire_and_a_release_applied_twice_count_once() {
    let (table, quota, losses, key) = setup().await;
    let limits = Limits::new(Some(100), None, None, 3).unwrap();
    let now = afternoon();
    losses.lose("UpdateItem", 1);
    let one = granted(quota.acquire(&key, &limits, 1, now).await.unwrap());
    assert_eq!(
        losses.lost.load(Ordering::SeqCst),
        1,
        "the response was lost"
    );
    let state = quota.state(&key, &limits, now).await.unwrap();
    assert_eq!(state.used.get("d2026-11-22"), Some(&1), "charged once");
    assert_eq!(state.live_leases, 1);
    assert_eq!(lease_count(&table, &key).await, 1, "one lease counted once");
    // A reservation of 5 whose response is lost too, then released twice
    // (its release's response lost as well): 2 used, 3 refunded once.
    losses.lose("UpdateItem", 3);
    let five = granted(quota.acquire(&key, &limits, 5, now).await.unwrap());
    assert_eq!(
        quota
            .state(&key, &limits, now)
            .await
            .unwrap()
            .used
            .get("d2026-11-22"),
        Some(&6)
    );
    losses.lose("UpdateItem", 5);
    quota.release(&five, 2).await.unwrap();
    assert_eq!(losses.lost.load(Ordering::SeqCst), 3);
    quota.release(&one, 1).await.unwrap();
    let state = quota.state(&key, &limits, now).await.unwrap();
    assert_eq!(
        state.used.get("d2026-11-22"),
        Some(&3),
        "1 + 2 used, 3 refunded once"
    );
    assert_eq!(state.live_leases, 0);
    assert_eq!(lease_count(&table, &key).await, 0);
}

#[tokio::test]
async fn a_lease_count_that_drifted_is_repaired_from_the_leases() {
    let (table, quota, _losses, key) = setup().await;
    let limits = Limits::new(Some(100), None, None, 3).unwrap();
    let now = afternoon();
    // Left by an earlier version: three counted leases, none held.
    table
        .client
        .put_item()
        .table_name(&table.name)
        .item(
            "pk",
            AttributeValue::S(format!("quota#{}#{}", key.org, key.app)),
        )
        .item("sk", AttributeValue::S("quota".into()))
        .item("lease_count", AttributeValue::N("3".into()))
        .send()
        .await
        .unwrap();
    let g = granted(quota.acquire(&key, &limits, 1, now).await.unwrap());
    assert_eq!(
        lease_count(&table, &key).await,
        1,
        "repaired, then this lease"
    );
    quota.release(&g, 1).await.unwrap();
    assert_eq!(lease_count(&table, &key).await, 0);
}
