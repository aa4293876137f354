//! `metered quarantine`: records set aside as malformed, with the reason.

use super::{store_and_scope, Common};
use crate::system::BoxError;
use metered::Tenant;

#[derive(clap::Args, Debug)]
pub struct QuarantineArgs {
    #[command(flatten)]
    common: Common,
    /// Most entries to list per organization (newest first).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Read from this DynamoDB table instead of SQLite (what the deployed
    /// functions write; AWS credentials and region from the environment,
    /// AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
}

/// Records set aside (no id, too large, missing a field an action needs),
/// with the reason, per organization.
pub async fn quarantine(args: QuarantineArgs) -> Result<(), BoxError> {
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    let mut all = Vec::new();
    for org in &scope.orgs {
        let key = Tenant::new(org, &scope.app);
        for q in store.quarantined(&key, args.limit).await? {
            all.push((org.clone(), q));
        }
    }
    if args.common.json {
        let out: Vec<_> = all
            .iter()
            .map(|(org, q)| serde_json::json!({"org": org, "quarantined": q}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no quarantined records");
    }
    for (org, q) in &all {
        println!(
            "  {org:<10} {} {:<28} {:<16} {}\n             {}\n             record: {}",
            q.at.format("%Y-%m-%d %H:%M"),
            q.source,
            q.record_id.as_deref().unwrap_or("(no id)"),
            q.record_type,
            q.reason,
            q.excerpt
        );
    }
    Ok(())
}
