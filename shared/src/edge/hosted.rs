//! The Hosted GET function's edge: a Function URL (or HTTP API, payload
//! v2) event in, [`HostedService`] answers, an HTTP response out. Reads the
//! table only; needs no queue and no API secret.

use crate::adapters::aws::store::DynamoStore;
use crate::adapters::aws::Table;
use crate::core::clock::SystemClock;
use crate::edge::cold_start::{warm_connections, ColdStart};
use crate::edge::lambda::{
    dynamodb_client, init_logging, lambda_sdk_config, secret_stores, DeployConfig,
};
use crate::handlers::hosted::{resolve_secrets, HostedRequest, HostedResponse, HostedService};
use lambda_http::{service_fn, Body, Request, Response};
use std::sync::Arc;

/// The request as the service reads it.
pub fn from_http(req: &Request) -> HostedRequest {
    HostedRequest::from_http(req)
}

/// The service's answer as an HTTP response.
pub fn to_http(r: HostedResponse) -> Response<Body> {
    r.into_http()
}

/// Builds the service from the function's environment (table, app config,
/// each hosted Data Source's secret); with `METERED_WARM_CONNECTIONS=1`
/// the DynamoDB connection is opened while the secrets are read.
pub(crate) async fn hosted_service(
    cold: &Arc<ColdStart>,
) -> crate::core::error::Result<(HostedService, bool)> {
    let env = |name: &str| std::env::var(name).ok();
    let config = DeployConfig::from_env()?;
    let aws = lambda_sdk_config(env)?;
    let stores = secret_stores(&aws, env);
    let dynamodb = dynamodb_client(&aws, env, cold);
    let load = async {
        let app = config.app_config(&stores).await?;
        let secrets = resolve_secrets(&app, Some(&stores)).await?;
        Ok::<_, crate::core::error::Error>((app, secrets))
    };
    let warm = async {
        if config.warm {
            warm_connections(&dynamodb, &config.table, None).await;
        }
    };
    let (loaded, ()) = futures::future::join(load, warm).await;
    let (app, secrets) = loaded?;
    let store = Arc::new(DynamoStore::new(Table::new(dynamodb, &config.table)));
    let service = HostedService::new(&app, secrets, store, Arc::new(SystemClock))?;
    Ok((service, config.warm))
}

/// The whole life of the Hosted GET function.
pub async fn run_hosted_function() -> Result<(), lambda_http::Error> {
    let cold = ColdStart::begin();
    init_logging();
    let (service, warmed) = hosted_service(&cold).await?;
    cold.initialized(warmed);
    let (service, cold) = (&service, &cold);
    lambda_http::run(service_fn(move |req: Request| async move {
        let response = to_http(service.handle(&from_http(&req)).await);
        if let Some(report) = cold.job_finished() {
            report.publish(
                "hosted-get",
                chrono::Utc::now(),
                &mut std::io::stdout().lock(),
            );
        }
        Ok::<_, std::convert::Infallible>(response)
    }))
    .await
}
