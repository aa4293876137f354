//! Decision nodes: one record's fate in one workflow (wait for a related
//! record, filtered out, pass with its actions, or quarantined), from stored
//! data and the compiled CEL programs only: no API call.

use super::*;

/// Runs a compiled expression on a record's context; a missing field is "no".
pub(super) fn eval(program: &cel::Program, ctx: &Value, what: &str) -> Result<bool> {
    let mut cel_ctx = cel::Context::default();
    for key in ["record", "related", "change", "now"] {
        let v = cel::to_value(ctx.get(key).cloned().unwrap_or(Value::Null))
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
        cel_ctx.add_variable_from_value(key, v);
    }
    match program.execute(&cel_ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(Error::Config(format!(
            "{what}: expected true or false, got {other:?}"
        ))),
        // A missing field on a record is "no": data varies, configs must not crash on it.
        Err(e) => {
            tracing::debug!(%what, error = %e, "expression did not evaluate; treated as false");
            Ok(false)
        }
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
        mut relookups: Option<&mut Relookups>,
        loaded: &Loaded,
    ) -> Result<Plan> {
        let now = self.svc.clock.now();
        let data = record.data.clone().unwrap_or(Value::Null);
        let mut related = serde_json::Map::new();
        let mut waiting = false;
        for (name, rel) in &wf.config.related {
            let Some(id) = crate::handlers::sync::id_at(&data, &rel.via) else {
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
        if waiting {
            return Ok(Plan::Waiting);
        }
        let ctx = json!({ "record": data, "related": Value::Object(related), "change": change.as_str(), "now": now.to_rfc3339() });
        for (i, c) in wf.conditions.iter().enumerate() {
            if !eval(c, &ctx, &format!("workflows.{}.conditions[{i}]", wf.name))? {
                return Ok(Plan::Filtered);
            }
        }
        let mut actions = Vec::new();
        for (i, a) in wf.config.actions.iter().enumerate() {
            if let Some(w) = &wf.whens[i] {
                if !eval(w, &ctx, &format!("workflows.{}.actions[{i}].when", wf.name))? {
                    continue;
                }
            }
            // A template is checked when the config loads; what it lacks
            // here is this record's data, so only this record is set aside.
            let bad =
                |e: String| Plan::Quarantined(format!("workflows.{}.actions[{i}]: {e}", wf.name));
            match a {
                ActionConfig::Http {
                    method, path, body, ..
                } => {
                    let path = match render(&Value::String(path.clone()), &ctx) {
                        Ok(Value::String(s)) => s,
                        Ok(other) => other.to_string(),
                        Err(e) => return Ok(bad(e)),
                    };
                    let body = match body.as_ref().map(|b| render(b, &ctx)).transpose() {
                        Ok(b) => b,
                        Err(e) => return Ok(bad(e)),
                    };
                    actions.push((
                        i,
                        Act::Http {
                            method: method.clone(),
                            path,
                            body,
                        },
                    ));
                }
                ActionConfig::DatasourcePush { row, .. } => {
                    let delete = match &wf.delete_whens[i] {
                        Some(d) => eval(
                            d,
                            &ctx,
                            &format!("workflows.{}.actions[{i}].delete_when", wf.name),
                        )?,
                        None => false,
                    };
                    if delete {
                        actions.push((i, Act::Delete(record.id.clone())));
                    } else {
                        match render(row, &ctx) {
                            Ok(row) => match crate::store::outbox::unqueueable(&row) {
                                Some(why) => return Ok(bad(why)),
                                None => actions.push((i, Act::Insert(row))),
                            },
                            Err(e) => return Ok(bad(e)),
                        }
                    }
                }
            }
        }
        Ok(Plan::Pass { actions })
    }
}
