//! The IETF `RateLimit` and `RateLimit-Policy` header fields
//! (draft-ietf-httpapi-ratelimit-headers, draft-12 as of November 2026):
//! an API's own count of each of its limits, in a standard form.
//!
//! ```text
//! RateLimit-Policy: "day";q=5000;w=86400, "minute";q=60;w=60
//! RateLimit: "day";r=100;t=36000, "minute";r=7;t=12
//! ```
//!
//! Each policy names its quota (`q`) and window (`w`, seconds); each
//! `RateLimit` item the calls left (`r`) and the seconds to reset (`t`) of
//! the policy of the same name. A policy that counts something other than
//! requests (`qu` other than `"requests"`) is left out. The earlier drafts'
//! separate fields (`RateLimit-Limit`, `RateLimit-Remaining`,
//! `RateLimit-Reset`, with a policy's window in `RateLimit-Policy: 100;w=60`)
//! are read too. Malformed items are skipped, never an error: pacing is a
//! refinement, the call's result stands.

/// One of the API's limits, as it counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPolicy {
    /// The policy's name (`day`), or empty in the older form.
    pub name: String,
    /// Its window, in seconds.
    pub window_secs: u64,
    /// Calls the window holds.
    pub quota: u64,
    /// Calls left in it, every client of the key counted.
    pub remaining: u64,
}

/// `used/capacity` (Shopify's `X-Shopify-Shop-Api-Call-Limit: 32/40`);
/// `None` for anything else.
pub(crate) fn parse_used_of(value: &str) -> Option<(u64, u64)> {
    let (used, capacity) = value.trim().split_once('/')?;
    let used = used.trim().parse().ok()?;
    let capacity: u64 = capacity.trim().parse().ok()?;
    (capacity > 0).then_some((used, capacity))
}

/// `name;k=v;k=v` items of a structured-field list.
fn items(field: &str) -> Vec<(String, Vec<(String, String)>)> {
    field
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next()?.trim_matches('"').to_string();
            let params = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((
                        k.trim().to_ascii_lowercase(),
                        v.trim().trim_matches('"').to_string(),
                    ))
                })
                .collect();
            Some((name, params))
        })
        .collect()
}

fn param(params: &[(String, String)], key: &str) -> Option<u64> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// The policies the fields describe, each with its count (a policy the
/// API gave no count for, or a count with no policy, is left out).
pub(crate) fn parse(
    ratelimit: Option<&str>,
    policy: Option<&str>,
    legacy_limit: Option<&str>,
    legacy_remaining: Option<&str>,
) -> Vec<ApiPolicy> {
    let policies: Vec<(String, u64, u64)> = policy
        .map(items)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| {
            p.iter()
                .find(|(k, _)| k == "qu")
                .is_none_or(|(_, v)| v == "requests")
        })
        .filter_map(|(name, p)| {
            // Draft-12 names the quota `q`; the older form put it first.
            let quota = param(&p, "q").or_else(|| name.parse().ok())?;
            let window = param(&p, "w")?;
            (window > 0).then_some((name, quota, window))
        })
        .collect();
    let mut out = Vec::new();
    for (name, params) in ratelimit.map(items).unwrap_or_default() {
        let Some(remaining) = param(&params, "r") else {
            continue;
        };
        if let Some((_, quota, window)) = policies.iter().find(|(n, ..)| *n == name) {
            out.push(ApiPolicy {
                name,
                window_secs: *window,
                quota: *quota,
                remaining,
            });
        }
    }
    // The older, separate fields: one policy, its window from the policy.
    if out.is_empty() {
        let number = |v: Option<&str>| v.and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(limit), Some(remaining), [(_, _, window)]) = (
            number(legacy_limit),
            number(legacy_remaining),
            policies.as_slice(),
        ) {
            out.push(ApiPolicy {
                name: String::new(),
                window_secs: *window,
                quota: limit,
                remaining,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_twelve_names_each_policy_and_its_count() {
        let got = parse(
            Some("\"day\";r=100;t=36000, \"minute\";r=7;t=12"),
            Some("\"day\";q=5000;w=86400, \"minute\";q=60;w=60, \"bytes\";q=9;w=60;qu=\"content-bytes\""),
            None,
            None,
        );
        assert_eq!(
            got,
            vec![
                ApiPolicy {
                    name: "day".into(),
                    window_secs: 86_400,
                    quota: 5_000,
                    remaining: 100
                },
                ApiPolicy {
                    name: "minute".into(),
                    window_secs: 60,
                    quota: 60,
                    remaining: 7
                },
            ]
        );
    }

    #[test]
    fn the_older_fields_and_broken_ones() {
        assert_eq!(
            parse(None, Some("100;w=60"), Some("100"), Some("42")),
            vec![ApiPolicy {
                name: String::new(),
                window_secs: 60,
                quota: 100,
                remaining: 42
            }]
        );
        // No policy: no window to map the count to.
        assert!(parse(Some("\"day\";r=1"), None, Some("5"), Some("1")).is_empty());
        // Garbage is skipped.
        assert!(parse(
            Some(";;;,=,\"x\";r=abc"),
            Some("\"x\";q=;w=-1, ,"),
            None,
            None
        )
        .is_empty());
        assert!(parse(Some("\"x\";r=1"), Some("\"x\";q=5;w=0"), None, None).is_empty());
    }

    #[test]
    fn a_bucket_header_reads_used_of_capacity() {
        assert_eq!(parse_used_of("32/40"), Some((32, 40)));
        assert_eq!(parse_used_of(" 1 / 80 "), Some((1, 80)));
        for bad in ["", "32", "a/40", "32/0", "32/x"] {
            assert_eq!(parse_used_of(bad), None, "{bad:?}");
        }
    }
}
