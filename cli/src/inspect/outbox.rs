//! `metered outbox`: what waits to be pushed to a Data Source, what is in
//! flight, what the API refused; retry or drop refused rows.

use super::{store_and_scope, Common};
use crate::system::BoxError;
use metered::store::{OutboxState, RefusedRow};
use metered::Tenant;

#[derive(clap::Args, Debug)]
pub struct OutboxArgs {
    #[command(flatten)]
    common: Common,
    /// Only this Data Source (default: every pushed Data Source of the config).
    #[arg(long)]
    datasource: Option<String>,
    /// Read from this DynamoDB table instead of SQLite (what the deployed
    /// functions write; AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
    /// Most refused rows listed per Data Source and organization.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Puts this refused row back to wait for the next flush, after the
    /// data or the platform was fixed (repeat for several); a row written
    /// again since keeps its newer version.
    #[arg(long, value_name = "ID", conflicts_with_all = ["retry_all", "drop", "drop_all"])]
    retry: Vec<String>,
    /// Every refused row of the Data Source(s) and organization(s) back to waiting.
    #[arg(long, conflicts_with_all = ["drop", "drop_all"])]
    retry_all: bool,
    /// Forgets this refused row: it is never sent (repeat for several).
    #[arg(long, value_name = "ID", conflicts_with = "drop_all")]
    drop: Vec<String>,
    /// Forgets every refused row of the Data Source(s) and organization(s).
    #[arg(long)]
    drop_all: bool,
}

/// `metered outbox`: what waits to be pushed, what is in flight, what the
/// API refused; retry or drop refused rows.
pub async fn outbox(args: OutboxArgs) -> Result<(), BoxError> {
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    let datasources = pushed_datasources(&args, scope.config.as_ref())?;
    let now = chrono::Utc::now();
    let mut report = Vec::new();
    for org in &scope.orgs {
        let key = Tenant::new(org, &scope.app);
        for ds in &datasources {
            let touched = if args.retry_all || !args.retry.is_empty() {
                let ids = (!args.retry_all).then_some(&args.retry[..]);
                Some((
                    "back to waiting",
                    store.retry_refused(&key, ds, ids, now).await?,
                ))
            } else if args.drop_all || !args.drop.is_empty() {
                let ids = (!args.drop_all).then_some(&args.drop[..]);
                Some(("dropped", store.drop_refused(&key, ds, ids).await?))
            } else {
                None
            };
            report.push(Line {
                org: org.clone(),
                ds: ds.clone(),
                touched,
                state: store.outbox_state(&key, ds).await?,
                pending: store.pending_count(&key, ds).await?,
                refused: store.refused_rows(&key, ds, args.limit).await?,
            });
        }
    }
    if args.common.json {
        let out: Vec<_> = report.iter().map(Line::json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for line in &report {
        line.print();
    }
    if report.is_empty() {
        println!("no Data Sources to show");
    }
    Ok(())
}

/// `--datasource`, else every pushed (not hosted) Data Source of the
/// config; the database alone cannot say.
fn pushed_datasources(
    args: &OutboxArgs,
    config: Option<&metered::AppConfig>,
) -> Result<Vec<String>, BoxError> {
    match (&args.datasource, config) {
        (Some(ds), _) => Ok(vec![ds.clone()]),
        (None, Some(config)) => Ok(config
            .datasource_names()
            .into_iter()
            .filter(|n| config.datasource(n).is_ok_and(|d| !d.hosted()))
            .collect()),
        (None, None) => Err("pass --datasource NAME (or --config): the database alone does not say which Data Sources the app pushes to".into()),
    }
}

/// One organization's outbox for one Data Source.
struct Line {
    org: String,
    ds: String,
    /// What `--retry`/`--drop` did: (what, rows).
    touched: Option<(&'static str, u64)>,
    state: OutboxState,
    pending: u64,
    refused: Vec<RefusedRow>,
}

impl Line {
    fn json(&self) -> serde_json::Value {
        let state = &self.state;
        serde_json::json!({
            "org": self.org,
            "datasource": self.ds,
            "changed": self.touched.map(|(what, n)| serde_json::json!({"what": what, "rows": n})),
            "waiting": self.pending,
            "in_flight": state.inflight.as_ref().map(|c| serde_json::json!({"seq": c.seq, "rows": c.rows.len()})),
            "searching_for_refused_row": state.probe,
            "pushes": state.pushes,
            "rows_pushed": state.rows_pushed,
            "last_flush": state.last_flush,
            "refused": self.refused,
        })
    }

    fn print(&self) {
        let Line {
            org,
            ds,
            touched,
            state,
            pending,
            refused,
        } = self;
        if let Some((what, n)) = touched {
            println!("{org} {ds}: {n} refused row(s) {what}");
        }
        let inflight = state.inflight.as_ref().map_or("none".to_string(), |c| {
            format!("chunk {} of {} rows", c.seq, c.rows.len())
        });
        println!(
            "{org:<10} {ds:<16} waiting {pending:>6}  in flight: {inflight}  pushed {} rows in {} calls{}",
            state.rows_pushed,
            state.pushes,
            match &state.probe {
                Some(p) => format!("  (finding a refused row: chunks of {})", p.rows),
                None => String::new(),
            }
        );
        for r in refused {
            println!(
                "    refused {}  {}  {}",
                r.refused_at.format("%Y-%m-%d %H:%M"),
                r.id,
                r.reason
            );
        }
        if !refused.is_empty() && touched.is_none() {
            println!("    (metered outbox --datasource {ds} --org {org} --retry ID | --retry-all | --drop ID | --drop-all)");
        }
    }
}
