//! `metered dlq list | show ID | redrive`: the dead letters of every job
//! queue, locally (SQLite) or deployed (SQS), and putting them back after a
//! fix.

use crate::system::{default_db, BoxError};
use metered::jobs::{DeadLetter, JobQueue};
use metered::jobs::{JobEnvelope, JobKind};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The SQLite database a `metered run` wrote.
    #[arg(long, global = true, default_value_os_t = default_db())]
    db: PathBuf,
    /// Use the deployed SQS queues instead: their URLs from the functions'
    /// variables METERED_QUEUE_URL_<KIND> and METERED_DLQ_URL_<KIND> (as
    /// `metered local-infra` prints them), AWS config from the environment.
    #[arg(long, global = true)]
    sqs: bool,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Every dead letter: kind, org, job id, restarts and why it died.
    List(Filter),
    /// One dead letter's whole envelope and reason.
    Show {
        /// The job id (or, for a body that is no job, the message id).
        id: String,
    },
    /// Puts dead letters back on their queue to run now: envelope intact
    /// (id, generation, checkpoint), any earlier wait cleared. Narrow it
    /// with --kind, --org, --id or --reason; moving every dead letter takes
    /// --all.
    #[command(after_help = "Examples:
  metered dlq redrive --kind complete-transfer --reason 'HTTP 404' --dry-run
  metered dlq redrive --org acme --id 3f2a… --reset-restarts
  metered dlq redrive --all --sqs")]
    Redrive {
        #[command(flatten)]
        filter: Filter,
        /// Start the restart count again (a job that died of the restart
        /// cap would otherwise die again at its next restart).
        #[arg(long)]
        reset_restarts: bool,
        /// List what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Move every dead letter of every kind (required when no filter
        /// narrows the redrive).
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args, Debug, Default)]
struct Filter {
    /// Only this kind (complete-transfer, pk-lookup, workflow, action-http, …).
    #[arg(long, value_parser = crate::inspect::parse_kind)]
    kind: Option<JobKind>,
    /// Only the job with this id (with --org when orgs share ids).
    #[arg(long)]
    id: Option<String>,
    /// Only this organization's jobs.
    #[arg(long)]
    org: Option<String>,
    /// Only dead letters whose reason contains this text (any case).
    #[arg(long)]
    reason: Option<String>,
}

impl Filter {
    fn matches(&self, d: &DeadLetter) -> bool {
        let job = JobEnvelope::parse(&d.body).ok();
        self.id
            .as_ref()
            .is_none_or(|id| job.as_ref().map_or(&d.message_id, |j| &j.id) == id)
            && self
                .org
                .as_ref()
                .is_none_or(|o| job.as_ref().is_some_and(|j| &j.org == o))
            && self
                .reason
                .as_ref()
                .is_none_or(|r| d.reason.to_lowercase().contains(&r.to_lowercase()))
    }

    /// Whether anything narrows the choice.
    fn narrows(&self) -> bool {
        self.kind.is_some() || self.id.is_some() || self.org.is_some() || self.reason.is_some()
    }
}

/// The dead letters `filter` chooses, with their kind.
async fn chosen(
    queues: &[(JobKind, Arc<dyn JobQueue>)],
    filter: &Filter,
) -> Result<Vec<serde_json::Value>, BoxError> {
    let mut all = Vec::new();
    for (kind, q) in queues {
        if filter.kind.is_some_and(|k| k != *kind) {
            continue;
        }
        for d in q.dead_letters(10_000).await? {
            if filter.matches(&d) {
                all.push(line(*kind, &d));
            }
        }
    }
    Ok(all)
}

fn print_lines(all: &[serde_json::Value]) {
    for d in all {
        println!(
            "  {:<22} {:<10} {:<36} restarts {:<3} {}",
            d["kind"].as_str().unwrap_or(""),
            d["org"].as_str().unwrap_or("-"),
            d["id"].as_str().or(d["message_id"].as_str()).unwrap_or(""),
            d["restarts"],
            d["reason"].as_str().unwrap_or("")
        );
    }
}

/// The queues to work on, one per job kind.
async fn queues(args: &Args) -> Result<Vec<(JobKind, Arc<dyn JobQueue>)>, BoxError> {
    let mut out: Vec<(JobKind, Arc<dyn JobQueue>)> = Vec::new();
    if args.sqs {
        let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_sqs::Client::new(&aws);
        let urls = metered::edge::lambda::queue_urls(|name| std::env::var(name).ok())?;
        for (kind, url, dlq) in urls {
            let q =
                metered::adapters::aws::SqsQueue::new(client.clone(), url, dlq).with_wait_secs(0);
            out.push((kind, Arc::new(q)));
        }
        if out.is_empty() {
            return Err("--sqs: no METERED_QUEUE_URL_<KIND>/METERED_DLQ_URL_<KIND> set; `metered local-infra` prints them for ministack, the stack's outputs for AWS".into());
        }
        return Ok(out);
    }
    if !args.db.exists() {
        return Err(format!(
            "{}: no database here; pass --db (or --sqs for the deployed queues)",
            args.db.display()
        )
        .into());
    }
    let db = metered::adapters::sqlite::Db::open(&args.db)?;
    // In a simulation's database "now" is where the simulation ended: a
    // job redriven at the wall clock's now would wait days of simulated
    // time, and the next simulated run would never pick it up.
    let clock: metered::SharedClock = match crate::system::simulated_until(&db).await? {
        Some(until) => Arc::new(metered::ManualClock::new(until)),
        None => Arc::new(metered::SystemClock),
    };
    for (kind, q) in metered::edge::local::local_queues(&db, &clock) {
        out.push((kind, q));
    }
    Ok(out)
}

fn line(kind: JobKind, d: &DeadLetter) -> serde_json::Value {
    let job = JobEnvelope::parse(&d.body).ok();
    serde_json::json!({
        "kind": kind.as_str(),
        "message_id": d.message_id,
        "org": job.as_ref().map(|j| j.org.clone()),
        "id": job.as_ref().map(|j| j.id.clone()),
        "restarts": job.as_ref().map(|j| j.restarts),
        "reason": d.reason,
        "body": if job.is_some() { serde_json::Value::Null } else { d.body.clone().into() },
    })
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let queues = queues(&args).await?;
    match &args.action {
        Action::List(filter) => list(&queues, filter, args.json).await,
        Action::Show { id } => show(&queues, id).await,
        Action::Redrive {
            filter,
            reset_restarts,
            dry_run,
            all,
        } => redrive(&queues, filter, *reset_restarts, *dry_run, *all, args.json).await,
    }
}

/// `dlq list`: the dead letters the filter keeps.
async fn list(
    queues: &[(JobKind, Arc<dyn JobQueue>)],
    filter: &Filter,
    json: bool,
) -> Result<(), BoxError> {
    let all = chosen(queues, filter).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no dead letters");
    } else {
        print_lines(&all);
        println!(
            "{} dead letter(s); `metered dlq redrive --kind K --id ID` puts them back",
            all.len()
        );
    }
    Ok(())
}

/// `dlq show ID`: one dead letter's whole envelope and reason.
async fn show(queues: &[(JobKind, Arc<dyn JobQueue>)], id: &str) -> Result<(), BoxError> {
    let filter = Filter {
        id: Some(id.to_string()),
        ..Default::default()
    };
    let mut found = Vec::new();
    for (kind, q) in queues {
        for d in q.dead_letters(10_000).await? {
            if filter.matches(&d) {
                let mut v = line(*kind, &d);
                v["body"] = serde_json::from_str(&d.body).unwrap_or(d.body.clone().into());
                found.push(v);
            }
        }
    }
    if found.is_empty() {
        return Err(format!("no dead letter with id `{id}` (see `metered dlq list`)").into());
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(())
}

/// `dlq redrive`: the chosen dead letters back on their queue, to run now;
/// every one only with `--all`; `--dry-run` lists.
async fn redrive(
    queues: &[(JobKind, Arc<dyn JobQueue>)],
    filter: &Filter,
    reset_restarts: bool,
    dry_run: bool,
    all: bool,
    json: bool,
) -> Result<(), BoxError> {
    if dry_run || (!filter.narrows() && !all) {
        let would = chosen(queues, filter).await?;
        if !dry_run {
            return Err(format!(
                "this would put every dead letter ({}) back on its queue; confirm with --all, or narrow with --kind, --org, --id or --reason (--dry-run lists them)",
                would.len()
            )
            .into());
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"would_redrive": would.len(), "dead_letters": would})
            );
        } else {
            print_lines(&would);
            println!(
                "{} dead letter(s) would go back (dry run: nothing moved)",
                would.len()
            );
        }
        return Ok(());
    }
    let mut total = 0;
    let mut out = serde_json::Map::new();
    for (kind, q) in queues {
        if filter.kind.is_some_and(|k| k != *kind) {
            continue;
        }
        let choose = |d: &DeadLetter| {
            if !filter.matches(d) {
                return None;
            }
            // A body that is no job would only die again.
            let mut job = JobEnvelope::parse(&d.body).ok()?;
            if reset_restarts {
                job.restarts = 0;
                job.attempts = 0;
            }
            // Redriven means "run it now": a wait it was given before
            // it died (a restart's backoff) no longer applies.
            job.not_before = None;
            Some(job.to_body())
        };
        let moved = q.redrive(&choose).await?;
        if moved > 0 {
            out.insert(kind.as_str().to_string(), moved.into());
        }
        total += moved;
    }
    if json {
        println!("{}", serde_json::json!({"redriven": total, "by_kind": out}));
    } else {
        println!(
            "{total} dead letter(s) back on their queue{}",
            if total > 0 {
                format!(" ({})", serde_json::Value::Object(out))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
