//! What linters miss about `template.yaml`: partial batch responses, DLQs,
//! timeouts against visibility timeouts, least privilege, and that the
//! template, the functions and the code agree.

use serde_yaml_ng::Value;

fn template() -> Value {
    serde_yaml_ng::from_str(include_str!("../../template.yaml"))
        .expect("template.yaml parses as plain YAML (long-form intrinsics only)")
}

fn resources(t: &Value) -> Vec<(String, Value)> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

fn of_type(t: &Value, ty: &str) -> Vec<(String, Value)> {
    resources(t)
        .into_iter()
        .filter(|(_, r)| r["Type"] == ty)
        .collect()
}

/// The logical id an `Fn::GetAtt: [X, Arn]` or `Ref: X` points to.
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

#[test]
fn every_function_crate_is_deployed_with_cargo_lambda() {
    let t = template();
    let deployed: Vec<String> = of_type(&t, "AWS::Serverless::Function")
        .iter()
        .map(|(_, f)| {
            assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda");
            f["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut crates: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../functions"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Cargo.toml").exists())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
    crates.sort();
    let mut deployed_sorted = deployed.clone();
    deployed_sorted.sort();
    assert_eq!(
        deployed_sorted, crates,
        "every crate in functions/ is in the template, and nothing else"
    );
    let g = &t["Globals"]["Function"];
    assert_eq!(g["Runtime"], "provided.al2023");
    assert_eq!(g["Architectures"][0], "arm64");
}

#[test]
fn sqs_functions_report_partial_failures_and_outlive_nothing() {
    let t = template();
    let queues: std::collections::BTreeMap<String, Value> =
        of_type(&t, "AWS::SQS::Queue").into_iter().collect();
    let mut sqs_functions = 0;
    for (name, f) in of_type(&t, "AWS::Serverless::Function") {
        let timeout = f["Properties"]["Timeout"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} has no explicit timeout"));
        for (_, event) in f["Properties"]["Events"].as_mapping().unwrap() {
            if event["Type"] != "SQS" {
                continue;
            }
            sqs_functions += 1;
            let p = &event["Properties"];
            assert_eq!(
                p["FunctionResponseTypes"][0], "ReportBatchItemFailures",
                "{name}"
            );
            assert!(
                p["ScalingConfig"]["MaximumConcurrency"]
                    .get("Ref")
                    .is_some(),
                "{name}: concurrency respects the third party's limit"
            );
            let queue = &queues[&target(&p["Queue"]).unwrap()];
            let visibility = queue["Properties"]["VisibilityTimeout"].as_u64().unwrap();
            assert!(
                visibility >= 6 * timeout,
                "{name}: visibility {visibility} s < 6 × timeout {timeout} s"
            );
        }
    }
    assert_eq!(sqs_functions, 6);
    for (name, q) in &queues {
        if name.ends_with("DeadLetterQueue") {
            continue;
        }
        let dlq = target(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
            .unwrap_or_else(|| panic!("{name} has no DLQ"));
        assert!(queues.contains_key(&dlq), "{name}'s DLQ {dlq} exists");
    }
}

#[test]
fn no_wildcard_resources_on_data_actions() {
    let t = template();
    for (name, f) in of_type(&t, "AWS::Serverless::Function") {
        for policy in f["Properties"]["Policies"].as_sequence().unwrap() {
            for st in policy["Statement"].as_sequence().unwrap() {
                let actions: Vec<&str> = st["Action"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                assert!(
                    actions.iter().all(|a| !a.ends_with(":*")),
                    "{name}: wildcard action in {actions:?}"
                );
                for r in st["Resource"].as_sequence().unwrap() {
                    assert_ne!(
                        r.as_str(),
                        Some("*"),
                        "{name}: `*` resource for {actions:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn template_and_code_agree() {
    let t = template();
    // The table's keys and TTL are what the adapters expect.
    let table = &t["Resources"]["MeteredTable"]["Properties"];
    assert_eq!(table["KeySchema"][0]["AttributeName"], "pk");
    assert_eq!(table["KeySchema"][1]["AttributeName"], "sk");
    assert_eq!(table["TimeToLiveSpecification"]["AttributeName"], "ttl");
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    // Every queue variable the code reads is set, and points at a queue.
    let vars = &t["Globals"]["Function"]["Environment"]["Variables"];
    for kind in metered::jobs::envelope::JobKind::QUEUED {
        let suffix = metered::edge::lambda::env_suffix(kind);
        for var in [
            format!("METERED_QUEUE_URL_{suffix}"),
            format!("METERED_DLQ_URL_{suffix}"),
        ] {
            let queue = target(&vars[var.as_str()]).unwrap_or_else(|| panic!("{var} is not set"));
            assert_eq!(
                t["Resources"][queue.as_str()]["Type"],
                "AWS::SQS::Queue",
                "{var}"
            );
        }
    }
    let lookup = |name: &str| match name {
        "METERED_TABLE" => Some("t".to_string()),
        "METERED_APP_CONFIG_SSM" => Some("/metered/app-config".to_string()),
        "METERED_MAX_RESTARTS" => vars.get(name).map(|_| "100".to_string()),
        n if n.starts_with("METERED_QUEUE_URL_") || n.starts_with("METERED_DLQ_URL_") => {
            vars.get(n).map(|_| "http://q".to_string())
        }
        _ => None,
    };
    let config = metered::edge::lambda::DeployConfig::from_lookup(lookup).unwrap();
    assert_eq!(
        config.queues.len(),
        metered::jobs::envelope::JobKind::QUEUED.len()
    );
    assert_eq!(config.app_ssm.as_deref(), Some("/metered/app-config"));
}
