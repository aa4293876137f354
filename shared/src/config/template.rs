//! `{{ record.field }}` templates for action paths and bodies. A string that
//! is exactly one placeholder takes the value as it is (a number stays a
//! number); otherwise values are written into the string.

use serde_json::Value;

/// Whether every `{{` of `s` is closed by `}}` before the next `{{`, and no
/// `}}` stands alone: a template such as `"Thank you, {{ name }"` would
/// otherwise be sent as literal text.
pub(crate) fn check_braces(s: &str) -> Result<(), String> {
    let mut rest = s;
    loop {
        let open = rest.find("{{");
        let close = rest.find("}}");
        match (open, close) {
            (None, None) => return Ok(()),
            (None, Some(_)) => return Err(format!("template {s:?}: `}}}}` without `{{{{`")),
            (Some(o), Some(c)) if c < o => {
                return Err(format!("template {s:?}: `}}}}` without `{{{{`"))
            }
            (Some(o), _) => {
                let after = &rest[o + 2..];
                match (after.find("}}"), after.find("{{")) {
                    (Some(c), Some(n)) if n < c => {
                        return Err(format!("template {s:?}: a `{{{{` is not closed by `}}}}`"))
                    }
                    (Some(c), _) => rest = &after[c + 2..],
                    (None, _) => {
                        return Err(format!("template {s:?}: a `{{{{` is not closed by `}}}}`"))
                    }
                }
            }
        }
    }
}

/// Renders a path template: each value is percent-encoded as a path
/// segment (or query value), so a record's data can never change which
/// endpoint is called (`../../admin/x?force=1#` stays one segment). A
/// value that is empty, `.` or `..` is refused: it would name another
/// path once the server resolves it.
pub(crate) fn render_path(template: &str, context: &Value) -> Result<String, String> {
    let mut out = template.to_string();
    for p in placeholders(template) {
        let v =
            lookup(context, p).ok_or_else(|| format!("template {template:?}: nothing at `{p}`"))?;
        let text = match v {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        if matches!(text.as_str(), "" | "." | "..") {
            return Err(format!(
                "template {template:?}: `{p}` is {text:?}, which cannot be a path segment"
            ));
        }
        let encoded: String = text
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        out = out.replacen(&format!("{{{{{}}}}}", find_raw(template, p)), &encoded, 1);
    }
    Ok(out)
}

/// The placeholder paths in `s`, trimmed.
pub(crate) fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push(rest[start + 2..start + end].trim());
        rest = &rest[start + end + 2..];
    }
    out
}

fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(context, |v, part| v.get(part))
}

/// Renders a template value against `context` (`{"record": …, "related": …}`).
pub(crate) fn render(template: &Value, context: &Value) -> Result<Value, String> {
    match template {
        Value::String(s) => {
            let paths = placeholders(s);
            if paths.len() == 1 && s.trim().starts_with("{{") && s.trim().ends_with("}}") {
                return lookup(context, paths[0])
                    .cloned()
                    .ok_or_else(|| format!("template {s:?}: nothing at `{}`", paths[0]));
            }
            let mut out = s.clone();
            for p in paths {
                let v = lookup(context, p)
                    .ok_or_else(|| format!("template {s:?}: nothing at `{p}`"))?;
                let text = match v {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replacen(&format!("{{{{{}}}}}", find_raw(s, p)), &text, 1);
            }
            Ok(Value::String(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|v| render(v, context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| render(v, context).map(|r| (k.clone(), r)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// The placeholder's inner text as written (with its spaces).
fn find_raw<'a>(s: &'a str, path: &'a str) -> &'a str {
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let inner = &rest[start + 2..start + end];
        if inner.trim() == path {
            return inner;
        }
        rest = &rest[start + end + 2..];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_values_and_strings() {
        let ctx = json!({"record": {"id": "inv_1", "amount": 1200, "who": {"name": "Ada"}}});
        assert_eq!(
            render(&json!("{{ record.amount }}"), &ctx).unwrap(),
            json!(1200)
        );
        assert_eq!(
            render(&json!("/x/{{record.id}}/y"), &ctx).unwrap(),
            json!("/x/inv_1/y")
        );
        assert_eq!(
            render(
                &json!({"t": "Hi {{ record.who.name }} ({{ record.amount }})"}),
                &ctx
            )
            .unwrap(),
            json!({"t": "Hi Ada (1200)"})
        );
        assert!(render(&json!("{{ record.nope }}"), &ctx)
            .unwrap_err()
            .contains("record.nope"));
    }

    #[test]
    fn path_values_stay_one_segment() {
        let ctx =
            json!({"record": {"c": "../../admin/x?force=1#", "n": 7, "dots": "..", "ok": "a b/é"}});
        assert_eq!(
            render_path("/customers/{{ record.c }}/notes", &ctx).unwrap(),
            "/customers/..%2F..%2Fadmin%2Fx%3Fforce%3D1%23/notes"
        );
        assert_eq!(
            render_path("/x/{{record.n}}?q={{ record.ok }}", &ctx).unwrap(),
            "/x/7?q=a%20b%2F%C3%A9"
        );
        assert!(render_path("/x/{{ record.dots }}", &ctx)
            .unwrap_err()
            .contains("cannot be a path segment"));
    }

    #[test]
    fn unclosed_placeholders_are_refused() {
        assert!(check_braces("Thank you, {{ related.customer.name }").is_err());
        assert!(check_braces("{{ a }} and {{ b").is_err());
        assert!(check_braces("a }} b").is_err());
        assert!(check_braces("{{ a {{ b }}").is_err());
        assert!(check_braces("{{ a }} and {{b}}, plain { braces }").is_ok());
    }
}
