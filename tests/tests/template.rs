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
        // hosted-get has no event source (a Function URL calls it).
        for (_, event) in f["Properties"]["Events"].as_mapping().into_iter().flatten() {
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

/// Each SQS function runs as `JobKind::deployed` says — the numbers the
/// local runner and the seeded simulation play, and the sync lease is sized
/// from (it must outlive a transfer queue's visibility timeout plus the
/// function's timeout, or a twin starts before a crashed run comes back).
#[test]
fn the_deployed_shape_is_the_one_the_library_plays() {
    use metered::JobKind;
    let t = template();
    let queues: std::collections::BTreeMap<String, Value> =
        of_type(&t, "AWS::SQS::Queue").into_iter().collect();
    let concurrency = t["Parameters"]["ThirdPartyConcurrency"]["Default"]
        .as_u64()
        .unwrap();
    let mut seen = Vec::new();
    for (name, f) in of_type(&t, "AWS::Serverless::Function") {
        let binary = f["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        let Ok(kind) = serde_json::from_value::<JobKind>(serde_json::json!(binary)) else {
            continue;
        };
        let shape = kind.deployed();
        let event = f["Properties"]["Events"]
            .as_mapping()
            .and_then(|m| m.values().find(|e| e["Type"] == "SQS"))
            .unwrap_or_else(|| panic!("{name}: an SQS event source"));
        let queue = &queues[&target(&event["Properties"]["Queue"]).unwrap()];
        assert_eq!(
            (
                f["Properties"]["Timeout"].as_u64(),
                queue["Properties"]["VisibilityTimeout"].as_u64(),
                event["Properties"]["BatchSize"].as_u64(),
                Some(concurrency),
            ),
            (
                Some(u64::from(shape.timeout_secs)),
                Some(u64::from(shape.visibility_secs)),
                Some(u64::from(shape.batch_size)),
                Some(u64::from(shape.max_concurrency)),
            ),
            "{name}: template vs JobKind::deployed"
        );
        if matches!(kind, JobKind::CompleteTransfer | JobKind::RecentRecords) {
            let outlives = chrono::Duration::seconds(
                i64::from(shape.visibility_secs) + i64::from(shape.timeout_secs),
            );
            assert!(
                metered::jobs::sync_lease() > outlives,
                "{name}: the sync lease outlives a crashed run's redelivery"
            );
        }
        seen.push(kind);
    }
    seen.sort();
    assert_eq!(seen, JobKind::QUEUED.to_vec());
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
    for kind in metered::JobKind::QUEUED {
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
    assert_eq!(config.queues.len(), metered::JobKind::QUEUED.len());
    assert_eq!(config.app_ssm.as_deref(), Some("/metered/app-config"));
}

/// Every dead-letter queue (any queue a `RedrivePolicy` names) has an alarm
/// on its depth above 0 that notifies the alarm topic: a dead letter is
/// work that stopped, and nobody looks at a queue nobody is told about.
#[test]
fn every_dead_letter_queue_has_its_alarm() {
    let t = template();
    let dlqs: Vec<String> = of_type(&t, "AWS::SQS::Queue")
        .into_iter()
        .filter_map(|(_, q)| target(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]))
        .collect();
    assert_eq!(dlqs.len(), metered::JobKind::QUEUED.len());
    let alarms = of_type(&t, "AWS::CloudWatch::Alarm");
    for dlq in &dlqs {
        let watching: Vec<_> = alarms
            .iter()
            .filter(|(_, a)| {
                let p = &a["Properties"];
                p["Namespace"] == "AWS/SQS"
                    && p["Dimensions"].as_sequence().is_some_and(|d| {
                        d.iter().any(|d| {
                            d["Name"] == "QueueName"
                                && target(&d["Value"]).as_deref() == Some(dlq.as_str())
                        })
                    })
            })
            .collect();
        assert_eq!(watching.len(), 1, "{dlq}: one alarm on its depth");
        let (name, alarm) = watching[0];
        let p = &alarm["Properties"];
        assert_eq!(
            p["MetricName"], "ApproximateNumberOfMessagesVisible",
            "{name}"
        );
        assert_eq!(p["ComparisonOperator"], "GreaterThanThreshold", "{name}");
        assert_eq!(p["Threshold"].as_u64(), Some(0), "{name}: depth > 0");
        assert_eq!(p["Statistic"], "Maximum", "{name}");
        assert_eq!(
            target(&p["AlarmActions"][0]).as_deref(),
            Some("AlarmTopic"),
            "{name} notifies someone"
        );
    }
    assert_eq!(t["Resources"]["AlarmTopic"]["Type"], "AWS::SNS::Topic");
}

/// The burn alarm watches a metric the functions really publish, in the
/// namespace and with the dimensions they publish it with, and the cutoff
/// hour the functions read is the template's parameter.
#[test]
fn the_budget_burn_alarm_watches_what_the_functions_emit() {
    use chrono::TimeZone;
    let t = template();
    let alarm = &t["Resources"]["BudgetBurnAlarm"]["Properties"];
    assert_eq!(alarm["Namespace"], metered::core::NAMESPACE);
    assert_eq!(alarm["MetricName"], metered::core::EARLY_BURN);
    assert!(
        alarm.get("Dimensions").is_none(),
        "published without dimensions"
    );
    assert_eq!(
        target(&alarm["Threshold"]).as_deref(),
        Some("BurnAlarmPercent")
    );
    let vars = &t["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        target(&vars["METERED_BURN_ALARM_BEFORE_HOUR"]).as_deref(),
        Some("BurnAlarmBeforeHourUtc")
    );
    let cutoff = t["Parameters"]["BurnAlarmBeforeHourUtc"]["Default"]
        .as_u64()
        .unwrap() as u32;
    let m = metered::core::Metrics::new();
    m.burn("crm", "acme", "d2026-11-23", 90, 100);
    let before = chrono::Utc
        .with_ymd_and_hms(2026, 11, 23, cutoff - 1, 59, 0)
        .unwrap();
    let doc = &m.take().to_emf("complete-transfer", before, cutoff)[0];
    let published = doc["_aws"]["CloudWatchMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["Metrics"][0]["Name"] == metered::core::EARLY_BURN)
        .expect("published before the cutoff");
    assert_eq!(published["Dimensions"], serde_json::json!([[]]));
    assert_eq!(published["Namespace"], metered::core::NAMESPACE);
    let lookup = |name: &str| match name {
        "METERED_TABLE" => Some("t".to_string()),
        "METERED_APP_CONFIG_SSM" => Some("/p".to_string()),
        "METERED_BURN_ALARM_BEFORE_HOUR" => Some(cutoff.to_string()),
        _ => None,
    };
    let config = metered::edge::lambda::DeployConfig::from_lookup(lookup).unwrap();
    assert_eq!(config.burn_cutoff_hour, cutoff);
}

/// The dashboard's body is JSON once CloudFormation substitutes it, and it
/// shows the burn per org, restarts, dead letters and every DLQ's depth.
#[test]
fn the_dashboard_shows_burn_restarts_and_every_dead_letter_queue() {
    let t = template();
    let body = t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("a Fn::Sub string");
    // What CloudFormation does: every ${X} or ${X.Attr} becomes a value.
    let mut refs = Vec::new();
    let mut substituted = String::new();
    let mut rest = body;
    while let Some(at) = rest.find("${") {
        substituted.push_str(&rest[..at]);
        let end = at + rest[at..].find('}').expect("a closed ${...}");
        let name = rest[at + 2..end].split('.').next().unwrap().to_string();
        substituted.push_str(if name == "BurnAlarmPercent" {
            "80"
        } else {
            "value"
        });
        refs.push(name);
        rest = &rest[end + 1..];
    }
    substituted.push_str(rest);
    let parsed: serde_json::Value = serde_json::from_str(&substituted)
        .unwrap_or_else(|e| panic!("dashboard JSON: {e}\n{substituted}"));
    let widgets = parsed["widgets"].as_array().unwrap();
    let text = substituted.clone();
    for metric in ["BudgetUsedPercent", "Restarts", "DeadLetters", "CallsMade"] {
        assert!(text.contains(metric), "the dashboard shows {metric}");
    }
    for r in &refs {
        assert!(
            r.starts_with("AWS::")
                || t["Resources"].get(r.as_str()).is_some()
                || t["Parameters"].get(r.as_str()).is_some(),
            "${{{r}}} names nothing in the template"
        );
    }
    for (_, q) in of_type(&t, "AWS::SQS::Queue") {
        if let Some(dlq) = target(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]) {
            assert!(refs.contains(&dlq), "the dashboard shows {dlq}'s depth");
        }
    }
    assert!(widgets.len() >= 4);
}

/// Hosted GET reads the table and its secrets, nothing else: no write, no
/// queue, no API secret; it answers through a Function URL.
#[test]
fn hosted_get_is_read_only_behind_a_function_url() {
    let t = template();
    let f = &t["Resources"]["HostedGet"];
    assert_eq!(f["Metadata"]["BuildProperties"]["Binary"], "hosted-get");
    assert_eq!(f["Properties"]["FunctionUrlConfig"]["AuthType"], "NONE");
    let mut actions = Vec::new();
    for policy in f["Properties"]["Policies"].as_sequence().unwrap() {
        for st in policy["Statement"].as_sequence().unwrap() {
            for a in st["Action"].as_sequence().unwrap() {
                actions.push(a.as_str().unwrap().to_string());
            }
            if st["Action"][0] == "secretsmanager:GetSecretValue" {
                assert_eq!(
                    target(&st["Resource"][0]).as_deref(),
                    Some("HostedSecretArn")
                );
            }
        }
    }
    actions.sort();
    assert_eq!(
        actions,
        [
            "dynamodb:GetItem",
            "dynamodb:Query",
            "secretsmanager:GetSecretValue",
            "ssm:GetParameter"
        ]
    );
    assert_eq!(
        t["Outputs"]["HostedGetUrl"]["Value"]["Fn::GetAtt"][0],
        "HostedGetUrl"
    );
}
