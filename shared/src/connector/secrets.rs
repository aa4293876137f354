//! Credentials: resolved once at cold start from an environment variable,
//! AWS Secrets Manager or SSM Parameter Store, and kept in a [`Secret`] that
//! never prints its value.

use crate::config::secret::SecretRef;
use crate::core::error::{Error, Result};
use std::fmt;

/// A credential. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential so it never prints.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that puts it in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Removes the secret from text that may have echoed it (an API error
    /// body, a URL), before that text reaches an error or a log.
    pub(crate) fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// AWS clients for the secret stores; built once, only when a config names one.
#[derive(Debug, Clone)]
pub struct SecretStores {
    /// Secrets Manager, for `secrets_manager = "…"` references.
    pub secrets_manager: aws_sdk_secretsmanager::Client,
    /// SSM Parameter Store, for `ssm = "…"` references.
    pub ssm: aws_sdk_ssm::Client,
}

impl SecretStores {
    /// Clients for both stores from one SDK config.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            secrets_manager: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }

    /// Clients for both stores, each at its own endpoint when one is given
    /// (a local stand-in for the deployed shape).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) fn with_endpoints(
        config: &aws_config::SdkConfig,
        secrets_manager: Option<String>,
        ssm: Option<String>,
    ) -> Self {
        Self {
            secrets_manager: aws_sdk_secretsmanager::Client::from_conf({
                let mut b = aws_sdk_secretsmanager::config::Builder::from(config);
                // None must not clear an endpoint the SDK config already has.
                if let Some(url) = secrets_manager {
                    b.set_endpoint_url(Some(url));
                }
                b.build()
            }),
            ssm: aws_sdk_ssm::Client::from_conf({
                let mut b = aws_sdk_ssm::config::Builder::from(config);
                // None must not clear an endpoint the SDK config already has.
                if let Some(url) = ssm {
                    b.set_endpoint_url(Some(url));
                }
                b.build()
            }),
        }
    }
}

/// Reads the credential a config points at. Errors name where it looked,
/// never what it found.
pub async fn resolve(reference: &SecretRef, stores: Option<&SecretStores>) -> Result<Secret> {
    resolve_for("app.auth.secret", reference, stores).await
}

/// Reads the credential at `reference`; errors name `field`, the config
/// field (or variable) that pointed there.
pub(crate) async fn resolve_for(
    field: &str,
    reference: &SecretRef,
    stores: Option<&SecretStores>,
) -> Result<Secret> {
    match reference {
        SecretRef::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(Error::Config(format!(
                "{field}: environment variable {var} is not set or empty"
            ))),
        },
        SecretRef::SecretsManager(name) => {
            let stores = stores.ok_or_else(|| {
                Error::Config(format!(
                    "{field}: secrets_manager {name:?} needs AWS credentials and region"
                ))
            })?;
            let out = stores
                .secrets_manager
                .get_secret_value()
                .secret_id(name)
                .send()
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "{field}: cannot read Secrets Manager secret {name:?}: {}",
                        aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                    ))
                })?;
            out.secret_string().map(Secret::new).ok_or_else(|| {
                Error::Config(format!(
                    "{field}: Secrets Manager secret {name:?} has no string value"
                ))
            })
        }
        SecretRef::Ssm(name) => {
            let stores = stores.ok_or_else(|| {
                Error::Config(format!(
                    "{field}: ssm {name:?} needs AWS credentials and region"
                ))
            })?;
            let out = stores
                .ssm
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "{field}: cannot read SSM parameter {name:?}: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(&e)
                    ))
                })?;
            out.parameter()
                .and_then(|p| p.value())
                .map(Secret::new)
                .ok_or_else(|| {
                    Error::Config(format!("{field}: SSM parameter {name:?} has no value"))
                })
        }
    }
}
