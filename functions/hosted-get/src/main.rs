//! Hosted GET: serves a hosted Data Source's rows to the platform's app,
//! per user (JWT), from the table. Function URL-triggered; no API call.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    metered::edge::hosted::run_hosted_function().await
}
