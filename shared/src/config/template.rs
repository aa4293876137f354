//! `{{ record.field }}` templates for action paths and bodies. A string that
//! is exactly one placeholder takes the value as it is (a number stays a
//! number); otherwise values are written into the string.

use serde_json::Value;

/// The placeholder paths in `s`, trimmed.
pub fn placeholders(s: &str) -> Vec<&str> {
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
pub fn render(template: &Value, context: &Value) -> Result<Value, String> {
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
}
