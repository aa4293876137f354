//! Where a credential comes from. Config names the place (an environment
//! variable, a Secrets Manager secret, an SSM parameter); the value is read
//! by `connector::secrets` when a call needs it and never enters config,
//! logs or errors. Its own file so that the sections that name a secret
//! (connections, Data Sources) need not import the whole app config.

use serde::{Deserialize, Serialize};

/// Where the credential comes from; the value itself is never in config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable's name.
    Env(String),
    /// A Secrets Manager secret's name or ARN.
    SecretsManager(String),
    /// An SSM parameter's name.
    Ssm(String),
}
