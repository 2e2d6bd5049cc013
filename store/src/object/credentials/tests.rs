use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

struct FakeEnv {
    vars: HashMap<&'static str, String>,
    home: Option<PathBuf>,
    etc: PathBuf,
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home(&self) -> Option<PathBuf> {
        self.home.clone()
    }
    fn etc(&self) -> PathBuf {
        self.etc.clone()
    }
}

fn env(vars: &[(&'static str, &str)], home: Option<PathBuf>) -> FakeEnv {
    FakeEnv {
        vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        home,
        etc: PathBuf::from("/nonexistent-etc"),
    }
}

fn oss() -> Source {
    Source::parse("oss://bkt/p").unwrap()
}

async fn key_of(p: &AwsCredentialProvider) -> String {
    p.get_credential().await.unwrap().key_id.clone()
}

#[tokio::test]
async fn flags_win_over_environment_and_oss_over_alibaba() {
    let http = reqwest::Client::new();
    let e = env(
        &[
            ("OSS_ACCESS_KEY_ID", "oss-id"),
            ("OSS_ACCESS_KEY_SECRET", "s"),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ali-id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
        ],
        None,
    );
    let flags = CredentialFlags {
        access_key_id: Some("flag-id".into()),
        secret_access_key: Some("s".into()),
        session_token: None,
    };
    assert_eq!(
        key_of(&resolve(&oss(), &flags, &e, &http).await.unwrap()).await,
        "flag-id"
    );
    let none = CredentialFlags::default();
    assert_eq!(
        key_of(&resolve(&oss(), &none, &e, &http).await.unwrap()).await,
        "oss-id"
    );
    let e = env(
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ali-id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
        ],
        None,
    );
    assert_eq!(
        key_of(&resolve(&oss(), &none, &e, &http).await.unwrap()).await,
        "ali-id"
    );
}

#[tokio::test]
async fn half_set_credentials_are_an_error() {
    let e = env(&[("OSS_ACCESS_KEY_ID", "x")], None);
    let err = resolve(
        &oss(),
        &CredentialFlags::default(),
        &e,
        &reqwest::Client::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("OSS_ACCESS_KEY_SECRET is not"), "{err}");
}

#[tokio::test]
async fn passwd_file_is_used_and_refused_when_readable_by_others() {
    let home = tempfile::tempdir().unwrap();
    let f = home.path().join(".passwd-ossfs");
    std::fs::write(&f, "other:o-id:o-sk\nbkt:b-id:b-sk\nd-id:d-sk\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = env(&[], Some(home.path().into()));
    let http = reqwest::Client::new();
    let p = resolve(&oss(), &CredentialFlags::default(), &e, &http)
        .await
        .unwrap();
    assert_eq!(key_of(&p).await, "b-id", "the bucket's line wins");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = resolve(&oss(), &CredentialFlags::default(), &e, &http)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

/// A one-purpose HTTP server that plays the ECS metadata service.
async fn fake_metadata(
    expiration: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(AtomicU32::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let has_token = req
                .to_ascii_lowercase()
                .contains("x-aliyun-ecs-metadata-token: tok");
            let body = if req.starts_with("PUT /latest/api/token") {
                "tok".to_string()
            } else if !has_token {
                String::new()
            } else if req.starts_with("GET /latest/meta-data/ram/security-credentials/ ") {
                "my-role".to_string()
            } else if req.starts_with("GET /latest/meta-data/ram/security-credentials/my-role") {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                format!(
                    r#"{{"AccessKeyId":"STS.id{n}","AccessKeySecret":"sk","SecurityToken":"tok{n}","Expiration":"{expiration}","Code":"Success"}}"#
                )
            } else {
                String::new()
            };
            let status = if body.is_empty() {
                "403 Forbidden"
            } else {
                "200 OK"
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://{addr}"), fetches)
}

#[tokio::test]
async fn ecs_ram_role_uses_the_token_flow_and_refreshes_before_expiry() {
    // Expires in 5 minutes: inside the refresh margin, so every get refreshes.
    let soon = (Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let (endpoint, fetches) = fake_metadata(soon).await;
    let e = env(&[(ECS_METADATA_ENDPOINT_ENV, &endpoint)], None);
    let p = resolve(
        &oss(),
        &CredentialFlags::default(),
        &e,
        &reqwest::Client::new(),
    )
    .await
    .unwrap();
    let c = p.get_credential().await.unwrap();
    assert!(c.key_id.starts_with("STS.id"));
    assert!(c.token.is_some());
    assert!(
        fetches.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "refreshed near expiry"
    );

    let later = (Utc::now() + chrono::Duration::hours(6)).to_rfc3339();
    let (endpoint, fetches) = fake_metadata(later).await;
    let e = env(&[(ECS_METADATA_ENDPOINT_ENV, &endpoint)], None);
    let p = resolve(
        &oss(),
        &CredentialFlags::default(),
        &e,
        &reqwest::Client::new(),
    )
    .await
    .unwrap();
    p.get_credential().await.unwrap();
    p.get_credential().await.unwrap();
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached while fresh"
    );
}

#[tokio::test]
async fn missing_credentials_list_every_place_tried() {
    let e = env(&[(ECS_METADATA_ENDPOINT_ENV, "http://127.0.0.1:9")], None);
    let err = resolve(
        &oss(),
        &CredentialFlags::default(),
        &e,
        &reqwest::Client::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    for needle in [
        "--access-key-id",
        "OSS_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "passwd-ossfs",
        "ECS RAM role",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn debug_output_redacts_secrets() {
    let f = CredentialFlags {
        access_key_id: Some("AKID".into()),
        secret_access_key: Some("SUPERSECRET".into()),
        session_token: Some("TOKEN".into()),
    };
    let s = format!("{f:?}");
    assert!(
        !s.contains("SUPERSECRET") && !s.contains("TOKEN") && !s.contains("AKID"),
        "{s}"
    );
}
