//! `metered connections`: each organization's connection health, and
//! `--resume`.

use super::{dynamo_table, open_db, scope, Common, Scope};
use crate::system::BoxError;
use metered::quota::{QuotaKey, QuotaStore};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    common: Common,
    /// Read from (and resume on) this DynamoDB table instead of SQLite
    /// (AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
    /// Lifts the pause of the organization(s) at once (after the credential
    /// was fixed): forgets the failures and the org's block. Jobs waiting
    /// for the pause come back at the time they were given; scheduled
    /// syncs start at once.
    #[arg(long)]
    resume: bool,
}

/// `metered connections`: each organization's connection health (ok,
/// failing, or paused with the API's reason), and `--resume`.
pub async fn connections(args: ConnectionsArgs) -> Result<(), BoxError> {
    let (store, scope): (Arc<dyn QuotaStore>, Scope) = match &args.dynamodb_table {
        Some(table) => (
            Arc::new(metered::adapters::aws::DynamoQuota::new(
                dynamo_table(table).await,
            )),
            scope(&args.common, None).await?,
        ),
        None => {
            let db = open_db(&args.common.db)?;
            let scope = scope(&args.common, Some((&db, &args.common.db))).await?;
            (
                Arc::new(metered::adapters::sqlite::SqliteQuota::new(db)),
                scope,
            )
        }
    };
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
        let before = store.health(&key).await?;
        if args.resume {
            store.resume(&key).await?;
        }
        let health = store.health(&key).await?;
        out.push((org.clone(), before, health));
    }
    if args.common.json {
        let rows: Vec<_> = out
            .iter()
            .map(|(org, before, h)| {
                serde_json::json!({
                    "org": org,
                    "paused": h.paused_at(now),
                    "health": h,
                    "state": h.describe(now),
                    "resumed": args.resume && before.failures > 0,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (org, before, h) in &out {
        if args.resume && before.failures > 0 {
            println!("{org:<10} resumed (was: {})", before.describe(now));
        } else {
            println!("{org:<10} {}", h.describe(now));
        }
    }
    if out.is_empty() {
        println!("no organizations to show");
    }
    Ok(())
}
