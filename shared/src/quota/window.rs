//! Counting windows of any length: fixed (aligned to UTC, to an offset or
//! to an API's time zone) and rolling.
//!
//! Why: the fixed UTC day, hour and minute ([`super::WindowKind`]'s first
//! three) are one shape of many. Marketo's day ends at midnight US
//! Central; HubSpot counts 10 seconds; Salesforce and Xero a rolling 24
//! hours. Against a fixed UTC window the first overspends (two budgets in
//! 24 hours) or waits for a midnight hours away from the API's.
//!
//! **Fixed spans** are counters like the day's: one per window, its id
//! naming the spec and the window's start and end, so [`super::window_ended`]
//! prunes them without knowing the spec.
//!
//! **Rolling spans** ("any trailing `every` holds at most `calls`") are
//! counted in [`ROLLING_BUCKETS`] buckets per span. A call is admitted
//! only if the buckets that overlap the trailing span, *whole*, plus its
//! cost fit the limit. Every call of the trailing span is in one of those
//! buckets, so no trailing span ever holds more than the limit; the price
//! is that a bucket's calls count until the whole bucket has left the
//! span (at most `every / ROLLING_BUCKETS` longer than exact). The buckets'
//! counters are ordinary window counters, and a bucket's id ends when it
//! stops being counted.

use crate::core::clock::Timestamp;
use crate::core::error::{Error, Result};
use chrono::Duration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;

/// Buckets a rolling span is counted in (1-second buckets for spans
/// under a minute).
pub(crate) const ROLLING_BUCKETS: u32 = 60;

/// Where a fixed span's boundaries fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Align {
    /// On multiples of the span since the Unix epoch (UTC midnight for a
    /// day).
    #[default]
    Utc,
    /// As in UTC shifted by this many seconds east (`-06:00`: a day from
    /// 06:00 UTC).
    Offset(i32),
    /// On the local wall clock of an IANA time zone (`America/Chicago`):
    /// a day from local midnight, 23 or 25 hours long when the clocks move.
    Zone(Zone),
}

/// An IANA time zone from the tz database bundled in the binary (Lambda's
/// image is not relied on for zoneinfo).
///
/// Why interned: a window spec is `Copy` and hashed, and is read on every
/// acquire; a zone is loaded once per process by its canonical name and
/// kept (a few hundred exist), so a `Zone` is a reference and comparing
/// two is comparing names.
#[derive(Clone, Copy)]
pub struct Zone(&'static ZoneEntry);

struct ZoneEntry {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl Zone {
    /// The zone named `name` (any case), or `None` if the database has no
    /// such zone.
    fn get(name: &str) -> Option<Zone> {
        static ZONES: std::sync::OnceLock<
            std::sync::Mutex<std::collections::HashMap<String, &'static ZoneEntry>>,
        > = std::sync::OnceLock::new();
        let tz = jiff::tz::TimeZone::get(name).ok()?;
        let canonical = tz.iana_name().unwrap_or(name).to_string();
        let mut zones = ZONES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = zones.entry(canonical.clone()).or_insert_with(|| {
            Box::leak(Box::new(ZoneEntry {
                name: canonical,
                tz,
            }))
        });
        Some(Zone(entry))
    }

    /// The canonical IANA name (`America/Chicago`).
    pub fn name(self) -> &'static str {
        &self.0.name
    }

    /// Seconds east of UTC at `t` (Unix seconds).
    fn offset_at(self, t: i64) -> i64 {
        jiff::Timestamp::from_second(t)
            .map(|ts| i64::from(self.0.tz.to_offset(ts).seconds()))
            .unwrap_or(0)
    }

    /// The earliest instant whose local wall clock reads `local` (seconds
    /// of a naive local time since the epoch), or `None` when the clocks
    /// skip it.
    fn earliest_at(self, local: i64) -> Option<i64> {
        use jiff::tz::AmbiguousOffset;
        let civil = jiff::tz::Offset::UTC.to_datetime(jiff::Timestamp::from_second(local).ok()?);
        match self.0.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => Some(local - i64::from(offset.seconds())),
            AmbiguousOffset::Gap { .. } => None,
            AmbiguousOffset::Fold { before, after } => {
                Some((local - i64::from(before.seconds())).min(local - i64::from(after.seconds())))
            }
        }
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Zone {}

impl std::hash::Hash for Zone {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.name().hash(h);
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name())
    }
}

impl Align {
    /// `UTC`, `+05:30`, `-06:00`, `+00:01:30` or an IANA zone name.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("utc") || s == "Z" {
            return Ok(Align::Utc);
        }
        if let Some(rest) = s
            .strip_prefix('+')
            .map(|r| (1, r))
            .or(s.strip_prefix('-').map(|r| (-1, r)))
        {
            let (sign, rest) = rest;
            let parts: Vec<&str> = rest.split(':').collect();
            let nums: Option<Vec<i32>> = parts.iter().map(|p| p.parse::<i32>().ok()).collect();
            return match nums.as_deref() {
                Some([h, m]) if *h <= 23 && *m <= 59 => {
                    Ok(Align::Offset(sign * (h * 3600 + m * 60)))
                }
                Some([h, m, sec]) if *h <= 23 && *m <= 59 && *sec <= 59 => {
                    Ok(Align::Offset(sign * (h * 3600 + m * 60 + sec)))
                }
                _ => Err(Error::Config(format!(
                    "align {s:?}: expected an offset like \"-06:00\" or \"+00:01:30\""
                ))),
            };
        }
        Zone::get(s).map(Align::Zone).ok_or_else(|| {
            Error::Config(format!(
                "align {s:?}: expected \"UTC\", an offset like \"-06:00\", or a time zone like \"America/Chicago\""
            ))
        })
    }

    fn tag(self) -> String {
        match self {
            Align::Utc => "u".into(),
            Align::Offset(o) => format!("o{o}"),
            Align::Zone(z) => format!("z{}", z.name()),
        }
    }
}

impl fmt::Display for Align {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Align::Utc => f.write_str("UTC"),
            Align::Offset(o) => {
                let (sign, o) = if *o < 0 { ('-', -o) } else { ('+', *o) };
                if o % 60 == 0 {
                    write!(f, "{sign}{:02}:{:02}", o / 3600, o % 3600 / 60)
                } else {
                    write!(
                        f,
                        "{sign}{:02}:{:02}:{:02}",
                        o / 3600,
                        o % 3600 / 60,
                        o % 60
                    )
                }
            }
            Align::Zone(z) => f.write_str(z.name()),
        }
    }
}

impl PartialOrd for Align {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Align {
    fn cmp(&self, other: &Self) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl Serialize for Align {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Align {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Align::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A counting window of `secs` seconds: fixed (aligned by `align`) or
/// rolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// Its length.
    pub secs: u32,
    /// Where fixed windows start (rolling spans ignore it).
    #[serde(default)]
    pub align: Align,
    /// Rolling: any trailing `secs` holds at most the limit.
    #[serde(default)]
    pub rolling: bool,
}

fn ts(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl Span {
    /// Refuses spans whose windows cannot be placed.
    pub fn validate(&self) -> Result<()> {
        if self.secs == 0 {
            return Err(Error::Config(
                "a window of 0 seconds; give `every` of at least 1s".into(),
            ));
        }
        if !self.rolling
            && self.align != Align::Utc
            && 86_400 % self.secs != 0
            && self.secs % 86_400 != 0
        {
            return Err(Error::Config(format!(
                "a window of {}s aligned to {}: a window aligned to an offset or a time zone must divide a day or be whole days",
                self.secs, self.align
            )));
        }
        Ok(())
    }

    fn bucket_secs(self) -> i64 {
        (i64::from(self.secs) / i64::from(ROLLING_BUCKETS)).max(1)
    }

    /// The fixed window `now` falls in: (start, end).
    fn fixed_bounds(self, now: Timestamp) -> (Timestamp, Timestamp) {
        let secs = i64::from(self.secs);
        let t = now.timestamp();
        match self.align {
            Align::Utc => {
                let start = t.div_euclid(secs) * secs;
                (ts(start), ts(start + secs))
            }
            Align::Offset(o) => {
                let local = t + i64::from(o);
                let start = local.div_euclid(secs) * secs - i64::from(o);
                (ts(start), ts(start + secs))
            }
            Align::Zone(zone) => {
                // Floor on the local wall clock, then back to UTC (the
                // earlier instant when the wall clock repeats, the first
                // valid one when it skips).
                let local = t + zone.offset_at(t);
                let start = local.div_euclid(secs) * secs;
                let to_utc = |naive_secs: i64| {
                    (0..4)
                        .find_map(|h| zone.earliest_at(naive_secs + h * 3600))
                        .map(ts)
                        .unwrap_or(now)
                };
                let (s, mut e) = (to_utc(start), to_utc(start + secs));
                // A window whose end maps before `now` (a skipped hour)
                // still holds `now`: it ends at the next whole second.
                if e <= now {
                    e = ts(now.timestamp() + 1);
                }
                (s.min(now), e)
            }
        }
    }

    /// The counter `now` is counted in: the fixed window, or the rolling
    /// span's current bucket.
    pub fn id(self, now: Timestamp) -> String {
        if self.rolling {
            let b = self.bucket_secs();
            let start = now.timestamp().div_euclid(b) * b;
            self.bucket_id(start)
        } else {
            let (start, end) = self.fixed_bounds(now);
            format!(
                "s{}{}~{}~{}",
                self.secs,
                self.align.tag(),
                start.timestamp(),
                end.timestamp()
            )
        }
    }

    /// A rolling bucket's id: it ends when the bucket stops counting.
    fn bucket_id(self, start: i64) -> String {
        let until = start + self.bucket_secs() + i64::from(self.secs);
        format!("r{}~{start}~{until}", self.secs)
    }

    /// When the counter named `id` ([`Span::id`]) may be dropped.
    pub(crate) fn end_of(id: &str) -> Option<Timestamp> {
        if !(id.starts_with('s') || id.starts_with('r')) {
            return None;
        }
        let (_, end) = id.rsplit_once('~')?;
        end.parse::<i64>().ok().map(ts)
    }

    /// The counters whose sum is what the span holds at `now`: the fixed
    /// window's, or every bucket that overlaps the trailing span.
    pub(crate) fn counted_ids(self, now: Timestamp) -> Vec<String> {
        if !self.rolling {
            return vec![self.id(now)];
        }
        self.bucket_starts(now).map(|s| self.bucket_id(s)).collect()
    }

    /// The starts of a rolling span's buckets counted at `now`, oldest
    /// first: those starting after t - secs - b overlap (t - secs, t], and
    /// those ahead of `now` count too (another process whose clock runs
    /// ahead, by up to the span, may have counted calls there).
    fn bucket_starts(self, now: Timestamp) -> impl Iterator<Item = i64> {
        let b = self.bucket_secs();
        let t = now.timestamp();
        let newest = t.div_euclid(b) * b + i64::from(self.secs);
        let oldest = (t - i64::from(self.secs)).div_euclid(b) * b;
        (0..)
            .map(move |k| oldest + k * b)
            .take_while(move |s| *s <= newest)
    }

    /// When a call of `cost` fits again, given what each counted id holds
    /// (`used`), with `limit`: the fixed window's end, or the moment enough
    /// of the oldest buckets have left the trailing span.
    pub fn retry_at(
        self,
        now: Timestamp,
        limit: u32,
        cost: u32,
        used: impl Fn(&str) -> u64,
    ) -> Timestamp {
        if !self.rolling {
            return self.end(now);
        }
        let b = self.bucket_secs();
        let held_at = |start: i64| used(&self.bucket_id(start));
        let mut held: u64 = self.bucket_starts(now).map(held_at).sum();
        let room = u64::from(limit).saturating_sub(u64::from(cost));
        for start in self.bucket_starts(now) {
            held = held.saturating_sub(held_at(start));
            let leaves = start + b + i64::from(self.secs);
            // A counted bucket overlaps the trailing span, so it leaves
            // after `now`.
            if held <= room {
                return ts(leaves);
            }
        }
        now + Duration::seconds(i64::from(self.secs))
    }

    /// When the window `now` falls in ends: the end of a fixed window, the
    /// end of a rolling span's current bucket (a reservation's calls must
    /// be made within the bucket they were counted in).
    pub fn end(self, now: Timestamp) -> Timestamp {
        if self.rolling {
            let b = self.bucket_secs();
            ts(now.timestamp().div_euclid(b) * b + b)
        } else {
            self.fixed_bounds(now).1
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let every = humantime_serde::re::humantime::format_duration(
            std::time::Duration::from_secs(u64::from(self.secs)),
        );
        if self.rolling {
            write!(f, "rolling {every}")
        } else if self.align == Align::Utc {
            write!(f, "{every}")
        } else {
            write!(f, "{every} ({})", self.align)
        }
    }
}

/// `[[app.limits.windows]]`: one window beyond `per_day`, `per_hour` and
/// `per_minute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    /// Calls the window holds.
    pub calls: u32,
    /// Its length (`10s`, `1m`, `24h`, `1d`).
    #[serde(with = "humantime_serde")]
    pub every: std::time::Duration,
    /// Fixed windows: `UTC` (default), an offset or an IANA time zone.
    #[serde(default)]
    pub align: Align,
    /// Any trailing `every` holds at most `calls` (Salesforce's and Xero's
    /// rolling 24 hours).
    #[serde(default)]
    pub rolling: bool,
}

impl WindowLimit {
    /// Its span, checked.
    pub fn span(&self) -> Result<Span> {
        let secs = u32::try_from(self.every.as_secs()).map_err(|_| {
            Error::Config(format!(
                "limits.windows: every = {:?} is too long",
                self.every
            ))
        })?;
        if self.every.subsec_nanos() != 0 {
            return Err(Error::Config(format!(
                "limits.windows: every = {:?}: give whole seconds",
                self.every
            )));
        }
        if self.calls == 0 {
            return Err(Error::Config(
                "limits.windows: calls is 0; omit the window for no limit or give a positive number".into(),
            ));
        }
        let span = Span {
            secs,
            align: self.align,
            rolling: self.rolling,
        };
        span.validate().map_err(|e| {
            Error::Config(format!(
                "limits.windows: {}",
                e.to_string().trim_start_matches("configuration error: ")
            ))
        })?;
        Ok(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn a_day_in_an_api_time_zone_ends_at_its_midnight() {
        let chicago = Span {
            secs: 86_400,
            align: Align::parse("America/Chicago").unwrap(),
            rolling: false,
        };
        // CST (UTC-6) in December: the day ends at 06:00 UTC.
        assert_eq!(
            chicago.end(at("2026-12-05T05:59:00Z")),
            at("2026-12-05T06:00:00Z")
        );
        assert_eq!(
            chicago.end(at("2026-12-05T06:00:00Z")),
            at("2026-12-06T06:00:00Z")
        );
        // CDT (UTC-5) in July.
        assert_eq!(
            chicago.end(at("2026-07-01T12:00:00Z")),
            at("2026-07-02T05:00:00Z")
        );
        // The day the clocks go back (2026-11-01) is 25 hours long.
        let id = chicago.id(at("2026-11-01T12:00:00Z"));
        assert_eq!(Span::end_of(&id), Some(at("2026-11-02T06:00:00Z")));
        assert!(
            id.contains(&at("2026-11-01T05:00:00Z").timestamp().to_string()),
            "{id}"
        );
        let offset = Span {
            secs: 86_400,
            align: Align::parse("+00:01:30").unwrap(),
            rolling: false,
        };
        assert_eq!(
            offset.end(at("2026-12-05T00:00:00Z")),
            at("2026-12-05T23:58:30Z")
        );
        let ten = Span {
            secs: 10,
            align: Align::Utc,
            rolling: false,
        };
        assert_eq!(
            ten.end(at("2026-12-05T00:00:07Z")),
            at("2026-12-05T00:00:10Z")
        );
        assert_ne!(
            ten.id(at("2026-12-05T00:00:09Z")),
            ten.id(at("2026-12-05T00:00:10Z"))
        );
        assert_eq!(
            Span::end_of(&ten.id(at("2026-12-05T00:00:09Z"))),
            Some(at("2026-12-05T00:00:10Z"))
        );
    }

    /// The windows chrono-tz computed before the zones moved to jiff's
    /// bundled database (1.9 MB less per function): the same floor on the
    /// local wall clock and the same way back to UTC.
    fn chrono_tz_bounds(tz: chrono_tz::Tz, secs: i64, now: Timestamp) -> (Timestamp, Timestamp) {
        use chrono::TimeZone;
        let local = now.with_timezone(&tz).naive_local().and_utc().timestamp();
        let start = local.div_euclid(secs) * secs;
        let to_utc = |naive_secs: i64| {
            let naive = ts(naive_secs).naive_utc();
            (0..4)
                .find_map(|h| {
                    tz.from_local_datetime(&(naive + Duration::hours(h)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or(now)
        };
        let (s, mut e) = (to_utc(start), to_utc(start + secs));
        if e <= now {
            e = ts(now.timestamp() + 1);
        }
        (s.min(now), e)
    }

    #[test]
    fn zone_windows_agree_with_chrono_tz_across_clock_changes() {
        let zones = [
            "America/Chicago",
            "Europe/London",
            "Europe/Berlin",
            "Australia/Lord_Howe", // a 30-minute DST shift
            "Asia/Kolkata",        // a half-hour offset, no DST
            "America/St_Johns",    // -03:30 / -02:30
            "Pacific/Chatham",     // +12:45 / +13:45
            "Asia/Tehran",
            "America/Sao_Paulo",
            "Pacific/Apia",
        ];
        let spans = [86_400, 3_600, 1_800, 900, 600];
        let (from, to) = (
            at("2025-01-01T00:00:00Z").timestamp(),
            at("2028-01-01T00:00:00Z").timestamp(),
        );
        let mut checked = 0;
        for name in zones {
            let theirs: chrono_tz::Tz = name.parse().unwrap();
            let ours = Align::parse(name).unwrap();
            let Align::Zone(zone) = ours else {
                panic!("{name}: {ours:?}")
            };
            // Every 97 minutes and 13 s over three years, and every 5
            // minutes of each day the offset changes.
            let mut instants: Vec<i64> = (from..to).step_by(97 * 60 + 13).collect();
            for day in (from..to).step_by(86_400) {
                if zone.offset_at(day) != zone.offset_at(day + 86_400) {
                    instants.extend((day..day + 2 * 86_400).step_by(300));
                }
            }
            for t in instants {
                for secs in spans {
                    let span = Span {
                        secs: secs as u32,
                        align: ours,
                        rolling: false,
                    };
                    let now = ts(t);
                    assert_eq!(
                        span.fixed_bounds(now),
                        chrono_tz_bounds(theirs, secs, now),
                        "{name}, {secs} s windows at {now}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn zone_names_are_read_in_any_case_and_kept_canonical() {
        let a = Align::parse("america/chicago").unwrap();
        assert_eq!(a, Align::parse("America/Chicago").unwrap());
        assert_eq!(a.to_string(), "America/Chicago");
        assert!(Align::parse("Mars/Olympus").is_err());
    }

    #[test]
    fn a_rolling_span_counts_every_bucket_that_overlaps_it() {
        let minute = Span {
            secs: 60,
            align: Align::Utc,
            rolling: true,
        };
        let now = at("2026-12-05T00:01:00.500Z");
        let ids = minute.counted_ids(now);
        // 1-second buckets from 00:00:00 to 00:01:00 (61), and those a
        // clock running ahead may have written (60 more).
        assert_eq!(ids.len(), 121);
        assert_eq!(ids[60], minute.id(now));
        // The oldest bucket (00:00:00) stops counting at 00:01:01.
        assert_eq!(Span::end_of(&ids[0]), Some(at("2026-12-05T00:01:01Z")));
        // 30 in the oldest bucket, 30 in the newest, limit 60: room for a
        // call again when the oldest has left.
        let used = |id: &str| if id == ids[0] || id == ids[60] { 30 } else { 0 };
        assert_eq!(
            minute.retry_at(now, 60, 1, used),
            at("2026-12-05T00:01:01Z")
        );
        assert_eq!(minute.end(now), at("2026-12-05T00:01:01Z"));
    }

    #[test]
    fn bad_windows_are_named() {
        for (align, every, want) in [
            ("Mars/Olympus", "1d", "time zone like"),
            ("+25:00", "1d", "offset like"),
            ("America/Chicago", "7h", "divide a day"),
        ] {
            let w: std::result::Result<WindowLimit, _> = toml::from_str(&format!(
                "calls = 5\nevery = \"{every}\"\nalign = \"{align}\""
            ));
            let e = match w {
                Err(e) => e.to_string(),
                Ok(w) => w.span().unwrap_err().to_string(),
            };
            assert!(e.contains(want), "{align} {every}: {e}");
        }
    }
}
