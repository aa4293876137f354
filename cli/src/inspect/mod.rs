//! `metered usage`, `records`, `quarantine`, `jobs`, `outbox`, `connections`:
//! what the local database (or DynamoDB) says happened, one file per
//! command. This file holds what they share: the common flags and the
//! scope (which app and organizations, under which limits) they read.

use crate::system::{default_db, load_config, BoxError};
use metered::adapters::sqlite::Db;
use metered::store::RecordStore;
use metered::AppConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

mod connections;
mod jobs;
mod outbox;
mod quarantine;
mod records;
mod usage;

pub use connections::{connections, ConnectionsArgs};
pub use jobs::{jobs, parse_kind, JobsArgs};
pub use outbox::{outbox, OutboxArgs};
pub use quarantine::{quarantine, QuarantineArgs};
pub use records::{records, RecordsArgs};
pub use usage::{usage, UsageArgs};

#[derive(clap::Args, Debug)]
pub struct Common {
    /// The app config, for the app name, organizations and budget. Without
    /// it the app and its organizations are read from the database (the one
    /// app it holds, or the one --app names).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The app to read when the database holds several (default: the only
    /// one it holds; with a DynamoDB table, the bundled example's).
    #[arg(long)]
    app: Option<String>,
    /// The SQLite database a `metered run` or `metered demo --db` wrote.
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
    /// Organization (default: every organization of the app).
    #[arg(long)]
    org: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// The DynamoDB table named on the command line, with the environment's AWS config.
async fn dynamo_table(name: &str) -> metered::adapters::aws::Table {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    metered::adapters::aws::Table::new(aws_sdk_dynamodb::Client::new(&aws), name)
}

/// The record store a command reads (DynamoDB when a table is named, else
/// the SQLite file) and the app and orgs to read in it.
async fn store_and_scope(
    common: &Common,
    dynamodb_table: Option<&str>,
) -> Result<(Arc<dyn RecordStore>, Scope), BoxError> {
    Ok(match dynamodb_table {
        Some(table) => (
            Arc::new(metered::adapters::aws::DynamoStore::new(
                dynamo_table(table).await,
            )),
            scope(common, None).await?,
        ),
        None => {
            let db = open_db(&common.db)?;
            let scope = scope(common, Some((&db, &common.db))).await?;
            (
                Arc::new(metered::adapters::sqlite::SqliteStore::new(db)),
                scope,
            )
        }
    })
}

fn open_db(path: &Path) -> Result<Db, BoxError> {
    if !path.exists() {
        return Err(format!(
            "{}: no database here; run `metered run` or `metered demo --db {}` first, or pass --db",
            path.display(),
            path.display()
        )
        .into());
    }
    // Inspecting only reads: a database this user may not write (another
    // user's, a read-only disk, a copy from a server) is opened read-only.
    match Db::open(path) {
        Ok(db) => Ok(db),
        Err(write_error) => Db::open_read_only(path).map_err(|_| write_error.into()),
    }
}

/// Which app and organizations a command reads, and its config when known.
struct Scope {
    app: String,
    orgs: Vec<String>,
    /// From --config, or the bundled example when its app is the one read.
    config: Option<AppConfig>,
    /// The limits the database's last run of the app ran under (read when
    /// no --config is given): they win over the bundled example's.
    ran_under: Option<crate::system::RanUnder>,
}

impl Scope {
    /// An organization's daily limit: from --config, else from what the
    /// database recorded, else from the bundled example.
    fn per_day(&self, org: &str) -> Option<u32> {
        match &self.ran_under {
            Some(r) => r.per_day(org),
            None => self.config.as_ref().and_then(|c| c.limits_for(org).per_day),
        }
    }

    /// An organization's limits, the same way (None without a config or a
    /// recorded run).
    fn limits(&self, org: &str) -> Option<metered::Limits> {
        match (&self.ran_under, &self.config) {
            (Some(r), _) => Some(r.orgs.get(org).unwrap_or(&r.app).clone()),
            (None, Some(c)) => Some(c.limits_for(org)),
            (None, None) => None,
        }
    }

    /// The app's daily limit, the same way.
    fn app_per_day(&self) -> Option<Option<u32>> {
        match (&self.ran_under, &self.config) {
            (Some(r), _) => Some(r.app.per_day),
            (None, Some(c)) => Some(c.app.limits.per_day),
            (None, None) => None,
        }
    }
}

fn listed(apps: &BTreeMap<String, BTreeSet<String>>) -> String {
    apps.keys()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn empty(db_path: &Path) -> BoxError {
    let p = db_path.display();
    format!("{p}: holds no app's data yet; run `metered run --db {p}` (or `metered demo --db {p}`) first").into()
}

/// The app and organizations to read: from `--config` when given (noting
/// when the database holds nothing of that app); else from the SQLite
/// database itself, which knows the apps and orgs it holds — so a
/// database written with `--config my-app.toml` is read as `my-app`
/// without repeating the flag. `db` is `None` for a DynamoDB table, whose
/// apps cannot be listed without a scan: there `--app` (default: the
/// bundled example's) and `--org` or the example's orgs name them.
async fn scope(common: &Common, db: Option<(&Db, &Path)>) -> Result<Scope, BoxError> {
    if let Some(path) = &common.config {
        return from_config(common, path, db).await;
    }
    let example = load_config(None)?;
    let Some((db, db_path)) = db else {
        return in_table(common, example);
    };
    let apps = db.apps().await?;
    let (app, orgs) = held_app(common.app.as_deref(), &apps, db_path)?;
    eprintln!(
        "app `{app}`, orgs {} (as {} holds them; --app, --org or --config to choose)",
        orgs.iter().cloned().collect::<Vec<_>>().join(", "),
        db_path.display()
    );
    let config = (app == example.app.name).then_some(example);
    let ran_under = crate::system::RanUnder::read(db, &app).await?;
    Ok(Scope {
        app,
        orgs: pick_orgs(common, orgs.into_iter().collect()),
        config,
        ran_under,
    })
}

/// `--org` when given, else every organization in `all`.
fn pick_orgs(common: &Common, all: Vec<String>) -> Vec<String> {
    match &common.org {
        Some(o) => vec![o.clone()],
        None => all,
    }
}

/// With `--config`: its app and organizations (noting when the database
/// holds nothing of that app).
async fn from_config(
    common: &Common,
    path: &Path,
    db: Option<(&Db, &Path)>,
) -> Result<Scope, BoxError> {
    let config = load_config(Some(path))?;
    let app = config.app.name.clone();
    if let Some(other) = common.app.as_ref().filter(|a| **a != app) {
        return Err(format!(
            "--app `{other}` is not the app of {} (`{app}`); pass one or the other",
            path.display()
        )
        .into());
    }
    if let Some((db, db_path)) = db {
        let apps = db.apps().await?;
        if !apps.is_empty() && !apps.contains_key(&app) {
            eprintln!(
                "note: {} holds no data of app `{app}` (from {}); it holds {}",
                db_path.display(),
                path.display(),
                listed(&apps)
            );
        }
    }
    let orgs = pick_orgs(
        common,
        config.connections.iter().map(|c| c.org.clone()).collect(),
    );
    Ok(Scope {
        app,
        orgs,
        config: Some(config),
        ran_under: None,
    })
}

/// A DynamoDB table, which cannot list its apps without a scan: `--app`
/// (default: the bundled example's) and `--org` or the example's orgs.
fn in_table(common: &Common, example: AppConfig) -> Result<Scope, BoxError> {
    let app = common.app.clone().unwrap_or(example.app.name.clone());
    let is_example = app == example.app.name;
    if !is_example && common.org.is_none() {
        return Err(format!(
            "app `{app}`: pass --org (or --config): a DynamoDB table does not list its organizations without a scan"
        )
        .into());
    }
    let orgs = pick_orgs(
        common,
        example.connections.iter().map(|c| c.org.clone()).collect(),
    );
    Ok(Scope {
        app,
        orgs,
        config: is_example.then_some(example),
        ran_under: None,
    })
}

/// The app to read from a SQLite database and its organizations: the one
/// named, or the only one it holds.
fn held_app(
    named: Option<&str>,
    apps: &BTreeMap<String, BTreeSet<String>>,
    db_path: &Path,
) -> Result<(String, BTreeSet<String>), BoxError> {
    if apps.is_empty() {
        return Err(empty(db_path));
    }
    if let Some(app) = named {
        return match apps.get(app) {
            Some(orgs) => Ok((app.to_string(), orgs.clone())),
            None => Err(format!(
                "{}: holds no data of app `{app}`; it holds {}",
                db_path.display(),
                listed(apps)
            )
            .into()),
        };
    }
    let mut it = apps.iter();
    match (it.next(), it.next()) {
        (Some((app, orgs)), None) => Ok((app.clone(), orgs.clone())),
        _ => Err(format!(
            "{}: holds data of several apps ({}); pass --app NAME or --config FILE",
            db_path.display(),
            listed(apps)
        )
        .into()),
    }
}
