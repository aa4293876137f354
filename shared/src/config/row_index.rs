//! How a hosted Data Source's filter indexes its rows (see [`RowIndex`]):
//! a config rule, read by the Hosted GET handler and the row stores.

use serde_json::Value;

/// How a hosted Data Source's rows are indexed: by the row field its
/// filter compares with a claim of the user (`row.F == user.C`, or
/// `row.F in user.C` for a claim holding a list), recognised at load by
/// [`RowIndex::of_filter`].
///
/// Why: without it a user's page is found by running the filter over the
/// whole table, so one page costs (table size ÷ the user's share) rows
/// read. With it, the rows of each value of `F` are kept apart (a
/// *part*), and a user's page reads only the parts their claim names.
/// The filter still runs on every row read: the index only narrows what
/// is read, it never decides what is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIndex {
    /// The row field (`F`).
    pub field: String,
    /// The user claim (`C`).
    pub claim: String,
    /// `in`: the claim is a list of values, any of which matches.
    pub any_of: bool,
}

impl RowIndex {
    /// The index a filter allows, if it is exactly `row.F == user.C`
    /// (either side first) or `row.F in user.C`, with plain field names.
    /// Any other filter (`&&`, functions, nested fields) is served by
    /// reading rows in order and filtering them, within the bounds of
    /// `docs/connector.md`.
    pub(crate) fn of_filter(filter: &str) -> Option<Self> {
        fn field<'a>(side: &'a str, var: &str) -> Option<&'a str> {
            let name = side.trim().strip_prefix(var)?.strip_prefix('.')?;
            let mut chars = name.chars();
            let first = chars.next()?;
            ((first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then_some(name)
        }
        let f = filter.trim();
        if let Some((l, r)) = f.split_once("==") {
            if r.contains("==") {
                return None;
            }
            let (row, user) = match (field(l, "row"), field(r, "user")) {
                (Some(row), Some(user)) => (row, user),
                _ => (field(r, "row")?, field(l, "user")?),
            };
            return Some(Self {
                field: row.into(),
                claim: user.into(),
                any_of: false,
            });
        }
        let (l, r) = f.split_once(" in ")?;
        Some(Self {
            field: field(l, "row")?.into(),
            claim: field(r, "user")?.into(),
            any_of: true,
        })
    }

    /// The parts a user's claims name: one for `==`, one per listed value
    /// for `in` (deduplicated). None: the claim is missing or not a
    /// scalar (or a list of scalars), and the user is served no rows —
    /// the filter would not keep any either.
    #[cfg_attr(not(feature = "hosted"), allow(dead_code))]
    pub(crate) fn parts_of_user(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Option<Vec<String>> {
        let claim = claims.get(&self.claim)?;
        if self.any_of {
            let mut parts: Vec<String> =
                claim.as_array()?.iter().filter_map(part_of_value).collect();
            parts.sort();
            parts.dedup();
            Some(parts)
        } else {
            part_of_value(claim).map(|p| vec![p])
        }
    }

    /// The part a row belongs to (None: its field is missing, null, or not
    /// a scalar; no user's `==` or `in` can match it).
    pub(crate) fn part_of_row(&self, row: &Value) -> Option<String> {
        row.get(&self.field).and_then(part_of_value)
    }
}

/// A scalar's part name, typed so that `"1"` and `1` stay apart (CEL does
/// not call them equal) and `1` and `1.0` meet (CEL does).
pub(crate) fn part_of_value(v: &Value) -> Option<String> {
    match v {
        // A long value is named by its hash: a part is part of a store key
        // (DynamoDB keys hold at most 2 KB).
        Value::String(s) if s.len() > 256 => {
            use sha2::{Digest, Sha256};
            let hash = Sha256::digest(s.as_bytes());
            Some(format!(
                "h:{}",
                hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
        }
        Value::String(s) => Some(format!("s:{s}")),
        Value::Bool(b) => Some(format!("b:{b}")),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if let Some(i) = n.as_i64() {
                Some(format!("n:{i}"))
            } else if let Some(u) = n.as_u64() {
                Some(format!("n:{u}"))
            } else if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Some(format!("n:{}", f as i64))
            } else {
                Some(format!("n:{f}"))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_plain_comparison_with_a_claim_is_indexed() {
        let eq = |f: &str, c: &str| RowIndex {
            field: f.into(),
            claim: c.into(),
            any_of: false,
        };
        assert_eq!(
            RowIndex::of_filter("row.customer_id == user.customer_id"),
            Some(eq("customer_id", "customer_id"))
        );
        assert_eq!(
            RowIndex::of_filter("  user.cid==row.owner "),
            Some(eq("owner", "cid"))
        );
        assert_eq!(
            RowIndex::of_filter("row.team in user.teams"),
            Some(RowIndex {
                field: "team".into(),
                claim: "teams".into(),
                any_of: true
            })
        );
        for not in [
            "row.a == user.b && row.c == 1",
            "row.a == user.b || true",
            "row.a.b == user.c",
            "row.a == 'x'",
            "row.a == row.b",
            "user.a == user.b",
            "row.a != user.b",
            "size(row.a) == user.b",
            "row.a == user.b == true",
            "row.a in [user.b]",
            "true",
        ] {
            assert_eq!(RowIndex::of_filter(not), None, "{not}");
        }
    }

    #[test]
    fn parts_are_typed_as_cel_compares() {
        let ix = RowIndex::of_filter("row.c == user.c").unwrap();
        assert_eq!(ix.part_of_row(&json!({"c": "1"})), Some("s:1".into()));
        assert_eq!(ix.part_of_row(&json!({"c": 1})), Some("n:1".into()));
        assert_eq!(ix.part_of_row(&json!({"c": 1.0})), Some("n:1".into()));
        assert_eq!(ix.part_of_row(&json!({"c": 1.5})), Some("n:1.5".into()));
        assert_eq!(ix.part_of_row(&json!({"c": true})), Some("b:true".into()));
        assert_eq!(ix.part_of_row(&json!({"c": null})), None);
        assert_eq!(ix.part_of_row(&json!({"c": [1]})), None);
        assert_eq!(ix.part_of_row(&json!({})), None);
        let long = "x".repeat(300);
        let part = ix.part_of_row(&json!({ "c": long })).unwrap();
        assert!(part.starts_with("h:") && part.len() == 66, "{part}");
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            ix.parts_of_user(&claims(json!({"c": "1"}))),
            Some(vec!["s:1".into()])
        );
        assert_eq!(ix.parts_of_user(&claims(json!({"d": "1"}))), None);
        let any = RowIndex::of_filter("row.c in user.cs").unwrap();
        assert_eq!(
            any.parts_of_user(&claims(json!({"cs": ["b", "a", "b", {"x": 1}]}))),
            Some(vec!["s:a".into(), "s:b".into()])
        );
        assert_eq!(any.parts_of_user(&claims(json!({"cs": "a"}))), None);
    }
}
