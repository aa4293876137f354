//! A DynamoDB client whose HTTP layer loses chosen responses: the request
//! reaches DynamoDB Local and is applied, then the client sees a connection
//! error instead of the answer. The SDK's retry sends the same request
//! again, so the write is applied twice — what a real network does now and
//! then, and what every conditional write must survive.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Which responses to lose, by operation (`UpdateItem`, …) and ordinal.
#[derive(Debug, Default)]
pub struct Losses {
    plan: Mutex<BTreeSet<(String, u32)>>,
    seen: Mutex<std::collections::BTreeMap<String, u32>>,
    /// Responses lost so far.
    pub lost: AtomicU32,
}

impl Losses {
    /// Loses the response of the `nth` (1-based) call of `operation`.
    pub fn lose(&self, operation: &str, nth: u32) {
        self.plan.lock().unwrap().insert((operation.into(), nth));
    }

    fn should_lose(&self, request: &HttpRequest) -> bool {
        let Some(target) = request.headers().get("x-amz-target") else {
            return false;
        };
        let op = target.rsplit('.').next().unwrap_or_default().to_string();
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(op.clone()).or_default();
            *n += 1;
            *n
        };
        self.plan.lock().unwrap().contains(&(op, n))
    }
}

#[derive(Debug, Clone)]
struct Losing {
    inner: SharedHttpClient,
    losses: Arc<Losses>,
}

#[derive(Debug)]
struct LosingConnector {
    inner: SharedHttpConnector,
    losses: Arc<Losses>,
}

impl HttpClient for Losing {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(LosingConnector {
            inner: self.inner.http_connector(settings, components),
            losses: self.losses.clone(),
        })
    }
}

impl HttpConnector for LosingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let lose = self.losses.should_lose(&request);
        let call = self.inner.call(request);
        let losses = self.losses.clone();
        HttpConnectorFuture::new(async move {
            let response = call.await?;
            if lose {
                losses.lost.fetch_add(1, Ordering::SeqCst);
                return Err(ConnectorError::io(
                    "injected: the connection dropped before the response arrived".into(),
                ));
            }
            Ok(response)
        })
    }
}

/// A DynamoDB client for DynamoDB Local whose responses are lost as
/// `losses` plans.
pub fn dynamodb_client(losses: Arc<Losses>) -> aws_sdk_dynamodb::Client {
    let inner = aws_smithy_http_client::Builder::new().build_http();
    let config = crate::sdk_config(crate::endpoint(
        "METERED_TEST_DYNAMODB_URL",
        "DynamoDB Local",
    ));
    let config = config
        .into_builder()
        .http_client(SharedHttpClient::new(Losing { inner, losses }))
        .build();
    aws_sdk_dynamodb::Client::new(&config)
}
