//! The Bridge: issues real signed JWTs (HS256), revokes them, verifies them.
//!
//! | capability | inputs | outputs |
//! |---|---|---|
//! | `issue-jwt` | `{userId}` | `{token, expiresAt}` (`token` sensitive; compensation `revoke-jwt`) |
//! | `revoke-jwt` | `{token}` or `{jti}` or the default compensation inputs `{inputs, outputs: {token}}` | `{revoked, jti}` |
//! | `verify-jwt` | `{token}` | `{valid, sub, reason?}` |
//!
//! Claims: `sub` = userId, `iat`, `exp` (seconds), `jti` = the call's
//! idempotency key, so a repeated delivery of one attempt answers the very
//! same token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, CapabilitySpec, TaskContext, codes};

/// Issued tokens remembered for repeated deliveries, at most.
const MAX_REMEMBERED: usize = 10_000;

/// The claims of a Bridge token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    pub jti: String,
}

/// `issue-jwt` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueIn {
    pub user_id: String,
}

/// `issue-jwt` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueOut {
    /// The signed JWT.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at: u64,
}

/// The issued token as the default compensation inputs carry it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct IssuedOutputs {
    pub token: Option<String>,
}

/// `revoke-jwt` inputs: a `token`, a `jti`, or `{outputs: {token}}` (what
/// Maestro sends when it compensates `issue-jwt`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RevokeIn {
    pub token: Option<String>,
    pub jti: Option<String>,
    pub outputs: Option<IssuedOutputs>,
}

/// `revoke-jwt` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RevokeOut {
    /// False when it was revoked before.
    pub revoked: bool,
    pub jti: String,
}

/// `verify-jwt` inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VerifyJwtIn {
    pub token: String,
}

/// `verify-jwt` outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VerifyJwtOut {
    pub valid: bool,
    /// The subject (userId) when valid.
    pub sub: Option<String>,
    /// Why not, when invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The Bridge's secret and memory.
pub struct Bridge {
    secret: Vec<u8>,
    ttl: Duration,
    revoked: Mutex<HashSet<String>>,
    issued: Mutex<HashMap<String, IssueOut>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A Bridge signing with `secret`; tokens last an hour.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Bridge {
            secret: secret.into(),
            ttl: Duration::from_secs(3600),
            revoked: Mutex::new(HashSet::new()),
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// A Bridge with a fresh random 32-byte secret.
    pub fn generate() -> Self {
        Bridge::new(rand::random::<[u8; 32]>().to_vec())
    }

    /// How long tokens last.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Issues a token for `user_id` with id `jti`; the same `jti` again
    /// answers the same token.
    pub fn issue(&self, user_id: &str, jti: &str) -> Result<IssueOut, AgentError> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = issued.get(jti) {
            return Ok(out.clone());
        }
        let iat = now_ms() / 1000;
        let exp = iat + self.ttl.as_secs().max(1);
        let claims = Claims {
            sub: user_id.to_owned(),
            iat,
            exp,
            jti: jti.to_owned(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|e| AgentError::fatal("JWT_ERROR", format!("cannot sign the token: {e}")))?;
        let out = IssueOut {
            token,
            expires_at: exp * 1000,
        };
        if issued.len() >= MAX_REMEMBERED {
            let now = now_ms();
            issued.retain(|_, o| o.expires_at > now);
            if issued.len() >= MAX_REMEMBERED {
                issued.clear();
            }
        }
        issued.insert(jti.to_owned(), out.clone());
        Ok(out)
    }

    /// Revokes `jti`; false when it was revoked already.
    pub fn revoke(&self, jti: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jti.to_owned())
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(jti)
    }

    /// The claims of `token` when it is signed by this Bridge (expiry not
    /// checked: for revocation).
    fn claims_of(&self, token: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }

    /// The claims of a valid token: signed by this Bridge, not expired, not
    /// revoked.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let v = Validation::new(Algorithm::HS256);
        let claims =
            jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
                .map(|d| d.claims)
                .map_err(|e| e.to_string())?;
        if self.is_revoked(&claims.jti) {
            return Err("revoked".to_owned());
        }
        Ok(claims)
    }

    /// The agent `id` (type `bridge`) serving this Bridge.
    pub fn agent(self: Arc<Self>, id: &str) -> Agent {
        let (b1, b2, b3) = (self.clone(), self.clone(), self);
        Agent::builder(id, "bridge")
            .name("Bridge Agent")
            .description("Issues, revokes and verifies signed JWTs (HS256)")
            .metadata("algorithm", "HS256")
            .capability_with(
                CapabilitySpec::new("issue-jwt")
                    .name("Issue JWT")
                    .description("A signed JWT for userId; jti = the call's idempotency key")
                    .compensation("revoke-jwt")
                    .sensitive("token")
                    .tag("auth"),
                move |input: IssueIn, ctx: TaskContext| {
                    let b = b1.clone();
                    async move {
                        if input.user_id.trim().is_empty() {
                            return Err(AgentError::fatal(codes::INVALID_INPUT, "userId is empty"));
                        }
                        let jti = if ctx.idempotency_key.is_empty() {
                            format!("jti-{:032x}", rand::random::<u128>())
                        } else {
                            ctx.idempotency_key.clone()
                        };
                        b.issue(&input.user_id, &jti)
                    }
                },
            )
            .capability_with(
                CapabilitySpec::new("revoke-jwt")
                    .name("Revoke JWT")
                    .description("Revokes a token (the compensation of issue-jwt)")
                    .tag("auth"),
                move |input: RevokeIn, _ctx: TaskContext| {
                    let b = b2.clone();
                    async move {
                        let token = input.token.or_else(|| input.outputs.and_then(|o| o.token));
                        let jti = match (input.jti, token) {
                            (Some(jti), _) => jti,
                            (None, Some(token)) => {
                                b.claims_of(&token)
                                    .map_err(|e| {
                                        AgentError::fatal(
                                            codes::INVALID_INPUT,
                                            format!("not a token of this bridge: {e}"),
                                        )
                                    })?
                                    .jti
                            }
                            (None, None) => {
                                return Err(AgentError::fatal(
                                    codes::INVALID_INPUT,
                                    "give a token, a jti, or outputs.token",
                                ));
                            }
                        };
                        Ok(RevokeOut {
                            revoked: b.revoke(&jti),
                            jti,
                        })
                    }
                },
            )
            .capability_with(
                CapabilitySpec::new("verify-jwt")
                    .name("Verify JWT")
                    .description("Checks signature, expiry and revocation")
                    .tag("auth"),
                move |input: VerifyJwtIn, _ctx: TaskContext| {
                    let b = b3.clone();
                    async move {
                        Ok(match b.verify(&input.token) {
                            Ok(c) => VerifyJwtOut {
                                valid: true,
                                sub: Some(c.sub),
                                reason: None,
                            },
                            Err(why) => VerifyJwtOut {
                                valid: false,
                                sub: None,
                                reason: Some(why),
                            },
                        })
                    }
                },
            )
            .build()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::agent::Task;

    #[test]
    fn tokens_are_signed_idempotent_and_revocable() {
        let b = Bridge::new(b"s3cret".to_vec());
        let t = b.issue("alice", "e:s:1").unwrap();
        assert_eq!(b.issue("alice", "e:s:1").unwrap().token, t.token);
        assert_ne!(b.issue("alice", "e:s:2").unwrap().token, t.token);
        let c = b.verify(&t.token).unwrap();
        assert_eq!((c.sub.as_str(), c.jti.as_str()), ("alice", "e:s:1"));
        assert_eq!(c.exp * 1000, t.expires_at);
        assert!(Bridge::new(b"other".to_vec()).verify(&t.token).is_err());
        assert!(b.revoke("e:s:1"));
        assert!(!b.revoke("e:s:1"));
        assert_eq!(b.verify(&t.token).unwrap_err(), "revoked");
    }

    #[tokio::test]
    async fn revoke_takes_the_default_compensation_inputs() {
        let b = Arc::new(Bridge::generate());
        let agent = b.clone().agent("bridge-1");
        let reg = agent.registration();
        assert_eq!(
            reg.capability("issue-jwt").unwrap().compensation.as_deref(),
            Some("revoke-jwt")
        );
        let task = |cap: &str, key: &str, inputs: serde_json::Value| Task {
            task_id: key.into(),
            capability: cap.into(),
            inputs: inputs.as_object().unwrap().clone(),
            ..Task::default()
        };
        let out = agent
            .handle(
                task("issue-jwt", "x:s:1", json!({"userId": "bob"})),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        let token = out["token"].as_str().unwrap().to_owned();
        let v = agent
            .handle(
                task("verify-jwt", "x:v:1", json!({"token": token})),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            (v["valid"].clone(), v["sub"].clone()),
            (json!(true), json!("bob"))
        );
        let r = agent
            .handle(
                task(
                    "revoke-jwt",
                    "x:s:compensate:1",
                    json!({"inputs": {"userId": "bob"}, "outputs": {"token": token, "expiresAt": 1}}),
                ),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            (r["revoked"].clone(), r["jti"].clone()),
            (json!(true), json!("x:s:1"))
        );
        let v = agent
            .handle(
                task("verify-jwt", "x:v:2", json!({"token": token})),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["reason"], "revoked");
    }
}
