//! Decision nodes: one record's fate in one workflow (wait for a related
//! record, filtered out, pass with its actions, or quarantined), from stored
//! data and the compiled CEL programs only: no API call.

use super::*;

/// What an expression made of one record.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Yes,
    No,
    /// Not a boolean (`null` for an unset field, a string, a number): this
    /// record does not pass and is quarantined with the reason; the rest of
    /// its trigger goes on. It used to fail the whole trigger as a config
    /// error, which a redrive met again.
    Bad(String),
}

/// Runs a compiled expression on a record's context; a missing field is "no".
pub(super) fn eval(program: &cel::Program, ctx: &Value, what: &str) -> Result<Verdict> {
    let mut cel_ctx = cel::Context::default();
    for key in ["record", "related", "change", "now"] {
        let v = cel::to_value(ctx.get(key).cloned().unwrap_or(Value::Null))
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
        cel_ctx.add_variable_from_value(key, v);
    }
    Ok(verdict(program.execute(&cel_ctx), what))
}

/// The rule for an expression's result: true and false pass and filter; a
/// field the record does not have is "no" (data varies: an optional field
/// is often left out); any other value, or an expression the record's data
/// makes fail (`null < 30`, a string compared with a number), sets the
/// record aside with the reason: such data is not what the expression was
/// written for, and silently filtering it would hide that.
fn verdict(result: std::result::Result<cel::Value, cel::ExecutionError>, what: &str) -> Verdict {
    match result {
        Ok(cel::Value::Bool(true)) => Verdict::Yes,
        Ok(cel::Value::Bool(false)) => Verdict::No,
        Ok(other) => Verdict::Bad(format!(
            "{what}: expected true or false, got {}",
            match other {
                cel::Value::Null => "null".to_string(),
                other => format!("{other:?}"),
            }
        )),
        Err(cel::ExecutionError::NoSuchKey(field)) => {
            tracing::debug!(%what, %field, "a field the record lacks; treated as false");
            Verdict::No
        }
        // `related.customer.name` with no related customer: a field of
        // nothing, as missing as a missing field.
        Err(cel::ExecutionError::NoSuchOverload(o))
            if o.function() == "_._"
                && o.argument_types().first().is_some_and(|t| t == "null_type") =>
        {
            tracing::debug!(%what, "a field of a missing value; treated as false");
            Verdict::No
        }
        Err(e) => Verdict::Bad(format!("{what}: did not evaluate on this record: {e}")),
    }
}

impl WorkflowHandler {
    /// Evaluates one record; with `relookups`, notes the missing related
    /// records to ask for (asked for once per slice, in bulk:
    /// [`WorkflowHandler::request_relookups`]).
    pub(super) async fn plan(
        &self,
        wf: &Compiled,
        record: &StoredRecord,
        change: Cause,
        relookups: Option<&mut Relookups>,
        loaded: &Loaded,
    ) -> Result<Plan> {
        let now = self.svc.clock.now();
        let data = record.data.clone().unwrap_or(Value::Null);
        let Some(related) = relate(wf, &data, relookups, loaded) else {
            return Ok(Plan::Waiting);
        };
        let ctx = json!({ "record": data, "related": Value::Object(related), "change": change.as_str(), "now": now.to_rfc3339() });
        for (i, c) in wf.conditions.iter().enumerate() {
            match eval(c, &ctx, &format!("workflows.{}.conditions[{i}]", wf.name))? {
                Verdict::Yes => {}
                Verdict::No => return Ok(Plan::Filtered),
                Verdict::Bad(reason) => return Ok(Plan::Quarantined(reason)),
            }
        }
        let mut actions = Vec::new();
        for i in 0..wf.config.actions.len() {
            match part(wf, i, &ctx, &record.id)? {
                Part::Act(act) => actions.push((i, act)),
                Part::Skip => {}
                Part::SetAside(reason) => return Ok(Plan::Quarantined(reason)),
            }
        }
        Ok(Plan::Pass { actions })
    }
}

/// The workflow's related records of `data`, by name (`null` where the
/// record has no reference, or a missing one is skipped by policy); `None`
/// when one it must wait for is not stored yet, noted in `relookups`.
fn relate(
    wf: &Compiled,
    data: &Value,
    mut relookups: Option<&mut Relookups>,
    loaded: &Loaded,
) -> Option<serde_json::Map<String, Value>> {
    let mut related = serde_json::Map::new();
    let mut waiting = false;
    for (name, rel) in &wf.config.related {
        let Some(id) = crate::handlers::sync::id_at(data, &rel.via) else {
            related.insert(name.clone(), Value::Null);
            continue;
        };
        match (
            loaded.get(&(rel.record_type.clone(), id.clone())),
            rel.missing,
        ) {
            (Some(r), _) => {
                related.insert(name.clone(), r.data.clone().unwrap_or(Value::Null));
            }
            (None, MissingPolicy::Skip) => {
                related.insert(name.clone(), Value::Null);
            }
            (None, policy) => {
                waiting = true;
                if let Some(r) = relookups.as_deref_mut() {
                    r.entry((rel.record_type.clone(), policy))
                        .or_insert_with(|| (rel.min_relookup, BTreeSet::new()))
                        .1
                        .insert(id);
                }
            }
        }
    }
    (!waiting).then_some(related)
}

/// One action's part in a record's plan.
enum Part {
    Act(Act),
    /// Its `when` said no.
    Skip,
    /// This record's data cannot make it (the reason): the record is set
    /// aside, its other actions too.
    SetAside(String),
}

/// What action `i` of `wf` makes of the record in `ctx`. A template is
/// checked when the config loads; what it lacks here is this record's
/// data, so only this record is set aside.
fn part(wf: &Compiled, i: usize, ctx: &Value, record_id: &str) -> Result<Part> {
    let bad = |e: String| Part::SetAside(format!("workflows.{}.actions[{i}]: {e}", wf.name));
    if let Some(w) = &wf.whens[i] {
        match eval(w, ctx, &format!("workflows.{}.actions[{i}].when", wf.name))? {
            Verdict::Yes => {}
            Verdict::No => return Ok(Part::Skip),
            Verdict::Bad(reason) => return Ok(Part::SetAside(reason)),
        }
    }
    match &wf.config.actions[i] {
        ActionConfig::Http {
            method, path, body, ..
        } => {
            let path = match crate::config::template::render_path(path, ctx) {
                Ok(p) => p,
                Err(e) => return Ok(bad(e)),
            };
            Ok(match body.as_ref().map(|b| render(b, ctx)).transpose() {
                Ok(body) => Part::Act(Act::Http {
                    method: method.clone(),
                    path,
                    body,
                }),
                Err(e) => bad(e),
            })
        }
        ActionConfig::DatasourcePush { row, .. } => {
            if let Some(d) = &wf.delete_whens[i] {
                let what = format!("workflows.{}.actions[{i}].delete_when", wf.name);
                match eval(d, ctx, &what)? {
                    // The row's own id, as its insert was keyed; a row
                    // that cannot be rendered any more (its fields are
                    // gone) falls back to the record's id.
                    Verdict::Yes => {
                        let id = render(row, ctx).map_or_else(
                            |_| record_id.to_string(),
                            |r| crate::store::outbox::row_id(&r, record_id),
                        );
                        return Ok(Part::Act(Act::Delete(id)));
                    }
                    Verdict::No => {}
                    Verdict::Bad(reason) => return Ok(Part::SetAside(reason)),
                }
            }
            Ok(match render(row, ctx) {
                Ok(row) => match crate::store::outbox::unqueueable(&row) {
                    Some(why) => bad(why),
                    None => Part::Act(Act::Insert(row)),
                },
                Err(e) => bad(e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_boolean_decides_and_anything_else_sets_the_record_aside() {
        let ok = |v: cel::Value| verdict(Ok(v), "workflows.w.conditions[0]");
        assert_eq!(ok(cel::Value::Bool(true)), Verdict::Yes);
        assert_eq!(ok(cel::Value::Bool(false)), Verdict::No);
        assert!(
            matches!(ok(cel::Value::Null), Verdict::Bad(r) if r.contains("got null") && r.contains("conditions[0]"))
        );
        assert!(matches!(ok(cel::Value::Int(1)), Verdict::Bad(_)));
    }

    #[test]
    fn a_missing_field_is_no_and_data_the_expression_cannot_judge_is_set_aside() {
        let program = crate::config::workflow::compile("c", "record.score < 30").unwrap();
        let run =
            |record: Value| eval(&program, &serde_json::json!({ "record": record }), "c").unwrap();
        assert_eq!(run(serde_json::json!({"score": 10})), Verdict::Yes);
        assert_eq!(run(serde_json::json!({"score": 40})), Verdict::No);
        assert_eq!(run(serde_json::json!({})), Verdict::No, "a missing field");
        let nested = crate::config::workflow::compile("c", "record.customer.vip").unwrap();
        assert_eq!(
            eval(
                &nested,
                &serde_json::json!({"record": {"customer": null}}),
                "c"
            )
            .unwrap(),
            Verdict::No,
            "a field of a missing value"
        );
        for bad in [Value::Null, serde_json::json!("ten")] {
            assert!(
                matches!(run(serde_json::json!({"score": bad})), Verdict::Bad(r) if r.starts_with("c: did not evaluate")),
                "{bad}"
            );
        }
    }
}
