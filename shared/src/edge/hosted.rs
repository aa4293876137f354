//! The Hosted GET function's edge: a Function URL (or HTTP API, payload
//! v2) event in, [`HostedService`] answers, an HTTP response out. Reads the
//! table only; needs no queue and no API secret.

use crate::adapters::aws::store::DynamoStore;
use crate::adapters::aws::Table;
use crate::core::clock::SystemClock;
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
/// each hosted Data Source's secret).
pub async fn hosted_service() -> crate::core::error::Result<HostedService> {
    let env = |name: &str| std::env::var(name).ok();
    let config = DeployConfig::from_env()?;
    let aws = lambda_sdk_config(env)?;
    let stores = secret_stores(&aws, env);
    let app = config.app_config(&stores).await?;
    let secrets = resolve_secrets(&app, Some(&stores)).await?;
    let store = Arc::new(DynamoStore::new(Table::new(
        dynamodb_client(&aws, env),
        &config.table,
    )));
    HostedService::new(&app, secrets, store, Arc::new(SystemClock))
}

/// The whole life of the Hosted GET function.
pub async fn run_hosted_function() -> Result<(), lambda_http::Error> {
    init_logging();
    let service = hosted_service().await?;
    let service = &service;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, std::convert::Infallible>(to_http(service.handle(&from_http(&req)).await))
    }))
    .await
}
