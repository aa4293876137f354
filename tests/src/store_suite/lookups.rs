//! Lookup claims: reclaimable by their claimer only, scoped by org.

use super::{orgs, Fixture};
use crate::afternoon;
use chrono::Duration;
use std::future::Future;

pub async fn lookup_claims_are_reclaimable_by_their_claimer_only<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, _) = orgs();
    let now = afternoon();
    let hour = Duration::hours(1);
    let ids: Vec<String> = ["cus_1", "cus_2", "cus_3"].map(String::from).to_vec();
    let first = s
        .records
        .claim_lookups(&a, "customers", &ids[..2], "job-1:p0", now, hour)
        .await;
    assert_eq!(first.unwrap(), ids[..2].to_vec());
    // The page failed before its checkpoint moved: its re-run claims again.
    let later = now + Duration::seconds(30);
    let again = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-1:p0", later, hour)
        .await;
    assert_eq!(again.unwrap(), ids, "its own claims, and the new id");
    // A page that runs again unchanged finds its claims by reading them.
    let held = s.records.get(&a, "customers", &ids).await.unwrap();
    let mut claimers: Vec<(&str, Option<&str>)> = held
        .iter()
        .map(|r| (r.id.as_str(), r.lookup_claimed_by.as_deref()))
        .collect();
    claimers.sort();
    assert_eq!(
        claimers,
        ids.iter()
            .map(|id| (id.as_str(), Some("job-1:p0")))
            .collect::<Vec<_>>()
    );
    // Another claimer gets none of them within min_relookup…
    let other = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-2", later, hour)
        .await;
    assert_eq!(other.unwrap(), Vec::<String>::new());
    // …and all of them after it.
    let after = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-2", later + hour, hour)
        .await;
    assert_eq!(after.unwrap(), ids);
    let held = s.records.get(&a, "customers", &ids[..1]).await.unwrap();
    assert_eq!(held[0].lookup_claimed_by.as_deref(), Some("job-2"));
}

pub async fn lookup_claims_are_scoped_by_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let ids = vec!["cus_1".to_string()];
    let hour = Duration::hours(1);
    assert_eq!(
        s.records
            .claim_lookups(&a, "customers", &ids, "job-a", now, hour)
            .await
            .unwrap(),
        ids
    );
    assert_eq!(
        s.records
            .claim_lookups(&b, "customers", &ids, "job-b", now, hour)
            .await
            .unwrap(),
        ids,
        "org B's cus_1 is not org A's"
    );
}
