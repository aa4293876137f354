//! The Data Source outbox: the last write per id wins, a chunk is fixed once
//! and leaves only when accepted, a refused chunk is split, flushes are
//! marked once.

use super::{orgs, Fixture};
use crate::afternoon;
use chrono::Duration;
use metered::store::{OutboxRow, RowChange, RowWrite};
use std::future::Future;

fn insert(v: i64) -> RowChange {
    RowChange::Insert(serde_json::json!({ "id": "inv_1", "v": v }))
}

fn rows(changes: &[(&str, RowChange)]) -> Vec<RowWrite> {
    changes
        .iter()
        .map(|(id, c)| RowWrite::new(*id, c.clone()))
        .collect()
}

/// Two workflow jobs acting on consecutive versions of a record may write
/// its row in either order: the row made from the newer version stands
/// (by its source record's `updated_at`), and a row without a source time
/// is a plain last write. Per org.
pub async fn an_outbox_row_from_an_older_version_never_replaces_a_newer_one<
    F: Future<Output = Fixture>,
>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let at = |mins: i64| Some(now - Duration::minutes(mins));
    let write = |v: i64, source| vec![RowWrite::new("inv_1", insert(v)).from_source_at(source)];
    o.put_rows(&a, "vips", &write(3, at(1)), now).await.unwrap();
    o.put_rows(&a, "vips", &write(2, at(5)), now).await.unwrap();
    o.put_rows(&b, "vips", &write(2, at(5)), now).await.unwrap();
    let row = |key| async move {
        o.pending_rows(key, "vips", 10).await.unwrap()[0]
            .change
            .clone()
    };
    assert_eq!(row(&a).await, insert(3), "the newer version's row stands");
    assert_eq!(row(&b).await, insert(2), "org B's row is its own");
    o.put_rows(&a, "vips", &write(4, at(0)), now).await.unwrap();
    assert_eq!(row(&a).await, insert(4));
    o.put_rows(&a, "vips", &rows(&[("inv_1", RowChange::Delete)]), now)
        .await
        .unwrap();
    assert_eq!(
        row(&a).await,
        RowChange::Delete,
        "no source time: last write"
    );
}

/// Last write wins per row id, within one write and across writes; two
/// orgs with the same row id and Data Source name never see each other's.
pub async fn outbox_rows_keep_the_last_write_per_id_and_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    // Org A: insert then delete (one write) → delete.
    o.put_rows(
        &a,
        "vips",
        &rows(&[("inv_1", insert(1)), ("inv_1", RowChange::Delete)]),
        now,
    )
    .await
    .unwrap();
    // Org B: delete then insert (two writes) → insert.
    o.put_rows(&b, "vips", &rows(&[("inv_1", RowChange::Delete)]), now)
        .await
        .unwrap();
    o.put_rows(&b, "vips", &rows(&[("inv_1", insert(2))]), now)
        .await
        .unwrap();
    // Org A again: two inserts of another id → the newer.
    o.put_rows(&a, "vips", &rows(&[("inv_2", insert(3))]), now)
        .await
        .unwrap();
    o.put_rows(&a, "vips", &rows(&[("inv_2", insert(4))]), now)
        .await
        .unwrap();
    let pa = o.pending_rows(&a, "vips", 10).await.unwrap();
    let pb = o.pending_rows(&b, "vips", 10).await.unwrap();
    let view = |p: &[OutboxRow]| {
        p.iter()
            .map(|r| RowWrite::new(r.id.clone(), r.change.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(&pa),
        rows(&[("inv_1", RowChange::Delete), ("inv_2", insert(4))])
    );
    assert_eq!(view(&pb), rows(&[("inv_1", insert(2))]));
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 2);
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 1);
    assert_eq!(o.pending_count(&a, "other").await.unwrap(), 0);
    assert_eq!(o.pending_rows(&a, "vips", 1).await.unwrap().len(), 1);
    assert_ne!(pa[0].stamp, pb[0].stamp, "every write gets its own stamp");
}

/// One chunk in flight per outbox, numbered once; the ack removes only
/// rows not written since, clears the chunk and counts it once; another
/// org's outbox with the same ids is untouched.
pub async fn an_outbox_chunk_is_fixed_once_and_leaves_only_when_accepted<
    F: Future<Output = Fixture>,
>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let five: Vec<RowWrite> = (1..=5)
        .map(|i| RowWrite::new(format!("inv_{i}"), insert(i)))
        .collect();
    o.put_rows(&a, "vips", &five, now).await.unwrap();
    o.put_rows(&b, "vips", &five, now).await.unwrap();
    let first = o.pending_rows(&a, "vips", 3).await.unwrap();
    let chunk = o
        .begin_chunk(&a, "vips", &first)
        .await
        .unwrap()
        .expect("no chunk in flight yet");
    assert_eq!((chunk.seq, chunk.rows.clone()), (0, first.clone()));
    assert_eq!(
        o.begin_chunk(&a, "vips", &first).await.unwrap(),
        None,
        "one chunk in flight at a time"
    );
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(
        state.inflight.as_ref(),
        Some(&chunk),
        "kept with its content"
    );
    assert_eq!(state.next_seq, 1);
    // inv_2 is written again while its chunk is at the API.
    o.put_rows(&a, "vips", &rows(&[("inv_2", RowChange::Delete)]), now)
        .await
        .unwrap();
    let later = now + Duration::seconds(5);
    o.ack_chunk(&a, "vips", &chunk, later).await.unwrap();
    o.ack_chunk(&a, "vips", &chunk, later).await.unwrap();
    let left: Vec<RowWrite> = o
        .pending_rows(&a, "vips", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| RowWrite::new(r.id, r.change))
        .collect();
    assert_eq!(
        left,
        rows(&[
            ("inv_2", RowChange::Delete),
            ("inv_4", insert(4)),
            ("inv_5", insert(5))
        ]),
        "the rewritten row stays for the next flush"
    );
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(state.inflight, None);
    assert_eq!(state.last_flush, Some(later));
    assert_eq!(
        (state.pushes, state.rows_pushed),
        (1, 3),
        "a repeated ack counts once"
    );
    let next = o
        .begin_chunk(&a, "vips", &o.pending_rows(&a, "vips", 10).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 1, "chunk numbers are never reused");
    // Org B: same ids, its own outbox and numbering.
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 5);
    let b_chunk = o
        .begin_chunk(&b, "vips", &o.pending_rows(&b, "vips", 10).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b_chunk.seq, b_chunk.rows.len()), (0, 5));
}

/// A refused chunk of several rows clears the in-flight mark and sets the
/// probe; a refused single row leaves the waiting rows for the refused
/// list (unless written since), which lists, retries (back to waiting,
/// a newer write standing) and drops rows; another org's outbox with the
/// same ids is untouched.
pub async fn a_refused_chunk_is_split_and_its_row_set_aside_per_org<F: Future<Output = Fixture>>(
    make: F,
) {
    use metered::store::Refusal;
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let four: Vec<RowWrite> = (1..=4)
        .map(|i| RowWrite::new(format!("inv_{i}"), insert(i)))
        .collect();
    o.put_rows(&a, "vips", &four, now).await.unwrap();
    o.put_rows(&b, "vips", &four, now).await.unwrap();
    let chunk = o
        .begin_chunk(&a, "vips", &o.pending_rows(&a, "vips", 4).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    let probe = metered::store::Probe {
        rows: 2,
        until: "inv_4".into(),
    };
    o.refuse_chunk(
        &a,
        "vips",
        &chunk,
        &Refusal::Split {
            probe: probe.clone(),
        },
        now,
    )
    .await
    .unwrap();
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!((state.inflight, state.probe), (None, Some(probe.clone())));
    assert_eq!(
        o.pending_count(&a, "vips").await.unwrap(),
        4,
        "all wait again"
    );
    // inv_3 alone is refused; inv_4 alone is refused but was written since.
    let a_ref = &a;
    let refuse_alone = |id: &'static str| async move {
        let row: Vec<_> = o
            .pending_rows(a_ref, "vips", 4)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.id == id)
            .collect();
        o.begin_chunk(a_ref, "vips", &row).await.unwrap().unwrap()
    };
    let three = refuse_alone("inv_3").await;
    let aside = Refusal::SetAside {
        reason: "HTTP 422: email is not valid".into(),
    };
    o.refuse_chunk(&a, "vips", &three, &aside, now)
        .await
        .unwrap();
    o.refuse_chunk(&a, "vips", &three, &aside, now)
        .await
        .unwrap();
    let four_chunk = refuse_alone("inv_4").await;
    o.put_rows(&a, "vips", &rows(&[("inv_4", insert(40))]), now)
        .await
        .unwrap();
    o.refuse_chunk(&a, "vips", &four_chunk, &aside, now)
        .await
        .unwrap();
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(
        (state.inflight, state.probe),
        (None, None),
        "a row set aside ends the search"
    );
    let refused = o.refused_rows(&a, "vips", 10).await.unwrap();
    assert_eq!(
        refused
            .iter()
            .map(|r| (r.id.as_str(), r.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![("inv_3", "HTTP 422: email is not valid")],
        "the rewritten row is not set aside"
    );
    assert_eq!(refused[0].change, insert(3));
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 3);
    assert!(o.refused_rows(&b, "vips", 10).await.unwrap().is_empty());
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 4);
    o.set_probe(&a, "vips", Some(&probe)).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().probe, Some(probe));
    o.set_probe(&a, "vips", None).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().probe, None);
    // Retry puts it back to waiting; a newer write of the row would stand.
    let others = vec!["inv_9".to_string()];
    assert_eq!(
        o.retry_refused(&a, "vips", Some(&others), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(o.retry_refused(&a, "vips", None, now).await.unwrap(), 1);
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 4);
    assert!(o.refused_rows(&a, "vips", 10).await.unwrap().is_empty());
    // Refused again, then dropped: it is never sent.
    let again = refuse_alone("inv_3").await;
    o.refuse_chunk(&a, "vips", &again, &aside, now)
        .await
        .unwrap();
    o.put_rows(&a, "vips", &rows(&[("inv_3", insert(33))]), now)
        .await
        .unwrap();
    assert_eq!(
        o.retry_refused(&a, "vips", None, now).await.unwrap(),
        1,
        "leaves the list"
    );
    let waiting = o.pending_rows(&a, "vips", 10).await.unwrap();
    assert_eq!(
        waiting.iter().find(|r| r.id == "inv_3").unwrap().change,
        insert(33),
        "the newer write stands"
    );
    let again = refuse_alone("inv_3").await;
    o.refuse_chunk(&a, "vips", &again, &aside, now)
        .await
        .unwrap();
    let ids = vec!["inv_3".to_string()];
    assert_eq!(o.drop_refused(&a, "vips", Some(&ids)).await.unwrap(), 1);
    assert_eq!(o.drop_refused(&a, "vips", None).await.unwrap(), 0);
    assert!(o.refused_rows(&a, "vips", 10).await.unwrap().is_empty());
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 3);
}

/// Many flushers racing to fix a chunk: exactly one does.
pub async fn concurrent_flushes_fix_one_chunk<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, _) = orgs();
    let o = s.records.clone();
    o.put_rows(&a, "vips", &rows(&[("inv_1", insert(1))]), afternoon())
        .await
        .unwrap();
    let pending = o.pending_rows(&a, "vips", 10).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (o, a, pending) = (o.clone(), a.clone(), pending.clone());
            tokio::spawn(async move { o.begin_chunk(&a, "vips", &pending).await.unwrap() })
        })
        .collect();
    let mut fixed = 0;
    for t in tasks {
        fixed += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(fixed, 1);
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().next_seq, 1);
}

/// The timed-flush mark is set once; a second writer is told one is on its
/// way; a lost one (older than `replace_before`) is replaced; clearing
/// needs the same due time; per org.
pub async fn a_timed_flush_is_marked_once_until_cleared_or_lost<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let due = now + Duration::minutes(5);
    assert!(o.mark_flush_due(&a, "vips", due, now).await.unwrap());
    assert!(!o
        .mark_flush_due(&a, "vips", due + Duration::minutes(1), now)
        .await
        .unwrap());
    assert!(
        o.mark_flush_due(&b, "vips", due, now).await.unwrap(),
        "another org's outbox has its own mark"
    );
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(due)
    );
    o.clear_flush_due(&a, "vips", due + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(due),
        "only the mark that was seen is cleared"
    );
    let lost_before = due + Duration::seconds(1);
    let moved = due + Duration::hours(1);
    assert!(o
        .mark_flush_due(&a, "vips", moved, lost_before)
        .await
        .unwrap());
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(moved)
    );
    o.clear_flush_due(&a, "vips", moved).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().flush_due, None);
    assert!(o.mark_flush_due(&a, "vips", due, now).await.unwrap());
    assert_eq!(
        o.outbox_state(&b, "vips").await.unwrap().flush_due,
        Some(due)
    );
}
