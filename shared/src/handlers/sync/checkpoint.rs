//! A listing's checkpoint and the rules that move it, as pure functions
//! beside their tests: where the next page starts, when following the API
//! would loop, and when a short first page is worth a second look.

use crate::connector::PageCursor;
use crate::core::clock::Timestamp;
use crate::store::SHORT_PAGE_REPROBE_DAYS;
use serde::{Deserialize, Serialize};

/// How many of the last cursors a run remembers: a loop that hands out a
/// cursor again within this many pages is caught by its cursor; a longer
/// one by the same page of records served again, or by empty pages.
pub(crate) const MAX_SEEN_CURSORS: usize = 64;

/// Empty pages in a row that still point at a next page before the run
/// stops following them (an API handing out new cursors for nothing). It
/// ends as complete, with a warning: every record it served is stored, and
/// a dead letter would only fail the same way again. An API that returns a
/// few empty pages mid-listing (a sparse filtered scan) gets this many.
pub(crate) const MAX_EMPTY_PAGES: u32 = 5;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a listing resumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ListingCheckpoint {
    /// Where the next page starts; `None` before the first.
    pub cursor: Option<PageCursor>,
    /// Pages fetched so far.
    pub pages: u64,
    /// Records stored so far.
    pub records: u64,
    /// Of those, new or changed.
    pub changed: u64,
    /// The window of a recent lookup, fixed at its first run.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// The end of that window.
    #[serde(default)]
    pub until: Option<Timestamp>,
    /// Claimed foreign keys not yet sent for lookup, per referenced type.
    #[serde(default)]
    pub pending_lookups: std::collections::BTreeMap<String, Vec<String>>,
    /// Digests of the last [`MAX_SEEN_CURSORS`] cursors and next links this
    /// run used: one the API hands out again would make the run loop until
    /// the budget is gone. Bounded, so the checkpoint stays small however
    /// many pages a listing has (it grew 35 bytes a page, and past ~7,400
    /// pages the job no longer fit in an SQS message).
    #[serde(default)]
    pub seen_cursors: Vec<String>,
    /// Empty pages in a row that still pointed at a next page.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub empty_pages: u32,
    /// Records set aside (no id, too large) in this run.
    #[serde(default)]
    pub quarantined: u64,
    /// The page size the API really serves (learned, or known from the
    /// sync state), when below the configured one.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Set while the page after a short first page of this length is
    /// fetched, to tell "the listing was short" from "the API caps pages".
    #[serde(default)]
    pub probe: Option<u32>,
    /// This run learned `page_size` (recorded at the end).
    #[serde(default)]
    pub learned_page_size: bool,
    /// Digest of the ids of the last page: an API that ignores the page or
    /// offset parameter serves the same page forever.
    #[serde(default)]
    pub last_page: Option<String>,
    /// Every page is fetched and stored; only the run's completion is left
    /// to record. A restart after a failure to record it records it, and
    /// fetches nothing again (it used to start over from page 1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
}

impl ListingCheckpoint {
    /// Fixes a recent lookup's window when it first runs: until now, since
    /// the high-water mark less the overlap (or, before any run, one period
    /// and the overlap back). Fixed once, so a restart resumes the same
    /// window; the mark moves to `until` only when the window is done.
    pub(crate) fn open_recent_window(
        &mut self,
        recent: &crate::config::sync::RecentSettings,
        high_water: Option<Timestamp>,
        now: Timestamp,
    ) {
        use crate::config::sync::chrono as dur;
        self.until = Some(now);
        self.since = Some(match high_water {
            Some(hw) => hw - dur(recent.overlap),
            None => now - dur(recent.every) - dur(recent.overlap),
        });
    }

    /// Counts one committed page.
    pub(crate) fn count_page(&mut self, stored: u64, changed: u64, quarantined: u64) {
        self.pages += 1;
        self.records += stored;
        self.changed += changed;
        self.quarantined += quarantined;
    }

    /// The probe found the API's own page size: page at it from now on.
    pub(crate) fn learn_page_size(&mut self, size: u32) {
        self.page_size = Some(size);
        self.learned_page_size = true;
        self.probe = None;
    }
}

/// A digest of what a page served, to recognise the same page again.
pub(crate) fn page_digest(page: &crate::connector::Page) -> String {
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    crate::core::record::content_hash(&serde_json::json!([ids, page.unreadable.len()]))
}

/// A short digest of a cursor, for [`ListingCheckpoint::seen_cursors`].
pub(crate) fn cursor_digest(cursor: &PageCursor) -> String {
    crate::core::record::content_hash(&serde_json::to_value(cursor).unwrap_or_default())
}

/// The cursor of the page after a short first page, when that page should
/// be fetched to learn whether the API caps its page size: page/offset
/// listings only (cursors and links say themselves whether more follows),
/// a non-empty page shorter than configured, no cap known yet, and not the
/// same length a probe found complete within [`SHORT_PAGE_REPROBE_DAYS`].
pub(crate) fn probe_cursor(
    rt: &crate::config::app::RecordTypeConfig,
    cp: &ListingCheckpoint,
    state: &crate::store::SyncState,
    served: u64,
    now: Timestamp,
) -> Option<PageCursor> {
    use crate::config::app::Pagination;
    if served == 0 || served >= u64::from(rt.effective_page_size()) || cp.page_size.is_some() {
        return None;
    }
    let recently_probed = state.probed_short_page == Some(served as u32)
        && state
            .probed_at
            .is_some_and(|at| now < at + chrono::Duration::days(SHORT_PAGE_REPROBE_DAYS));
    if recently_probed {
        return None;
    }
    match rt.pagination {
        Pagination::Page { first, .. } => Some(PageCursor::Page(first + 1)),
        Pagination::Offset { .. } => Some(PageCursor::Offset(served)),
        _ => None,
    }
}

/// Where a served page points once the run's own checks are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Turn {
    /// The next page's cursor; `None` when this page was the last.
    pub next: Option<PageCursor>,
    /// The API's own page size, learned by a probe that found more records.
    pub learned: Option<u32>,
    /// The length of a short first page whose next page is fetched once,
    /// to tell "the listing was short" from "the API caps pages".
    pub probe: Option<u32>,
}

/// Reads a served page (its `next`, a [`page_digest`] of it and how many
/// items it served) against the checkpoint, before it is stored:
///
/// - the same page as the last one again fails the run (`Err`, the
///   reason): the API ignores the page or offset parameter, and following
///   it would loop until the budget is gone — unless it answers the probe,
///   when the first page was the whole listing;
/// - a probe answered with a new page teaches the API's page size;
/// - a short last first page is probed at `probe_at()`'s cursor (see
///   [`probe_cursor`]; `None` where no probe applies).
pub(crate) fn turn_page(
    cp: &ListingCheckpoint,
    mut next: Option<PageCursor>,
    digest: &str,
    served: u64,
    probe_at: impl FnOnce() -> Option<PageCursor>,
    record_type: &str,
) -> Result<Turn, String> {
    let repeated = served > 0 && cp.last_page.as_deref() == Some(digest);
    if repeated && cp.probe.is_none() {
        return Err(format!(
            "list `{record_type}`: the API served the same page again after {} pages (it may ignore the page or offset parameter); following it would loop until the budget is gone",
            cp.pages
        ));
    }
    if repeated {
        // The probe got page 1 again: its one page was the whole listing.
        next = None;
    }
    let learned = cp.probe.filter(|_| served > 0 && !repeated);
    let mut probe = None;
    if cp.probe.is_none() && next.is_none() && cp.cursor.is_none() {
        if let Some(cursor) = probe_at() {
            probe = Some(served as u32);
            next = Some(cursor);
        }
    }
    Ok(Turn {
        next,
        learned,
        probe,
    })
}

/// What a stored page makes of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Fetch the page at the checkpoint's cursor next.
    Next,
    /// That was the last page.
    Done,
    /// The API keeps pointing at empty pages: the listing ends here, as
    /// complete, with this warning.
    Stop(String),
    /// Following the API would loop until the budget is gone: the reason.
    Loop(String),
}

/// Moves `cp` past a stored page that served `served` items and pointed at
/// `next`: remembers the cursor it came from (the last
/// [`MAX_SEEN_CURSORS`]), refuses a next cursor or link the run has used
/// already, and stops at the [`MAX_EMPTY_PAGES`]th empty page in a row
/// with a next one. `cp.pages` already counts the page.
pub(crate) fn advance(
    cp: &mut ListingCheckpoint,
    next: Option<PageCursor>,
    served: u64,
    record_type: &str,
) -> Step {
    let Some(next) = next else {
        cp.cursor = None;
        cp.empty_pages = 0;
        return Step::Done;
    };
    cp.empty_pages = if served == 0 { cp.empty_pages + 1 } else { 0 };
    if cp.empty_pages >= MAX_EMPTY_PAGES {
        cp.cursor = None;
        return Step::Stop(format!(
            "list `{record_type}`: the API served {} empty pages in a row, each pointing at another, after {} pages; the listing stops here (following it would spend the budget on nothing)",
            cp.empty_pages, cp.pages
        ));
    }
    if let Some(current) = &cp.cursor {
        let digest = cursor_digest(current);
        if !cp.seen_cursors.contains(&digest) {
            cp.seen_cursors.push(digest);
            if cp.seen_cursors.len() > MAX_SEEN_CURSORS {
                cp.seen_cursors.remove(0);
            }
        }
    }
    if matches!(next, PageCursor::Cursor(_) | PageCursor::Url(_))
        && (cp.cursor.as_ref() == Some(&next) || cp.seen_cursors.contains(&cursor_digest(&next)))
    {
        return Step::Loop(format!(
            "list `{record_type}`: the API returned a next page it already returned in this run ({next:?}) after {} pages; following it would loop until the budget is gone",
            cp.pages
        ));
    }
    cp.cursor = Some(next);
    Step::Next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(n: usize) -> PageCursor {
        PageCursor::Cursor(format!("eyJvZmZzZXQiOjEyMzQ1Njc4OTAsImlkIjoiaW52X{n:010}"))
    }

    /// However many pages a listing has, its checkpoint stays small: 10,000
    /// pages of 50-character cursors leave it under 4 KB (it was 35 bytes
    /// a page: 350 KB, over SQS's 256 KiB message limit).
    #[test]
    fn a_ten_thousand_page_listing_keeps_a_small_checkpoint() {
        let mut cp = ListingCheckpoint::default();
        for n in 0..10_000 {
            cp.pages += 1;
            assert_eq!(
                advance(&mut cp, Some(cursor(n)), 200, "invoices"),
                Step::Next
            );
        }
        let size = serde_json::to_string(&cp).unwrap().len();
        assert!(
            size < 4_096,
            "checkpoint of {size} bytes after 10,000 pages"
        );
        assert_eq!(cp.seen_cursors.len(), MAX_SEEN_CURSORS);
        assert_eq!(advance(&mut cp, None, 10, "invoices"), Step::Done);
    }

    /// A cursor handed out again within the remembered pages is a loop.
    #[test]
    fn a_cursor_seen_again_is_a_loop() {
        let mut cp = ListingCheckpoint::default();
        for n in 0..10 {
            cp.pages += 1;
            assert_eq!(advance(&mut cp, Some(cursor(n)), 5, "invoices"), Step::Next);
        }
        cp.pages += 1;
        assert!(
            matches!(advance(&mut cp, Some(cursor(3)), 5, "invoices"), Step::Loop(r) if r.contains("already returned"))
        );
        // The same cursor as the current one, at once.
        let mut cp = ListingCheckpoint {
            cursor: Some(cursor(1)),
            ..Default::default()
        };
        assert!(matches!(
            advance(&mut cp, Some(cursor(1)), 5, "invoices"),
            Step::Loop(_)
        ));
        // Page numbers repeat by design (a probe); they are not cursors.
        let mut cp = ListingCheckpoint {
            cursor: Some(PageCursor::Page(2)),
            ..Default::default()
        };
        assert_eq!(
            advance(&mut cp, Some(PageCursor::Page(2)), 5, "invoices"),
            Step::Next
        );
    }

    /// Empty pages that keep pointing at new ones end the listing at the
    /// fifth in a row; fewer (a sparse scan) do not.
    #[test]
    fn empty_pages_with_new_cursors_end_the_listing() {
        let mut cp = ListingCheckpoint::default();
        cp.pages += 1;
        assert_eq!(advance(&mut cp, Some(cursor(1)), 0, "invoices"), Step::Next);
        cp.pages += 1;
        assert_eq!(
            advance(&mut cp, Some(cursor(2)), 3, "invoices"),
            Step::Next,
            "records reset the count"
        );
        for n in 3..7 {
            cp.pages += 1;
            assert_eq!(advance(&mut cp, Some(cursor(n)), 0, "invoices"), Step::Next);
        }
        cp.pages += 1;
        assert!(
            matches!(advance(&mut cp, Some(cursor(9)), 0, "invoices"), Step::Stop(r) if r.contains("5 empty pages"))
        );
        assert_eq!(cp.cursor, None);
    }

    #[test]
    fn a_recent_window_opens_from_the_mark_less_the_overlap_or_a_period_back() {
        let recent: crate::config::sync::RecentSettings =
            toml::from_str("every = \"1h\"\noverlap = \"5m\"").unwrap();
        let now = chrono::Utc::now();
        let mut cp = ListingCheckpoint::default();
        cp.open_recent_window(&recent, Some(now - chrono::Duration::hours(3)), now);
        assert_eq!(cp.until, Some(now));
        assert_eq!(cp.since, Some(now - chrono::Duration::minutes(185)));
        let mut first = ListingCheckpoint::default();
        first.open_recent_window(&recent, None, now);
        assert_eq!(first.since, Some(now - chrono::Duration::minutes(65)));
    }

    #[test]
    fn a_page_is_counted_and_a_learned_size_ends_the_probe() {
        let mut cp = ListingCheckpoint {
            probe: Some(7),
            ..Default::default()
        };
        cp.count_page(7, 2, 1);
        cp.count_page(5, 0, 0);
        assert_eq!(
            (cp.pages, cp.records, cp.changed, cp.quarantined),
            (2, 12, 2, 1)
        );
        cp.learn_page_size(7);
        assert_eq!(
            (cp.page_size, cp.learned_page_size, cp.probe),
            (Some(7), true, None)
        );
    }

    #[test]
    fn the_same_page_again_fails_unless_it_answers_the_probe() {
        let cp = ListingCheckpoint {
            pages: 4,
            cursor: Some(PageCursor::Page(5)),
            last_page: Some("d".into()),
            ..Default::default()
        };
        let no_probe = || panic!("only a first page is probed");
        let err = turn_page(
            &cp,
            Some(PageCursor::Page(6)),
            "d",
            10,
            no_probe,
            "invoices",
        );
        assert!(matches!(err, Err(r) if r.contains("same page again after 4 pages")));
        // An empty page repeats nothing.
        let empty = turn_page(&cp, Some(PageCursor::Page(6)), "d", 0, no_probe, "invoices");
        assert_eq!(empty.unwrap().next, Some(PageCursor::Page(6)));

        let probing = ListingCheckpoint {
            probe: Some(7),
            ..cp.clone()
        };
        let whole = turn_page(
            &probing,
            Some(PageCursor::Page(3)),
            "d",
            7,
            no_probe,
            "invoices",
        );
        assert_eq!(
            whole,
            Ok(Turn {
                next: None,
                learned: None,
                probe: None
            }),
            "the first page was the whole listing"
        );
        let more = turn_page(
            &probing,
            Some(PageCursor::Page(3)),
            "e",
            7,
            no_probe,
            "invoices",
        );
        assert_eq!(more.unwrap().learned, Some(7), "the API caps pages at 7");
    }

    #[test]
    fn only_a_short_last_first_page_is_probed() {
        let first = ListingCheckpoint::default();
        let at = || Some(PageCursor::Page(2));
        let probed = turn_page(&first, None, "d", 7, at, "invoices").unwrap();
        assert_eq!(
            (probed.next, probed.probe),
            (Some(PageCursor::Page(2)), Some(7))
        );
        // Not where the API says more follows, not past the first page,
        // not where no probe applies.
        let more = turn_page(
            &first,
            Some(PageCursor::Page(2)),
            "d",
            7,
            || None,
            "invoices",
        );
        assert_eq!(more.unwrap().probe, None);
        let later = ListingCheckpoint {
            cursor: Some(PageCursor::Page(4)),
            ..Default::default()
        };
        assert_eq!(
            turn_page(&later, None, "d", 7, at, "invoices")
                .unwrap()
                .probe,
            None
        );
        assert_eq!(
            turn_page(&first, None, "d", 7, || None, "invoices").unwrap(),
            Turn {
                next: None,
                learned: None,
                probe: None
            }
        );
    }
}
