//! The `aws-sm` store: a credential's values are the versions of one AWS Secrets Manager
//! secret, and keyloop's version id is the secret version id (`ClientRequestToken`), so a
//! retried step finds what an earlier attempt stored instead of adding a second version.
//!
//! The rotation protocol maps onto Secrets Manager's own: `create_pending` is `PutSecretValue`
//! with the label `AWSPENDING`; `finish` ([`Store::promote`]) moves `AWSCURRENT` to the new
//! version, puts `AWSPREVIOUS` on the version keyloop demoted (and nowhere else) and removes
//! `AWSPENDING`. Labels are moved with `UpdateSecretVersionStage`, never with `RotateSecret`,
//! which would need a Lambda. A pending version left by an interrupted rotation loses its label
//! when the next rotation stores its own (`PutSecretValue` moves `AWSPENDING`) or when keyloop
//! retires it, so it never blocks the next rotation.
//!
//! Secrets Manager cannot delete one version: destroying a version removes its labels, which
//! makes it deprecated (Secrets Manager deletes deprecated versions on its own). `AWSCURRENT`
//! cannot be removed, only moved: a revoked current version keeps it until the rotation that
//! replaces it moves it. What makes a revoked value dead is its target.
//!
//! The client is built at first use from the standard AWS environment and credential chain
//! (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_PROFILE`, web identity, ECS,
//! IMDS), with TLS by rustls on ring.

use crate::race::{self, Attempt};
use crate::{BackendError, Store, redact};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, Region, SharedHttpClient};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backon::Retryable;
use futures::future::BoxFuture;
use keyloop_core::Retry;
use keyloop_core::{Credential, Secret};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::{debug, info};
use uuid::Uuid;

/// The label of the version readers should use.
pub const AWSCURRENT: &str = "AWSCURRENT";
/// The label of the version being rotated in.
pub const AWSPENDING: &str = "AWSPENDING";
/// The label of the version before the current one.
pub const AWSPREVIOUS: &str = "AWSPREVIOUS";

/// Explicit keys instead of the standard credential chain.
#[derive(Clone)]
pub struct StaticCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
}

/// How to reach Secrets Manager. Every `None` means "as the standard AWS chain says".
#[derive(Clone)]
pub struct AwsSmConfig {
    /// The region; `None`: `AWS_REGION`, the profile, IMDS.
    pub region: Option<String>,
    /// The endpoint; `None`: `AWS_ENDPOINT_URL(_SECRETS_MANAGER)`, else AWS's.
    pub endpoint_url: Option<String>,
    /// Keys; `None`: the standard credential chain.
    pub credentials: Option<StaticCredentials>,
    /// Limit for one attempt of one call (the SDK retries throttling and transient failures).
    pub attempt_timeout: Duration,
}

impl Default for AwsSmConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            credentials: None,
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for AwsSmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSmConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| &c.access_key_id),
            )
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

/// The HTTPS client keyloop gives the AWS SDK: hyper with rustls on ring (the SDK's default
/// would build aws-lc). Also speaks plain HTTP, for emulators on loopback.
pub fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A Secrets Manager client for `config`, after the standard chain filled in what `config`
/// leaves open. Fails when no region is known.
pub async fn sdk_client(config: &AwsSmConfig) -> Result<Client, BackendError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(config.attempt_timeout)
                .build(),
        );
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(c) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_owned(),
            None,
            None,
            "keyloop-static",
        ));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(BackendError::permanent(
            "aws-sm store: no AWS region is configured; set AWS_REGION (or a region in the AWS profile)",
        ));
    }
    Ok(Client::new(&sdk))
}

/// The `aws-sm` store.
pub struct AwsSecretsManager {
    config: AwsSmConfig,
    client: OnceCell<Client>,
}

impl fmt::Debug for AwsSecretsManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSecretsManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Labels by secret version id, as `DescribeSecret` reports them.
type Stages = HashMap<String, Vec<String>>;

fn holder<'s>(stages: &'s Stages, label: &str) -> Option<&'s str> {
    stages
        .iter()
        .find(|(_, labels)| labels.iter().any(|l| l == label))
        .map(|(id, _)| id.as_str())
}

impl AwsSecretsManager {
    /// A store that builds its client at first use.
    pub fn new(config: AwsSmConfig) -> Self {
        Self {
            config,
            client: OnceCell::new(),
        }
    }

    /// A store over an existing client.
    pub fn with_client(client: Client) -> Self {
        Self {
            config: AwsSmConfig::default(),
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> Result<&Client, BackendError> {
        self.client
            .get_or_try_init(|| sdk_client(&self.config))
            .await
    }

    fn secret_id(cred: &Credential) -> Result<&str, BackendError> {
        cred.settings.secret_id.as_deref().ok_or_else(|| {
            BackendError::permanent(format!(
                "aws-sm store: credential {} names no secret (register it with --secret-id NAME)",
                cred.id
            ))
        })
    }

    /// An SDK failure as a backend error: throttling, server errors and anything that did
    /// not get an answer are transient; the rest (access denied, invalid request) permanent.
    fn error<E, R>(
        cred: &Credential,
        what: &str,
        e: &SdkError<E, R>,
        secrets: &[&str],
    ) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        let (kind, hint) = match e {
            SdkError::ServiceError(se) => match se.err().code() {
                Some(
                    "ThrottlingException"
                    | "InternalServiceError"
                    | "InternalFailure"
                    | "ServiceUnavailable"
                    | "RequestTimeout",
                ) => (Retry::Transient, ""),
                Some(
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "ExpiredTokenException"
                    | "InvalidSignatureException",
                ) => (
                    Retry::Permanent,
                    "; check the AWS credentials (standard chain: AWS_ACCESS_KEY_ID / AWS_PROFILE / role) and that they allow secretsmanager:GetSecretValue, PutSecretValue, CreateSecret, DescribeSecret and UpdateSecretVersionStage",
                ),
                Some("InvalidRequestException") => (
                    Retry::Permanent,
                    "; if the secret is scheduled for deletion, restore it (`aws secretsmanager restore-secret`)",
                ),
                _ => (Retry::Permanent, ""),
            },
            SdkError::ConstructionFailure(_) => (Retry::Permanent, ""),
            _ => (
                Retry::Transient,
                "; is Secrets Manager reachable (AWS_ENDPOINT_URL, network)?",
            ),
        };
        let secret = cred.settings.secret_id.as_deref().unwrap_or("?");
        BackendError {
            kind,
            untouched: false,
            message: redact(
                format!(
                    "aws-sm store: credential {}: {what} (secret {secret}): {}{hint}",
                    cred.id,
                    DisplayErrorContext(e)
                ),
                secrets,
            ),
        }
    }

    /// The secret's labels, or `None` when the secret does not exist.
    async fn stages(&self, cred: &Credential) -> Result<Option<Stages>, BackendError> {
        let client = self.client().await?;
        let secret = Self::secret_id(cred)?;
        match client.describe_secret().secret_id(secret).send().await {
            Ok(out) => Ok(Some(
                out.version_ids_to_stages().cloned().unwrap_or_default(),
            )),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Self::error(cred, "describe the secret", &e, &[])),
        }
    }

    /// `UpdateSecretVersionStage`: moves `label` to `to` (from `from`), or removes it from
    /// `from` when `to` is `None`.
    async fn move_label(
        &self,
        cred: &Credential,
        label: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), BackendError> {
        let client = self.client().await?;
        client
            .update_secret_version_stage()
            .secret_id(Self::secret_id(cred)?)
            .version_stage(label)
            .set_remove_from_version_id(from.map(str::to_owned))
            .set_move_to_version_id(to.map(str::to_owned))
            .send()
            .await
            .map_err(|e| {
                Self::error(
                    cred,
                    &format!(
                        "move label {label} from {} to {}",
                        from.unwrap_or("-"),
                        to.unwrap_or("-")
                    ),
                    &e,
                    &[],
                )
            })?;
        debug!(credential = %cred.id, label, from, to, "moved label");
        Ok(())
    }

    /// The value of a version and its labels, or `None` when the secret or version is missing.
    async fn version_value(
        &self,
        cred: &Credential,
        version: Uuid,
    ) -> Result<Option<(Secret, Vec<String>)>, BackendError> {
        let client = self.client().await?;
        match client
            .get_secret_value()
            .secret_id(Self::secret_id(cred)?)
            .version_id(version.to_string())
            .send()
            .await
        {
            Ok(mut out) => {
                let labels = out.version_stages().to_vec();
                match out.secret_string.take() {
                    Some(text) => Ok(Some((Secret::new(text), labels))),
                    None => Err(BackendError::permanent(format!(
                        "aws-sm store: credential {}: version {version} of secret {} has no string value (a binary secret is not a keyloop value)",
                        cred.id,
                        Self::secret_id(cred)?
                    ))),
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Self::error(cred, "read a version", &e, &[])),
        }
    }

    /// One try of `put_new`: `Some` with the value an earlier attempt stored for this version,
    /// or `None` once `value` is stored (creating the secret when it does not exist).
    async fn put_new_once(
        &self,
        cred: &Credential,
        secret: &str,
        version: Uuid,
        value: &Secret,
    ) -> Result<Option<Secret>, Attempt<BackendError>> {
        if let Some((stored, _)) = self.version_value(cred, version).await? {
            return Ok(Some(stored));
        }
        let token = version.to_string();
        let client = self.client().await?;
        let put = client
            .put_secret_value()
            .secret_id(secret)
            .client_request_token(&token)
            .secret_string(value.expose())
            .version_stages(AWSPENDING)
            .send()
            .await;
        match put {
            Ok(_) => {
                info!(credential = %cred.id, %version, secret, "stored pending version");
                Ok(None)
            }
            // Another attempt raced us to this version id: read what it stored.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                Err(Attempt::Raced)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                let created = client
                    .create_secret()
                    .name(secret)
                    .client_request_token(&token)
                    .secret_string(value.expose())
                    .description(format!("managed by keyloop: credential {}", cred.id))
                    .send()
                    .await;
                match created {
                    Ok(_) => {
                        info!(credential = %cred.id, %version, secret, "created the secret");
                        Ok(None)
                    }
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_exists_exception()) =>
                    {
                        Err(Attempt::Raced)
                    }
                    Err(e) => {
                        Err(Self::error(cred, "create the secret", &e, &[value.expose()]).into())
                    }
                }
            }
            Err(e) => {
                Err(Self::error(cred, "store the pending version", &e, &[value.expose()]).into())
            }
        }
    }
}

impl Store for AwsSecretsManager {
    /// `PutSecretValue` with `ClientRequestToken` = the version id and the label `AWSPENDING`
    /// (which Secrets Manager moves off any version an interrupted rotation left it on). A
    /// secret that does not exist is created, with this version as `AWSCURRENT`.
    fn put_new<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>> {
        Box::pin(async move {
            let secret = Self::secret_id(cred)?;
            let outcome = (|| self.put_new_once(cred, secret, version, &value))
                .retry(race::backoff())
                .when(Attempt::is_raced)
                .await;
            let earlier = race::settle(outcome, || {
                BackendError::transient(format!(
                    "aws-sm store: credential {}: version {version} of secret {secret} keeps changing under concurrent writes; retry",
                    cred.id
                ))
            })?;
            // An earlier attempt stored this version: that value wins.
            Ok(earlier.unwrap_or(value))
        })
    }

    /// The value of a version that still has a label; a version without labels has been
    /// destroyed (deprecated) and reads as `None`.
    fn get<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>> {
        Box::pin(async move {
            Ok(self
                .version_value(cred, version)
                .await?
                .and_then(|(value, labels)| (!labels.is_empty()).then_some(value)))
        })
    }

    fn promote<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        previous: Option<Uuid>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let id = version.to_string();
            let secret = Self::secret_id(cred)?;
            let Some(stages) = self.stages(cred).await? else {
                return Err(BackendError::permanent(format!(
                    "aws-sm store: credential {}: secret {secret} no longer exists (deleted outside keyloop?); restore it or register the credential again",
                    cred.id
                )));
            };
            if !stages.contains_key(&id) {
                return Err(BackendError::permanent(format!(
                    "aws-sm store: credential {}: secret {secret} has no version {id} to promote",
                    cred.id
                )));
            }
            let current = holder(&stages, AWSCURRENT).map(str::to_owned);
            let stages = if current.as_deref() != Some(id.as_str()) {
                // Secrets Manager moves AWSPREVIOUS to the version AWSCURRENT leaves.
                self.move_label(cred, AWSCURRENT, current.as_deref(), Some(&id))
                    .await?;
                self.stages(cred).await?.unwrap_or_default()
            } else {
                stages
            };
            let want_previous = previous
                .map(|p| p.to_string())
                .filter(|p| *p != id && stages.contains_key(p));
            let has_previous = holder(&stages, AWSPREVIOUS).map(str::to_owned);
            if has_previous != want_previous {
                self.move_label(
                    cred,
                    AWSPREVIOUS,
                    has_previous.as_deref(),
                    want_previous.as_deref(),
                )
                .await?;
            }
            if let Some(pending) = holder(&stages, AWSPENDING) {
                self.move_label(cred, AWSPENDING, Some(pending), None)
                    .await?;
            }
            info!(credential = %cred.id, %version, secret, "version is AWSCURRENT");
            Ok(())
        })
    }

    /// Removes every label from the version except `AWSCURRENT`, which Secrets Manager only
    /// lets move: the next promotion takes it away.
    fn destroy<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let id = version.to_string();
            let Some(stages) = self.stages(cred).await? else {
                return Ok(());
            };
            let Some(labels) = stages.get(&id) else {
                return Ok(());
            };
            for label in labels.iter().filter(|l| *l != AWSCURRENT) {
                self.move_label(cred, label, Some(&id), None).await?;
            }
            if labels.iter().any(|l| l == AWSCURRENT) {
                info!(credential = %cred.id, %version, "revoked version keeps AWSCURRENT until the next rotation moves it");
            }
            Ok(())
        })
    }
}
