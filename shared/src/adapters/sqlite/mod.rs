//! The embedded database behind every SQLite adapter.
//!
//! One file holds quota counters, leases, usage and job queues, so one
//! machine runs the whole system with no server. WAL mode and a busy timeout
//! let several processes share the file; every check-and-take runs inside
//! `BEGIN IMMEDIATE`, which takes the write lock up front, so two processes
//! can never both read "room left" and both take it.

pub(crate) mod outbox;
pub(crate) mod queue;
pub(crate) mod quota;
pub(crate) mod store;

pub use queue::SqliteQueue;
pub use quota::SqliteQuota;
pub use store::SqliteStore;

use crate::core::error::{Disposition, Error, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS quota_window (
    org TEXT NOT NULL, app TEXT NOT NULL, window TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (org, app, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_lease (
    org TEXT NOT NULL, app TEXT NOT NULL, lease_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    cost INTEGER NOT NULL DEFAULT 1, valid_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, app, lease_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS connection_health (
    org TEXT NOT NULL, app TEXT NOT NULL, health TEXT NOT NULL,
    PRIMARY KEY (org, app)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_block (
    org TEXT NOT NULL, app TEXT NOT NULL, blocked_until INTEGER NOT NULL,
    PRIMARY KEY (org, app)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    org TEXT NOT NULL, app TEXT NOT NULL, day TEXT NOT NULL,
    source TEXT NOT NULL, endpoint TEXT NOT NULL, exempt INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (org, app, day, source, endpoint, exempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_hour (
    org TEXT NOT NULL, app TEXT NOT NULL, day TEXT NOT NULL,
    source TEXT NOT NULL, endpoint TEXT NOT NULL, exempt INTEGER NOT NULL,
    hour INTEGER NOT NULL, calls INTEGER NOT NULL, denied INTEGER NOT NULL,
    waited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, app, day, source, endpoint, exempt, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_queue (
    queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
);
CREATE INDEX IF NOT EXISTS job_queue_visible ON job_queue (queue, visible_at);
CREATE TABLE IF NOT EXISTS records (
    org TEXT NOT NULL, app TEXT NOT NULL, record_type TEXT NOT NULL, id TEXT NOT NULL,
    hash TEXT NOT NULL, data TEXT,
    first_seen INTEGER NOT NULL, last_synced INTEGER, last_looked_up INTEGER,
    lookup_claimed_by TEXT,
    PRIMARY KEY (org, app, record_type, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_state (
    org TEXT NOT NULL, app TEXT NOT NULL, sync TEXT NOT NULL,
    high_water INTEGER, last_started INTEGER, last_completed INTEGER, last_pages INTEGER,
    running_job TEXT, lease_until INTEGER,
    last_failed INTEGER, last_failure TEXT, api_page_size INTEGER, probed_short_page INTEGER, probed_at INTEGER,
    PRIMARY KEY (org, app, sync)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    org TEXT NOT NULL, app TEXT NOT NULL, entry TEXT NOT NULL,
    source TEXT NOT NULL, record_type TEXT NOT NULL, record_id TEXT,
    reason TEXT NOT NULL, excerpt TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (org, app, entry)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_claims (
    org TEXT NOT NULL, app TEXT NOT NULL, job_id TEXT NOT NULL,
    generation INTEGER NOT NULL, done INTEGER NOT NULL, claimed_until INTEGER NOT NULL,
    PRIMARY KEY (org, app, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slot_line (
    org TEXT NOT NULL, app TEXT NOT NULL, entry TEXT NOT NULL,
    due INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (org, app, entry)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS action_keys (
    org TEXT NOT NULL, app TEXT NOT NULL, key TEXT NOT NULL,
    started_at INTEGER NOT NULL, done_at INTEGER, claimed_until INTEGER,
    PRIMARY KEY (org, app, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_row (
    org TEXT NOT NULL, app TEXT NOT NULL, datasource TEXT NOT NULL, id TEXT NOT NULL,
    change TEXT NOT NULL, stamp TEXT NOT NULL, written_at INTEGER NOT NULL, source_at INTEGER,
    part TEXT,
    PRIMARY KEY (org, app, datasource, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_version (
    org TEXT NOT NULL, app TEXT NOT NULL, datasource TEXT NOT NULL,
    version INTEGER NOT NULL, index_field TEXT,
    PRIMARY KEY (org, app, datasource)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_part_version (
    org TEXT NOT NULL, app TEXT NOT NULL, datasource TEXT NOT NULL, part TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (org, app, datasource, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_state (
    org TEXT NOT NULL, app TEXT NOT NULL, datasource TEXT NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 0, inflight TEXT,
    flush_due INTEGER, last_flush INTEGER,
    pushes INTEGER NOT NULL DEFAULT 0, rows_pushed INTEGER NOT NULL DEFAULT 0,
    probe TEXT,
    PRIMARY KEY (org, app, datasource)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_refused (
    org TEXT NOT NULL, app TEXT NOT NULL, datasource TEXT NOT NULL, id TEXT NOT NULL,
    change TEXT NOT NULL, reason TEXT NOT NULL, refused_at INTEGER NOT NULL,
    PRIMARY KEY (org, app, datasource, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter (
    queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, reason TEXT NOT NULL, failed_at INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY, value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// A shared handle to one SQLite database file (or an in-memory database).
#[derive(Clone, Debug)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    round_trips: Arc<AtomicU64>,
    /// An in-memory database never waits for a disk: its calls run on the
    /// caller's thread rather than a blocking thread (two thread hand-offs
    /// per call were most of a simulated run's time).
    inline: bool,
}

fn open_error(e: impl std::fmt::Display) -> Error {
    Error::store("open", e, Disposition::Permanent)
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let named = |e: &dyn std::fmt::Display| {
            Error::Config(format!("cannot open database {}: {e}", path.display()))
        };
        let conn = Connection::open(path).map_err(|e| named(&e))?;
        // Setting it up writes (WAL, the schema): a file or folder without
        // write permission fails here, and the error names the path.
        Self::init(conn, false).map_err(|e| named(&e))
    }

    /// Opens the database at `path` only to read it: a database on a
    /// read-only disk, or one the user may read but not write, can still be
    /// inspected. Nothing is created or migrated.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let named = |e: &dyn std::fmt::Display| {
            Error::Config(format!("cannot read database {}: {e}", path.display()))
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| named(&e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| named(&e))?;
        // A query proves it is readable (a WAL database in a folder it may
        // not write fails here, not in the middle of a command).
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| named(&e))?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            round_trips: Arc::default(),
            inline: false,
        })
    }

    /// A private in-memory database (tests, `plan`).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory().map_err(open_error)?, true)
    }

    fn init(conn: Connection, inline: bool) -> Result<Self> {
        // Another process may hold the write lock for a moment; waiting for a
        // lock is not waiting out an API limit.
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        migrate(&conn).map_err(open_error)?;
        // After `migrate`: an older database gets the column first.
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS outbox_row_part ON outbox_row (org, app, datasource, part, id)",
        )
        .map_err(open_error)?;
        // Every statement the adapters run stays prepared (see `Cached`).
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            round_trips: Arc::default(),
            inline,
        })
    }

    /// Store round trips (one per adapter call, i.e. per transaction) so
    /// far: what the benchmarks count.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The apps this database holds data of (records, usage, sync state,
    /// quota windows, quarantine), each with its organizations: what the
    /// inspect commands read when no config names the app.
    pub async fn apps(
        &self,
    ) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
        self.call("apps", |conn| {
            let mut stmt = conn.prepare(
                "SELECT app, org FROM records UNION SELECT app, org FROM usage
                 UNION SELECT app, org FROM sync_state UNION SELECT app, org FROM quota_window
                 UNION SELECT app, org FROM quarantine",
            )?;
            let mut apps =
                std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
            for row in
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            {
                let (app, org) = row?;
                apps.entry(app).or_default().insert(org);
            }
            Ok(apps)
        })
        .await
    }

    /// A note the database keeps about itself (which clock it ran on, the
    /// limits it ran under): what the commands read to refuse mixing a
    /// simulation with real time and to chart against the right budget.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.call("meta", move |conn| {
            use rusqlite::OptionalExtension;
            let exists = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")?
                .exists([])?;
            if !exists {
                // A database opened read-only from before the table.
                return Ok(None);
            }
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Sets (or replaces) one [`Db::meta`] note.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call("set meta", move |conn| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
        })
        .await
    }

    /// Runs `f` on the connection off the async executor.
    pub(crate) async fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let conn = self.conn.clone();
        if self.inline {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            return f(&mut guard).map_err(|e| classify(operation, e));
        }
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard).map_err(|e| classify(operation, e))
        })
        .await
        .map_err(|e| Error::store(operation, e, Disposition::Retryable))?
    }
}

/// Brings a database written by an earlier version up to [`SCHEMA`]: columns
/// added since are added to existing tables. (Ledgers moved to new,
/// org-scoped tables; the old unscoped ones are left unread.)
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in [
        ("records", "lookup_claimed_by", "TEXT"),
        ("quota_lease", "cost", "INTEGER NOT NULL DEFAULT 1"),
        ("quota_lease", "valid_until", "INTEGER NOT NULL DEFAULT 0"),
        ("sync_state", "last_failed", "INTEGER"),
        ("sync_state", "last_failure", "TEXT"),
        ("sync_state", "api_page_size", "INTEGER"),
        ("sync_state", "probed_short_page", "INTEGER"),
        ("sync_state", "probed_at", "INTEGER"),
        ("action_keys", "claimed_until", "INTEGER"),
        ("outbox_row", "source_at", "INTEGER"),
        ("outbox_state", "probe", "TEXT"),
        ("outbox_row", "part", "TEXT"),
        ("outbox_version", "index_field", "TEXT"),
        ("usage_hour", "waited", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let present = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
            ))?
            .exists([])?;
        if !present {
            conn.execute(
                &format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"),
                [],
            )?;
        }
    }
    Ok(())
}

/// `execute` and `query_row` through the connection's statement cache: the
/// adapters run a few dozen fixed statements over and over, and parsing
/// each anew took a tenth of a local run.
pub(crate) trait Cached {
    /// `execute`, with the statement prepared once.
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// `query_row`, with the statement prepared once.
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// A busy or locked database may free up; anything else will not.
fn classify(operation: &'static str, e: rusqlite::Error) -> Error {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    Error::store(operation, e, Disposition::when_retryable(retryable))
}

#[cfg(test)]
mod tests {
    use super::Db;

    #[tokio::test]
    async fn meta_notes_are_kept_and_replaced() {
        let db = Db::in_memory().unwrap();
        assert_eq!(db.meta("clock").await.unwrap(), None);
        db.set_meta("clock", "simulated").await.unwrap();
        db.set_meta("clock", "real").await.unwrap();
        assert_eq!(db.meta("clock").await.unwrap().as_deref(), Some("real"));
    }

    #[tokio::test]
    async fn a_database_opens_read_only_for_inspection_and_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("metered-ro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ro.sqlite");
        let db = Db::open(&path).unwrap();
        db.set_meta("clock", "real").await.unwrap();
        drop(db);
        let ro = Db::open_read_only(&path).unwrap();
        assert_eq!(ro.meta("clock").await.unwrap().as_deref(), Some("real"));
        assert!(ro.apps().await.unwrap().is_empty());
        let refused = ro.set_meta("clock", "simulated").await.unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        // A path that cannot be a database (its folder is a file): the
        // error says which.
        let bad = path.join("x.sqlite");
        let e = Db::open(&bad).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let e = Db::open_read_only(&bad).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
