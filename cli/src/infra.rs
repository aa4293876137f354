//! `metered local-infra`: creates the table and queues of `template.yaml` on
//! DynamoDB Local and ministack (or any endpoint the AWS SDK is pointed at),
//! reading the template itself so local setups cannot drift from it, and
//! prints the environment the functions need (`eval` it).

use crate::system::BoxError;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The SAM template to read.
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
    /// Prefix of the table and queue names.
    #[arg(long, default_value = "metered")]
    prefix: String,
}

fn target(v: &Value) -> Option<String> {
    if let Some(r) = v.get("Ref") {
        return r.as_str().map(str::to_string);
    }
    v.get("Fn::GetAtt")?
        .as_sequence()?
        .first()?
        .as_str()
        .map(str::to_string)
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(&args.template)
        .map_err(|e| format!("{}: cannot read: {e}", args.template.display()))?;
    let t: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", args.template.display()))?;
    let resources = t["Resources"]
        .as_mapping()
        .ok_or("template has no Resources")?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    // Tables, as the template declares them (the adapters' own create uses the same keys).
    for (id, r) in resources {
        if r["Type"] == "AWS::DynamoDB::Table" {
            let id = id.as_str().unwrap_or_default();
            let name = format!("{}-{}", args.prefix, id);
            metered::adapters::aws::Table::new(aws_sdk_dynamodb::Client::new(&aws), &name)
                .create_if_missing()
                .await?;
            created.insert(id.to_string(), name);
        }
    }
    // Queues: dead-letter queues first, then the queues that redrive to them.
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queues: Vec<(&str, &Value)> = resources
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::SQS::Queue")
        .map(|(k, r)| (k.as_str().unwrap_or_default(), r))
        .collect();
    let mut arns: BTreeMap<String, String> = BTreeMap::new();
    for pass in [false, true] {
        for (id, r) in &queues {
            if r["Properties"]["RedrivePolicy"].is_null() == pass {
                continue;
            }
            let (url, arn) = create_queue(&sqs, &args.prefix, id, r, &arns).await?;
            arns.insert(id.to_string(), arn);
            created.insert(id.to_string(), url);
        }
    }
    // The functions' environment, with every Ref resolved to what was created.
    let vars = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .ok_or("template has no Globals environment")?;
    for (name, value) in vars {
        let name = name.as_str().unwrap_or_default();
        if let Some(created) = target(value).and_then(|id| created.get(&id)) {
            println!("export {name}={created}");
        }
    }
    Ok(())
}

/// Creates the queue `id` as the template declares it (its visibility
/// timeout, and its redrive policy to a dead-letter queue already in
/// `arns`): its URL and ARN.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    id: &str,
    r: &Value,
    arns: &BTreeMap<String, String>,
) -> Result<(String, String), BoxError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut req = sqs.create_queue().queue_name(format!("{prefix}-{id}"));
    if let Some(v) = r["Properties"]["VisibilityTimeout"].as_u64() {
        req = req.attributes(QueueAttributeName::VisibilityTimeout, v.to_string());
    }
    let redrive = &r["Properties"]["RedrivePolicy"];
    if !redrive.is_null() {
        let dlq = target(&redrive["deadLetterTargetArn"])
            .ok_or_else(|| format!("{id}: RedrivePolicy without a deadLetterTargetArn"))?;
        let arn = arns
            .get(&dlq)
            .ok_or_else(|| format!("{id}: its DLQ {dlq} is not a queue of the template"))?;
        let max = redrive["maxReceiveCount"].as_u64().unwrap_or(5);
        req = req.attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
        );
    }
    let url = req.send().await?.queue_url.ok_or("no queue url")?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or("no queue arn")?;
    Ok((url, arn))
}
