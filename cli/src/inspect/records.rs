//! `metered records`: the records a sync stored, per organization.

use super::{store_and_scope, Common};
use crate::system::BoxError;
use metered::Tenant;

#[derive(clap::Args, Debug)]
pub struct RecordsArgs {
    /// Record type, e.g. invoices.
    record_type: String,
    #[command(flatten)]
    common: Common,
    /// Most records to list.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Read from this DynamoDB table instead of SQLite (AWS credentials and
    /// region from the environment; AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
}

pub async fn records(args: RecordsArgs) -> Result<(), BoxError> {
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    if let Some(config) = &scope.config {
        config.record_type(&args.record_type)?;
    }
    let mut all = Vec::new();
    for org in &scope.orgs {
        let key = Tenant::new(org, &scope.app);
        for r in store
            .list(&key, &args.record_type, None, args.limit)
            .await?
        {
            all.push((org.clone(), r));
        }
    }
    if args.common.json {
        let out: Vec<_> = all
            .iter()
            .map(|(org, r)| serde_json::json!({"org": org, "record": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "no `{}` records of app `{}` ({})",
            args.record_type,
            scope.app,
            scope.orgs.join(", ")
        );
        return Ok(());
    }
    let t = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    println!(
        "  {:<10} {:<14} {:<17} {:<17} {:<17} seen",
        "org", "id", "first seen", "last synced", "last looked up"
    );
    for (org, r) in &all {
        println!(
            "  {:<10} {:<14} {:<17} {:<17} {:<17} {}",
            org,
            r.id,
            t(Some(r.first_seen)),
            t(r.last_synced),
            t(r.last_looked_up),
            if r.seen() { "yes" } else { "no (looked for)" }
        );
    }
    Ok(())
}
