//! `metered serve`: Hosted GET on this machine, from the SQLite store a
//! `metered run` writes (two processes, one database). The same
//! [`HostedService`] the `hosted-get` Lambda runs; axum only carries the
//! request in and the answer out.

use crate::system::{default_db, load_config, BoxError};
use axum::body::Body;
use axum::http::{Request, Response};
use metered::adapters::sqlite::Db;
use metered::adapters::sqlite::SqliteStore;
use metered::config::DataSourceMode;
use metered::config::SecretRef;
use metered::handlers::{resolve_secrets, HostedRequest, HostedService};
use metered::SystemClock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The app config naming the hosted Data Sources
    /// (`[datasources.NAME] mode = "hosted"`, `secret`, `filter`).
    #[arg(long)]
    config: PathBuf,
    /// The SQLite database `metered run` writes.
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
    /// Where to listen (loopback unless you mean it).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
}

/// Builds the service for `config` over the database at `db`.
pub async fn service(
    config: &metered::AppConfig,
    db: &std::path::Path,
) -> Result<HostedService, BoxError> {
    if !config
        .datasources
        .values()
        .any(|d| d.mode == DataSourceMode::Hosted)
    {
        return Err(metered::Error::Config(
            "no hosted Data Source in this config: set mode = \"hosted\" and a secret on a [datasources.NAME]".into(),
        )
        .into());
    }
    if !db.exists() {
        return Err(metered::Error::Config(format!(
            "no database at {}; run `metered run --config … --db {}` first",
            db.display(),
            db.display()
        ))
        .into());
    }
    // Secrets in Secrets Manager or SSM need AWS credentials; env ones do not.
    let needs_aws = config.datasources.values().any(|d| {
        matches!(
            d.secret,
            Some(SecretRef::SecretsManager(_)) | Some(SecretRef::Ssm(_))
        )
    });
    let stores = if needs_aws {
        let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Some(metered::connector::SecretStores::new(&aws))
    } else {
        None
    };
    let secrets = resolve_secrets(config, stores.as_ref()).await?;
    let store = Arc::new(SqliteStore::new(Db::open(db)?));
    Ok(HostedService::new(
        config,
        secrets,
        store,
        Arc::new(SystemClock),
    )?)
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let config = load_config(Some(&args.config))?;
    let service = Arc::new(service(&config, &args.db).await?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let names: Vec<&str> = service.datasources().collect();
    eprintln!(
        "metered serve: Hosted GET of {} ({}) from {} at http://{}/datasources/{{name}}/rows; Ctrl-C to stop",
        config.app.name,
        names.join(", "),
        args.db.display(),
        listener.local_addr()?
    );
    axum::serve(listener, router(service)).await?;
    Ok(())
}

/// Every path goes to the service, which names the one route it has.
pub fn router(service: Arc<HostedService>) -> axum::Router {
    axum::Router::new().fallback(move |req: Request<Body>| {
        let service = service.clone();
        async move { answer(&service, req).await }
    })
}

async fn answer(service: &HostedService, req: Request<Body>) -> Response<Body> {
    let request = HostedRequest::from_http(&req);
    // Only what the service reads crosses the await (a body is not Sync).
    drop(req);
    service.handle(&request).await.into_http()
}
