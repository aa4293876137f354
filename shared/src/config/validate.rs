//! The one validation pass of an app config, run by [`AppConfig::parse`]:
//! each section in turn, and every error names the field and what was
//! expected. The sections' own files hold their types; the rules that need
//! the whole tree (a sync names a record type, a workflow a related type, a
//! push action a Data Source) live here, so no section imports the app.

use crate::config::app::{AppConfig, AuthScheme, CountLevel, Pagination, RecordTypeConfig};
use crate::config::datasource::{DataSourceConfig, DataSourceMode, PushShape};
use crate::config::sync::{ConnectionConfig, SyncConfig};
use crate::config::workflow::{
    check_template, compile, ActionConfig, MissingPolicy, RelatedConfig, WorkflowConfig,
};
use crate::core::error::{Error, Result};

impl AppConfig {
    /// Checks everything a run would trip on, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_app()?;
        self.validate_rate_limit()?;
        self.validate_endpoints()?;
        self.validate_record_types()?;
        self.validate_syncs()?;
        workflows(self)?;
        datasources(self)
    }

    /// The app's name, base URL, limits and auth scheme.
    fn validate_app(&self) -> Result<()> {
        if self.app.name.trim().is_empty() {
            return bad("app.name".into(), "must not be empty".into());
        }
        match reqwest::Url::parse(&self.app.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                return bad(
                    "app.base_url".into(),
                    format!("expected an http(s) URL, got scheme `{}`", u.scheme()),
                )
            }
            Err(e) => {
                return bad(
                    "app.base_url".into(),
                    format!("expected a URL like https://api.example.com/v1 ({e})"),
                )
            }
        }
        self.app.limits.validate().map_err(|e| {
            Error::Config(format!(
                "app.{}",
                e.to_string().trim_start_matches("invalid configuration: ")
            ))
        })?;
        if let Some(auth) = &self.app.auth {
            match (auth.scheme, &auth.header) {
                (AuthScheme::Header, None) => {
                    return bad(
                        "app.auth.header".into(),
                        "required with scheme = \"header\" (e.g. \"X-Api-Key\")".into(),
                    )
                }
                (AuthScheme::Bearer, Some(_)) => {
                    return bad(
                        "app.auth.header".into(),
                        "only used with scheme = \"header\"".into(),
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `app.rate_limit`: each header, pointer and count has a window to pace against.
    fn validate_rate_limit(&self) -> Result<()> {
        let rl = &self.app.rate_limit;
        if rl.limit_header.is_some() && rl.remaining_header.is_none() {
            return bad(
                "app.rate_limit.limit_header".into(),
                "only used with remaining_header (the count the limit is of)".into(),
            );
        }
        if rl.remaining_header.is_some()
            && !self
                .app
                .limits
                .windows()
                .any(|(w, _)| w == rl.remaining_window)
        {
            return bad(
                "app.rate_limit.remaining_window".into(),
                format!(
                    "`{}`, but app.limits sets no per_{} limit to pace it against",
                    rl.remaining_window, rl.remaining_window
                ),
            );
        }
        if rl.bucket_header.is_some() && self.app.limits.buckets.is_empty() {
            return bad(
                "app.rate_limit.bucket_header".into(),
                "app.limits sets no [[app.limits.buckets]] to pace it against".into(),
            );
        }
        if let Some(p) = rl.cost_pointer.as_deref() {
            if !p.starts_with('/') {
                return bad(
                    "app.rate_limit.cost_pointer".into(),
                    format!("{p:?} is not a JSON pointer (it starts with `/`, e.g. \"/extensions/cost/actualQueryCost\")"),
                );
            }
        }
        for (i, count) in rl.counts.iter().enumerate() {
            let field = format!("app.rate_limit.counts[{i}]");
            let limits = match count.level {
                CountLevel::Org => Some(&self.app.limits),
                CountLevel::App => self.app.limits.app_wide.as_deref(),
            };
            let Some(limits) = limits else {
                return bad(
                    field,
                    "level = \"app\", but app.limits sets no [app.limits.app_wide]".into(),
                );
            };
            let secs = count.every.as_secs();
            let found = limits
                .windows()
                .any(|(k, _)| !k.needs_read() && u64::from(k.secs()) == secs);
            if !found || count.every.subsec_nanos() != 0 {
                return bad(
                    field,
                    format!(
                        "every = {:?}, but no fixed window of that length is configured at that level to pace",
                        count.every
                    ),
                );
            }
        }
        Ok(())
    }

    /// `app.endpoint_costs` and `app.exempt_endpoints`: `METHOD /path` patterns, and a cost every level can ever grant.
    fn validate_endpoints(&self) -> Result<()> {
        let endpoint_pattern = |e: &str| {
            e.split_once(' ').is_some_and(|(m, p)| {
                !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase()) && p.starts_with('/')
            })
        };
        for (e, cost) in &self.app.endpoint_costs {
            let field = format!("app.endpoint_costs.{e:?}");
            if !endpoint_pattern(e) {
                return bad(
                    field,
                    format!("expected `METHOD /path` (e.g. \"GET /search/*\"), got {e:?}"),
                );
            }
            let fits = self.app.limits.check_cost(*cost).and_then(|()| {
                self.app
                    .limits
                    .app_wide
                    .as_ref()
                    .map_or(Ok(()), |app| app.check_cost(*cost))
            });
            if let Err(e) = fits {
                return bad(
                    field,
                    e.to_string()
                        .trim_start_matches("impossible request: ")
                        .to_string(),
                );
            }
        }
        for (i, e) in self.app.exempt_endpoints.iter().enumerate() {
            let ok = endpoint_pattern(e);
            if !ok {
                return bad(
                    format!("app.exempt_endpoints[{i}]"),
                    format!("expected `METHOD /path` (e.g. \"POST /hooks/*\"), got {e:?}"),
                );
            }
        }
        Ok(())
    }

    /// At least one record type, each valid.
    fn validate_record_types(&self) -> Result<()> {
        if self.record_types.is_empty() {
            return bad(
                "record_types".into(),
                "declare at least one record type ([record_types.NAME])".into(),
            );
        }
        for (name, rt) in &self.record_types {
            self.validate_record_type(name, rt)?;
        }
        Ok(())
    }

    /// One record type: paths, page sizes, pagination, JSON pointers, bulk
    /// lookups and foreign keys to declared types.
    fn validate_record_type(&self, name: &str, rt: &RecordTypeConfig) -> Result<()> {
        let f = |field: &str| format!("record_types.{name}.{field}");
        if !rt.list_path.starts_with('/') {
            return bad(
                f("list_path"),
                format!("expected a path starting with `/`, got {:?}", rt.list_path),
            );
        }
        if rt.max_page_size == 0 {
            return bad(f("max_page_size"), "must be at least 1".into());
        }
        if let Some(p) = rt.page_size {
            if p == 0 || p > rt.max_page_size {
                return bad(
                    f("page_size"),
                    format!(
                        "{p} must be between 1 and max_page_size ({})",
                        rt.max_page_size
                    ),
                );
            }
        }
        if let Pagination::Cursor {
            next_pointer,
            next_header,
            ..
        } = &rt.pagination
        {
            if next_pointer.is_some() == next_header.is_some() {
                return bad(
                    f("pagination"),
                    "cursor pagination needs exactly one of next_pointer and next_header".into(),
                );
            }
        }
        for (field, ptr) in [
            ("records_pointer", Some(&rt.records_pointer)),
            ("id_pointer", Some(&rt.id_pointer)),
            ("updated_at_pointer", rt.updated_at_pointer.as_ref()),
            ("get_pointer", rt.get_pointer.as_ref()),
        ] {
            if let Some(ptr) = ptr {
                if !(ptr.is_empty() || ptr.starts_with('/')) {
                    return bad(
                        f(field),
                        format!("expected a JSON pointer like \"/data\", got {ptr:?}"),
                    );
                }
            }
        }
        if let Some(get) = &rt.get_path {
            if !get.starts_with('/') || !get.contains("{id}") {
                return bad(
                    f("get_path"),
                    format!(
                        "expected a path with `{{id}}`, e.g. \"/customers/{{id}}\", got {get:?}"
                    ),
                );
            }
        }
        if let Some(bulk) = &rt.bulk {
            if bulk.max_ids == 0 {
                return bad(f("bulk.max_ids"), "must be at least 1".into());
            }
        }
        self.validate_foreign_keys(name, rt)
    }

    /// A record type's foreign keys: JSON pointers into the record, each to
    /// a declared type.
    fn validate_foreign_keys(&self, name: &str, rt: &RecordTypeConfig) -> Result<()> {
        for (field, target) in &rt.foreign_keys {
            let at = format!("record_types.{name}.foreign_keys.{field:?}");
            if !field.starts_with('/') {
                return bad(
                    at,
                    "expected a JSON pointer within the record, like \"/customer_id\"".into(),
                );
            }
            if !self.record_types.contains_key(target) {
                return bad(
                    at,
                    format!(
                        "references unknown record type `{target}`; declared: {}",
                        declared_types(self)
                    ),
                );
            }
        }
        Ok(())
    }

    fn validate_syncs(&self) -> Result<()> {
        let mut orgs = std::collections::BTreeSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            self.validate_connection(i, c, &mut orgs)?;
        }
        for (name, sync) in &self.syncs {
            self.validate_sync(name, sync)?;
        }
        Ok(())
    }

    /// One connection: a name no budget uses and no other connection
    /// (`orgs`, the names so far), limits that hold every endpoint's cost,
    /// a secret only where the app says how to send it.
    fn validate_connection<'a>(
        &self,
        i: usize,
        c: &'a ConnectionConfig,
        orgs: &mut std::collections::BTreeSet<&'a String>,
    ) -> Result<()> {
        if c.org.trim().is_empty() {
            return bad(format!("connections[{i}].org"), "must not be empty".into());
        }
        if c.org == crate::quota::APP_LEVEL_ORG {
            return bad(
                format!("connections[{i}].org"),
                format!(
                    "`{}` names the app's own budget ([app.limits.app_wide]); choose another name",
                    c.org
                ),
            );
        }
        if c.org.contains(crate::quota::share::SHARE_MARK) {
            return bad(
                format!("connections[{i}].org"),
                format!(
                    "`{}` contains `{}`, which marks the budgets of shares ([app.limits.shares]); choose another name",
                    c.org,
                    crate::quota::share::SHARE_MARK
                ),
            );
        }
        if !orgs.insert(&c.org) {
            return bad(
                format!("connections[{i}].org"),
                format!("`{}` is listed twice", c.org),
            );
        }
        if let Some(l) = &c.limits {
            l.validate().map_err(|e| {
                Error::Config(format!(
                    "connections[{i}].{}",
                    e.to_string().trim_start_matches("invalid configuration: ")
                ))
            })?;
            // A cost this org's own limits can never hold would make
            // every call to that endpoint impossible for it.
            for (e, cost) in &self.app.endpoint_costs {
                if let Err(err) = l.check_cost(*cost) {
                    return bad(
                        format!("connections[{i}].limits"),
                        format!(
                            "app.endpoint_costs.{e:?} = {cost}: {}",
                            err.to_string().trim_start_matches("impossible request: ")
                        ),
                    );
                }
            }
        }
        if c.secret.is_some() && self.app.auth.is_none() {
            return bad(
                format!("connections[{i}].secret"),
                "set [app.auth] to say how the secret is sent".into(),
            );
        }
        Ok(())
    }

    /// One sync: of a declared record type, with what each kind of sync
    /// it turns on needs.
    fn validate_sync(&self, name: &str, sync: &SyncConfig) -> Result<()> {
        let f = |field: &str| format!("syncs.{name}.{field}");
        let Some(rt) = self.record_types.get(name) else {
            return bad(
                format!("syncs.{name}"),
                format!(
                    "no record type `{name}`; declared: {}",
                    self.record_types
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        if let Some(t) = &sync.complete_transfer {
            if t.every.is_zero() {
                return bad(
                    f("complete_transfer.every"),
                    "must be longer than 0s".into(),
                );
            }
        }
        if let Some(r) = &sync.recent {
            if r.every.is_zero() {
                return bad(f("recent.every"), "must be longer than 0s".into());
            }
            if rt.modified_since_param.is_none() {
                return bad(f("recent"), format!("record_types.{name}.modified_since_param is needed for recent record lookups"));
            }
        }
        let pk = &sync.pk_lookup;
        if pk.enabled {
            if rt.get_path.is_none() && rt.bulk.is_none() {
                return bad(
                    f("pk_lookup"),
                    format!("record_types.{name} needs get_path or bulk to look records up by key"),
                );
            }
            let api_max = rt.bulk.as_ref().map_or(1, |b| b.max_ids);
            if let Some(k) = pk.max_keys_per_call {
                if k == 0 || k > api_max {
                    return bad(
                        f("pk_lookup.max_keys_per_call"),
                        format!("{k} must be between 1 and the API's maximum ({api_max})"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A config error naming the field.
fn bad<T>(field: String, msg: String) -> Result<T> {
    Err(Error::Config(format!("{field}: {msg}")))
}

fn workflows(config: &AppConfig) -> Result<()> {
    for (name, wf) in &config.workflows {
        workflow(config, name, wf)?;
    }
    Ok(())
}

/// The record types a config declares, for "declared: …" in errors.
fn declared_types(config: &AppConfig) -> String {
    config
        .record_types
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// One workflow: a declared trigger, conditions that compile, related
/// records it can reach, and at least one action that can run.
fn workflow(config: &AppConfig, name: &str, wf: &WorkflowConfig) -> Result<()> {
    let f = |field: &str| format!("workflows.{name}.{field}");
    if !config.record_types.contains_key(&wf.trigger.record_type) {
        return Err(Error::Config(format!(
            "{}: unknown record type `{}`; declared: {}",
            f("trigger.record_type"),
            wf.trigger.record_type,
            declared_types(config)
        )));
    }
    for (i, c) in wf.conditions.iter().enumerate() {
        compile(&f(&format!("conditions[{i}]")), c)?;
    }
    for (rname, rel) in &wf.related {
        related(config, &f(&format!("related.{rname}")), rel)?;
    }
    if wf.actions.is_empty() {
        return Err(Error::Config(format!(
            "{}: declare at least one action",
            f("actions")
        )));
    }
    for (i, a) in wf.actions.iter().enumerate() {
        action(&f(&format!("actions[{i}]")), a, wf)?;
    }
    Ok(())
}

/// A related record (`field` is `workflows.W.related.R`): of a declared
/// type, reached by a JSON pointer, fetched as its missing policy says.
fn related(config: &AppConfig, field: &str, rel: &RelatedConfig) -> Result<()> {
    if !config.record_types.contains_key(&rel.record_type) {
        return Err(Error::Config(format!(
            "{field}.record_type: unknown record type `{}`; declared: {}",
            rel.record_type,
            declared_types(config)
        )));
    }
    if !rel.via.starts_with('/') {
        return Err(Error::Config(format!(
            "{field}.via: expected a JSON pointer like \"/customer_id\""
        )));
    }
    if rel.missing == MissingPolicy::Transfer
        && config.sync(&rel.record_type).complete_transfer.is_none()
    {
        return Err(Error::Config(format!(
            "{field}.missing: `transfer` needs syncs.{}.complete_transfer",
            rel.record_type
        )));
    }
    Ok(())
}

/// One action (`field` is `workflows.W.actions[i]`): a valid method and
/// path, templates that name only related records the workflow declares,
/// expressions that compile.
fn action(field: &str, action: &ActionConfig, wf: &WorkflowConfig) -> Result<()> {
    let af = |x: &str| format!("{field}.{x}");
    match action {
        ActionConfig::Http {
            method,
            path,
            body,
            when,
        } => {
            if reqwest::Method::from_bytes(method.as_bytes()).is_err()
                || method.chars().any(|c| c.is_ascii_lowercase())
            {
                return Err(Error::Config(format!(
                    "{}: expected an HTTP method like \"POST\", got {method:?}",
                    af("method")
                )));
            }
            if !path.starts_with('/') {
                return Err(Error::Config(format!(
                    "{}: expected a path starting with `/`",
                    af("path")
                )));
            }
            check_template(
                &af("path"),
                &serde_json::Value::String(path.clone()),
                &wf.related,
            )?;
            if let Some(b) = body {
                check_template(&af("body"), b, &wf.related)?;
            }
            if let Some(w) = when {
                compile(&af("when"), w)?;
            }
        }
        ActionConfig::DatasourcePush {
            row,
            delete_when,
            max_rows_per_call,
            when,
            datasource,
        } => {
            if datasource.is_empty() {
                return Err(Error::Config(format!(
                    "{}: must not be empty",
                    af("datasource")
                )));
            }
            if *max_rows_per_call == Some(0) {
                return Err(Error::Config(format!(
                    "{}: must be at least 1",
                    af("max_rows_per_call")
                )));
            }
            check_template(&af("row"), row, &wf.related)?;
            for (field, expr) in [("delete_when", delete_when), ("when", when)] {
                if let Some(e) = expr {
                    compile(&af(field), e)?;
                }
            }
        }
    }
    Ok(())
}

/// Checks `[datasources]`, `[app.datasource_push]` and that the push
/// actions of one Data Source agree on `max_rows_per_call`.
fn datasources(config: &AppConfig) -> Result<()> {
    push_shape(&config.app.datasource_push)?;
    for (name, ds) in &config.datasources {
        datasource(name, ds)?;
    }
    push_actions_agree(config)
}

/// `[app.datasource_push]`: where and how a push is sent.
fn push_shape(shape: &PushShape) -> Result<()> {
    if !shape.path.starts_with('/') {
        return bad(
            "app.datasource_push.path".into(),
            format!("expected a path starting with `/`, got {:?}", shape.path),
        );
    }
    if reqwest::Method::from_bytes(shape.method.as_bytes()).is_err()
        || shape.method.chars().any(|c| c.is_ascii_lowercase())
    {
        return bad(
            "app.datasource_push.method".into(),
            format!(
                "expected an HTTP method like \"POST\", got {:?}",
                shape.method
            ),
        );
    }
    for (field, value) in [
        ("inserts_field", &shape.inserts_field),
        ("deletes_field", &shape.deletes_field),
    ] {
        if value.trim().is_empty() {
            return bad(
                format!("app.datasource_push.{field}"),
                "must not be empty".into(),
            );
        }
    }
    if shape.inserts_field == shape.deletes_field {
        return bad(
            "app.datasource_push.deletes_field".into(),
            "must differ from inserts_field".into(),
        );
    }
    Ok(())
}

/// One `[datasources.NAME]`: a schedule, and the fields of its mode only.
fn datasource(name: &str, ds: &DataSourceConfig) -> Result<()> {
    if ds.every.is_zero() {
        return bad(
            format!("datasources.{name}.every"),
            "must be more than 0 (e.g. \"5m\")".into(),
        );
    }
    if ds.max_rows_per_call == Some(0) {
        return bad(
            format!("datasources.{name}.max_rows_per_call"),
            "must be at least 1".into(),
        );
    }
    match ds.mode {
        DataSourceMode::Hosted => {
            if ds.secret.is_none() {
                return bad(
                    format!("datasources.{name}.secret"),
                    "a hosted Data Source needs the key its callers' JWTs are signed with, e.g. secret = { env = \"MY_JWT_SECRET\" }".into(),
                );
            }
            if let Some(filter) = &ds.filter {
                crate::config::workflow::compile_with(
                    &format!("datasources.{name}.filter"),
                    filter,
                    &["row", "user"],
                )?;
            }
            if ds.max_page_size == Some(0) {
                return bad(
                    format!("datasources.{name}.max_page_size"),
                    "must be at least 1".into(),
                );
            }
        }
        DataSourceMode::Push => {
            for (field, set) in [
                ("secret", ds.secret.is_some()),
                ("filter", ds.filter.is_some()),
                ("max_page_size", ds.max_page_size.is_some()),
            ] {
                if set {
                    return bad(
                        format!("datasources.{name}.{field}"),
                        "only a hosted Data Source takes it (mode = \"hosted\")".into(),
                    );
                }
            }
        }
    }
    Ok(())
}

/// One outbox per Data Source: its push actions must not disagree on how
/// many rows a call carries.
fn push_actions_agree(config: &AppConfig) -> Result<()> {
    let mut seen: std::collections::BTreeMap<&str, (u32, String)> = Default::default();
    for (wf_name, wf) in &config.workflows {
        for (i, a) in wf.actions.iter().enumerate() {
            let ActionConfig::DatasourcePush {
                datasource,
                max_rows_per_call: Some(max),
                ..
            } = a
            else {
                continue;
            };
            let field = format!("workflows.{wf_name}.actions[{i}].max_rows_per_call");
            if let Some(declared) = config
                .datasources
                .get(datasource)
                .and_then(|d| d.max_rows_per_call)
            {
                if declared != *max {
                    return bad(field, format!("{max} disagrees with datasources.{datasource}.max_rows_per_call = {declared}; set it in one place"));
                }
            }
            match seen.get(datasource.as_str()) {
                Some((other, other_field)) if other != max => {
                    return bad(field, format!("{max} disagrees with {other_field} = {other}; rows of one Data Source share one outbox (set datasources.{datasource}.max_rows_per_call)"));
                }
                _ => {
                    seen.insert(datasource, (*max, field));
                }
            }
        }
    }
    Ok(())
}
