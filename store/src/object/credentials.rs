//! Credentials: resolved once per source in a fixed order, and never logged.
//!
//! For `oss://`: flags; `OSS_ACCESS_KEY_ID`/`OSS_ACCESS_KEY_SECRET`/`OSS_SESSION_TOKEN`;
//! `ALIBABA_CLOUD_ACCESS_KEY_ID`/`ALIBABA_CLOUD_ACCESS_KEY_SECRET`/`ALIBABA_CLOUD_SECURITY_TOKEN`;
//! the ossfs password file (`~/.passwd-ossfs`, then `/etc/passwd-ossfs`); the ECS RAM role from
//! the instance metadata service. For `s3://`: flags, then `AWS_ACCESS_KEY_ID`/
//! `AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`.
//!
//! Secrets live only in [`AwsCredential`] values and in [`CredentialFlags`], whose `Debug`
//! redacts them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::{AwsCredential, AwsCredentialProvider};
use object_store::client::{CredentialProvider, StaticCredentialProvider};

use super::source::{Source, SourceKind};

/// Credentials given on the command line.
#[derive(Clone, Default)]
pub struct CredentialFlags {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for CredentialFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFlags")
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The process environment, behind a trait so tests can supply their own.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
    fn home(&self) -> Option<PathBuf>;
    /// System-wide files such as `/etc/passwd-ossfs` are looked up under this root.
    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc")
    }
}

/// The real environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn home(&self) -> Option<PathBuf> {
        home_dir()
    }
}

/// The user's home directory: `$HOME`, else the home of the effective user's passwd entry
/// (mount(8) and systemd start programs without `HOME`).
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids); it is only read
    // after getpwuid_r filled it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `found` are locals, and `buf` is
    // writable for the length passed. On success the strings in `pwd` point into `buf`, which
    // outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: `pw_dir` is a NUL-terminated string inside `buf` (checked non-null above).
    let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
    use std::os::unix::ffi::OsStrExt;
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    (!dir.as_os_str().is_empty()).then_some(dir)
}

/// An environment with no variables, no home directory and no system files: only explicit
/// credentials count (tests, and programs that pass their keys themselves).
#[derive(Debug, Clone, Copy)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn home(&self) -> Option<PathBuf> {
        None
    }
    fn etc(&self) -> PathBuf {
        PathBuf::from("/nonexistent")
    }
}

/// The metadata service of ECS instances. Overridable for tests and unusual networks.
pub const ECS_METADATA_ENDPOINT: &str = "http://100.100.100.200";
/// Environment variable that overrides [`ECS_METADATA_ENDPOINT`].
pub const ECS_METADATA_ENDPOINT_ENV: &str = "PAI_MOUNT_ECS_METADATA_ENDPOINT";
/// Environment variable that names the RAM role, skipping its discovery.
pub const ECS_ROLE_ENV: &str = "ALIBABA_CLOUD_ECS_METADATA";
/// Refresh role credentials this long before they expire. STS tokens from the metadata service
/// live about 6 hours and are rotated an hour before expiry, so 10 minutes is always safe.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(600);
/// The metadata service answers in milliseconds on ECS; off ECS nothing listens there.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no credentials for {url}: tried {}", tried.join("; "))]
    Missing { url: String, tried: Vec<String> },
    #[error("{what} is set but {missing} is not")]
    Incomplete { what: String, missing: String },
    #[error(
        "refusing {path}: it is readable by group or others (mode {mode:o}); run chmod 600 {path}"
    )]
    InsecureFile { path: String, mode: u32 },
    #[error("{path}: {why}")]
    BadFile { path: String, why: String },
    #[error("ECS RAM role credentials: {0}")]
    Ecs(String),
}

fn pair(
    what: &str,
    id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    secret_name: &str,
    id_name: &str,
) -> Result<Option<AwsCredential>, CredentialError> {
    match (id, secret) {
        (Some(key_id), Some(secret_key)) => Ok(Some(AwsCredential {
            key_id,
            secret_key,
            token,
        })),
        (Some(_), None) => Err(CredentialError::Incomplete {
            what: what.into(),
            missing: secret_name.into(),
        }),
        (None, Some(_)) => Err(CredentialError::Incomplete {
            what: what.into(),
            missing: id_name.into(),
        }),
        (None, None) => Ok(None),
    }
}

fn from_env(
    env: &dyn Env,
    id: &str,
    secret: &str,
    token: &str,
) -> Result<Option<AwsCredential>, CredentialError> {
    pair(id, env.var(id), env.var(secret), env.var(token), secret, id)
}

/// Reads an ossfs password file: lines `bucket:AK:SK` or `AK:SK`; a bucket line wins.
pub fn read_passwd_file(
    path: &Path,
    bucket: &str,
) -> Result<Option<AwsCredential>, CredentialError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialError::BadFile {
                path: path.display().to_string(),
                why: e.to_string(),
            })
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::InsecureFile {
            path: path.display().to_string(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| CredentialError::BadFile {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    parse_passwd(&text, bucket).map_err(|why| CredentialError::BadFile {
        path: path.display().to_string(),
        why: why.into(),
    })
}

/// The credential for `bucket` in the text of an ossfs password file: its
/// `bucket:AccessKeyId:AccessKeySecret` line, else the first `AccessKeyId:AccessKeySecret`.
pub fn parse_passwd(text: &str, bucket: &str) -> Result<Option<AwsCredential>, &'static str> {
    let mut fallback = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let cred = |id: &str, sk: &str| AwsCredential {
            key_id: id.to_string(),
            secret_key: sk.to_string(),
            token: None,
        };
        match fields.as_slice() {
            [b, id, sk] if *b == bucket => return Ok(Some(cred(id, sk))),
            [_, _, _] => {}
            [id, sk] if fallback.is_none() => fallback = Some(cred(id, sk)),
            [_, _] => {}
            _ => {
                return Err("expected lines of bucket:AccessKeyId:AccessKeySecret or AccessKeyId:AccessKeySecret")
            }
        }
    }
    Ok(fallback)
}

/// Resolves the credential provider for `source`, trying each place in order.
pub async fn resolve(
    source: &Source,
    flags: &CredentialFlags,
    env: &dyn Env,
    http: &reqwest::Client,
) -> Result<AwsCredentialProvider, CredentialError> {
    let fixed =
        |c: AwsCredential| -> AwsCredentialProvider { Arc::new(StaticCredentialProvider::new(c)) };
    let mut tried = vec!["--access-key-id/--secret-access-key".to_string()];
    if let Some(c) = pair(
        "--access-key-id",
        flags.access_key_id.clone(),
        flags.secret_access_key.clone(),
        flags.session_token.clone(),
        "--secret-access-key",
        "--access-key-id",
    )? {
        return Ok(fixed(c));
    }
    if source.kind == SourceKind::S3 {
        tried.push("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into());
        if let Some(c) = from_env(
            env,
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        )? {
            return Ok(fixed(c));
        }
        return Err(CredentialError::Missing {
            url: source.display_root(),
            tried,
        });
    }
    for (id, secret, token) in [
        (
            "OSS_ACCESS_KEY_ID",
            "OSS_ACCESS_KEY_SECRET",
            "OSS_SESSION_TOKEN",
        ),
        (
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            "ALIBABA_CLOUD_SECURITY_TOKEN",
        ),
    ] {
        tried.push(format!("{id}/{secret}"));
        if let Some(c) = from_env(env, id, secret, token)? {
            return Ok(fixed(c));
        }
    }
    let mut files = Vec::new();
    if let Some(home) = env.home() {
        files.push(home.join(".passwd-ossfs"));
    }
    files.push(env.etc().join("passwd-ossfs"));
    for f in files {
        tried.push(f.display().to_string());
        if let Some(c) = read_passwd_file(&f, &source.bucket)? {
            return Ok(fixed(c));
        }
    }
    let endpoint = env
        .var(ECS_METADATA_ENDPOINT_ENV)
        .unwrap_or_else(|| ECS_METADATA_ENDPOINT.to_string());
    let provider = EcsRoleProvider::new(endpoint.clone(), env.var(ECS_ROLE_ENV), http.clone());
    match provider.fetch().await {
        Ok(cred) => {
            tracing::info!(role = %cred.role, "using ECS RAM role credentials");
            *provider.cache.lock().await = Some(cred);
            Ok(Arc::new(provider))
        }
        Err(why) => {
            tried.push(format!("ECS RAM role at {endpoint} ({why})"));
            Err(CredentialError::Missing {
                url: source.display_root(),
                tried,
            })
        }
    }
}

#[derive(Debug, Clone)]
struct RoleCredential {
    role: String,
    credential: Arc<AwsCredential>,
    expires: DateTime<Utc>,
}

/// Credentials of the instance's RAM role, from the ECS metadata service (token flow), cached
/// and refreshed [`REFRESH_BEFORE_EXPIRY`] before they expire. One refresh runs at a time.
#[derive(Debug)]
pub struct EcsRoleProvider {
    endpoint: String,
    role: Option<String>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<RoleCredential>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleResponse {
    access_key_id: String,
    access_key_secret: String,
    security_token: String,
    expiration: String,
    #[serde(default)]
    code: Option<String>,
}

impl EcsRoleProvider {
    pub fn new(endpoint: String, role: Option<String>, http: reqwest::Client) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            role,
            http,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<RoleCredential, String> {
        let token = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header("X-aliyun-ecs-metadata-token-ttl-seconds", "21600")
            .timeout(METADATA_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("metadata token: {}", short(&e)))?
            .text()
            .await
            .map_err(|e| format!("metadata token: {}", short(&e)))?;
        let get = |path: String| {
            let token = token.clone();
            async move {
                self.http
                    .get(format!("{}{path}", self.endpoint))
                    .header("X-aliyun-ecs-metadata-token", token)
                    .timeout(METADATA_TIMEOUT)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| short(&e))?
                    .text()
                    .await
                    .map_err(|e| short(&e))
            }
        };
        let base = "/latest/meta-data/ram/security-credentials/";
        let role = match &self.role {
            Some(r) => r.clone(),
            None => get(base.to_string())
                .await
                .map_err(|e| format!("no RAM role attached ({e})"))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if role.is_empty() {
            return Err("no RAM role attached to this instance".into());
        }
        let body = get(format!("{base}{role}"))
            .await
            .map_err(|e| format!("role {role}: {e}"))?;
        let (credential, expires) = parse_role_response(&role, &body)?;
        Ok(RoleCredential {
            role,
            credential,
            expires,
        })
    }
}

/// The credential in the metadata service's answer for `role`, and when it expires.
pub fn parse_role_response(
    role: &str,
    body: &str,
) -> Result<(Arc<AwsCredential>, DateTime<Utc>), String> {
    let r: RoleResponse =
        serde_json::from_str(body).map_err(|e| format!("role {role}: bad response: {e}"))?;
    if r.code.as_deref().is_some_and(|c| c != "Success") {
        return Err(format!(
            "role {role}: metadata service answered {:?}",
            r.code
        ));
    }
    let expires = DateTime::parse_from_rfc3339(&r.expiration)
        .map_err(|e| format!("role {role}: bad Expiration: {e}"))?
        .with_timezone(&Utc);
    Ok((
        Arc::new(AwsCredential {
            key_id: r.access_key_id,
            secret_key: r.access_key_secret,
            token: Some(r.security_token),
        }),
        expires,
    ))
}

fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() || e.is_connect() {
        "not reachable".into()
    } else if let Some(status) = e.status() {
        format!("HTTP {status}")
    } else {
        "request failed".into()
    }
}

#[async_trait::async_trait]
impl CredentialProvider for EcsRoleProvider {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cache = self.cache.lock().await;
        let fresh = cache.as_ref().filter(|c| {
            c.expires - Utc::now()
                > chrono::Duration::from_std(REFRESH_BEFORE_EXPIRY).unwrap_or_default()
        });
        if let Some(c) = fresh {
            return Ok(c.credential.clone());
        }
        match self.fetch().await {
            Ok(c) => {
                tracing::info!(role = %c.role, expires = %c.expires, "refreshed ECS RAM role credentials");
                let out = c.credential.clone();
                *cache = Some(c);
                Ok(out)
            }
            // Keep using credentials that have not expired yet if a refresh fails.
            Err(e) => match cache.as_ref().filter(|c| c.expires > Utc::now()) {
                Some(c) => {
                    tracing::warn!(
                        "refreshing ECS RAM role credentials failed, keeping current ones: {e}"
                    );
                    Ok(c.credential.clone())
                }
                None => Err(object_store::Error::Generic {
                    store: "ECS RAM role",
                    source: e.into(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests;
