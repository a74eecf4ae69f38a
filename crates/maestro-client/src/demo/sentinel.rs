//! The Sentinel: a security agent that really signs and verifies with
//! Ed25519 and vouches for users on its allow-list.
//!
//! | capability | inputs | outputs |
//! |---|---|---|
//! | `sign` | `{data}` | `{signature, publicKey}` (base64) |
//! | `verify` | `{data, signature, publicKey}` | `{valid}` |
//! | `verify-identity` | `{userId}` | `{verified, userId, signature}` (the userId signed; `null` when not verified) |

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, CapabilitySpec, TaskContext, codes};

/// `sign` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignIn {
    /// The text to sign (its UTF-8 bytes).
    pub data: String,
}

/// `sign` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignOut {
    /// The Ed25519 signature, base64.
    pub signature: String,
    /// The verifying key, base64.
    pub public_key: String,
}

/// `verify` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyIn {
    pub data: String,
    /// base64 signature.
    pub signature: String,
    /// base64 verifying key.
    pub public_key: String,
}

/// `verify` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOut {
    pub valid: bool,
}

/// `verify-identity` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityIn {
    pub user_id: String,
}

/// `verify-identity` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityOut {
    pub verified: bool,
    pub user_id: String,
    /// The userId signed by the Sentinel (base64), when verified.
    pub signature: Option<String>,
}

/// The Sentinel's key and allow-list.
pub struct Sentinel {
    key: SigningKey,
    users: BTreeSet<String>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("public_key", &self.public_key())
            .field("users", &self.users)
            .finish()
    }
}

impl Sentinel {
    pub fn new<U: Into<String>>(key: SigningKey, users: impl IntoIterator<Item = U>) -> Self {
        Sentinel {
            key,
            users: users.into_iter().map(Into::into).collect(),
        }
    }

    /// A Sentinel with a fresh key.
    pub fn generate<U: Into<String>>(users: impl IntoIterator<Item = U>) -> Self {
        Sentinel::new(generate_key(), users)
    }

    /// The base64 verifying key (the registration's `publicKey`).
    pub fn public_key(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// The users it vouches for.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(String::as_str)
    }

    /// The base64 Ed25519 signature of `data`.
    pub fn sign(&self, data: &[u8]) -> String {
        B64.encode(self.key.sign(data).to_bytes())
    }

    /// Checks `user_id` against the allow-list; signs it when known.
    pub fn verify_identity(&self, user_id: &str) -> IdentityOut {
        let verified = self.users.contains(user_id);
        IdentityOut {
            verified,
            user_id: user_id.to_owned(),
            signature: verified.then(|| self.sign(user_id.as_bytes())),
        }
    }

    /// The agent `id` (type `sentinel`) serving this Sentinel.
    pub fn agent(self: Arc<Self>, id: &str) -> Agent {
        let (s1, s2) = (self.clone(), self.clone());
        Agent::builder(id, "sentinel")
            .name("Sentinel Agent")
            .description("Security guardian: Ed25519 signatures and identity checks")
            .public_key(self.public_key())
            .metadata("algorithm", "Ed25519")
            .capability_with(
                CapabilitySpec::new("sign")
                    .name("Sign Data")
                    .description("Ed25519 signature of data")
                    .tag("crypto"),
                move |input: SignIn, _ctx: TaskContext| {
                    let s = s1.clone();
                    async move {
                        Ok(SignOut {
                            signature: s.sign(input.data.as_bytes()),
                            public_key: s.public_key(),
                        })
                    }
                },
            )
            .capability_with(
                CapabilitySpec::new("verify")
                    .name("Verify Signature")
                    .description("Checks an Ed25519 signature")
                    .tag("crypto"),
                |input: VerifyIn, _ctx: TaskContext| async move {
                    Ok(VerifyOut {
                        valid: verify(input.data.as_bytes(), &input.signature, &input.public_key),
                    })
                },
            )
            .capability_with(
                CapabilitySpec::new("verify-identity")
                    .name("Verify Identity")
                    .description("Vouches for a known user by signing the userId")
                    .tag("identity"),
                move |input: IdentityIn, _ctx: TaskContext| {
                    let s = s2.clone();
                    async move {
                        if input.user_id.trim().is_empty() {
                            return Err(AgentError::fatal(codes::INVALID_INPUT, "userId is empty"));
                        }
                        Ok(s.verify_identity(&input.user_id))
                    }
                },
            )
            .build()
    }
}

/// A fresh Ed25519 signing key.
pub fn generate_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Loads the key at `path` (the base64 32-byte secret key, one line), or
/// creates one there (mode 0600 on Unix) when the file does not exist.
pub fn load_or_create_key(path: &Path) -> io::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = B64.decode(text.trim()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not base64: {e}", path.display()),
                )
            })?;
            let seed: [u8; 32] = bytes.try_into().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: expected a 32-byte Ed25519 secret key", path.display()),
                )
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = generate_key();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            io::Write::write_all(
                &mut file,
                format!("{}\n", B64.encode(key.to_bytes())).as_bytes(),
            )?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Whether `signature_b64` is a valid Ed25519 signature of `data` by
/// `public_key_b64` (false for anything malformed).
pub fn verify(data: &[u8], signature_b64: &str, public_key_b64: &str) -> bool {
    let Ok(sig) = B64.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(key) = B64.decode(public_key_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    key.verify(data, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::agent::Task;

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let s = Sentinel::generate(["alice"]);
        let sig = s.sign(b"hello");
        assert!(verify(b"hello", &sig, &s.public_key()));
        assert!(!verify(b"hellO", &sig, &s.public_key()));
        assert!(!verify(
            b"hello",
            &sig,
            &Sentinel::generate(["x"]).public_key()
        ));
        assert!(!verify(b"hello", "not base64!", &s.public_key()));
        let id = s.verify_identity("alice");
        assert!(id.verified);
        assert!(verify(
            b"alice",
            id.signature.as_deref().unwrap(),
            &s.public_key()
        ));
        let id = s.verify_identity("mallory");
        assert!(!id.verified && id.signature.is_none());
    }

    #[test]
    fn keys_persist_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sentinel.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&path, "AAAA\n").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }

    #[tokio::test]
    async fn the_agent_serves_its_capabilities() {
        let s = Arc::new(Sentinel::generate(["alice", "bob"]));
        let agent = s.clone().agent("sentinel-1");
        assert_eq!(agent.registration().public_key, s.public_key());
        let task = |cap: &str, inputs: serde_json::Value| Task {
            capability: cap.into(),
            inputs: inputs.as_object().unwrap().clone(),
            ..Task::default()
        };
        let out = agent
            .handle(task("sign", json!({"data": "x"})), CancellationToken::new())
            .await
            .unwrap();
        let v = agent
            .handle(
                task(
                    "verify",
                    json!({"data": "x", "signature": out["signature"], "publicKey": out["publicKey"]}),
                ),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(v["valid"], true);
        let e = agent
            .handle(
                task("verify-identity", json!({"userId": " "})),
                CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_INPUT);
    }
}
