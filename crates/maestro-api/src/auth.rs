//! Bearer tokens and roles (API.md "Roles and tokens").
//!
//! A token is `mst_<id>_<secret>`: 12 hex characters of id and 64 of secret
//! (256 random bits). Only SHA-256 of the secret is stored; a request is
//! authenticated by looking the record up by id and comparing digests in
//! constant time. A slow password hash is unnecessary for 256-bit random
//! secrets and would cap the API at about a thousand requests per second.
//!
//! Records are cached in memory for [`CACHE_TTL_MS`] so that a request costs
//! no store read; a revocation through this server takes effect at once, one
//! through another server of a cluster within the TTL.
//!
//! The ids of all tokens are kept in memory too ([`KNOWN_IDS_TTL_MS`]), so
//! that a guessed id costs no store read: only an id that exists is looked up.
//! The set is read again when a cluster signal says a token was created or
//! revoked elsewhere, and at least every [`KNOWN_IDS_TTL_MS`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use maestro_core::model::{Timestamp, validate_id};
use maestro_core::ports::{Store, TokenRecord};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// How long a token record is trusted without reading the store again.
pub const CACHE_TTL_MS: u64 = 5_000;
/// How long the in-memory set of token ids is trusted without reading the
/// store again (tokens created through another node of a cluster are known at
/// once through its signal, at the latest after this).
pub const KNOWN_IDS_TTL_MS: u64 = 60_000;
/// Name of the token generated at first start.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Reader,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "reader" => Some(Role::Reader),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    /// For `agent` tokens: the only agent this token acts for.
    pub agent_id: Option<String>,
    pub name: String,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
    /// Admin or operator.
    pub fn is_operator(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }
    /// The agent this principal is bound to, when it is an agent token.
    pub fn agent(&self) -> Option<&str> {
        if self.role == Role::Agent {
            self.agent_id.as_deref()
        } else {
            None
        }
    }
}

/// A freshly minted token: the record to store and the secret to show once.
#[derive(Debug)]
pub struct Minted {
    pub record: TokenRecord,
    pub secret: String,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Make a new token (not stored yet).
pub fn mint(
    role: Role,
    agent_id: Option<String>,
    name: String,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Minted {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let id = hex(&id);
    let secret = hex(&secret);
    Minted {
        record: TokenRecord {
            id: id.clone(),
            role: role.as_str().to_owned(),
            agent_id,
            name,
            secret_hash: hex(&digest(&secret)),
            created_at: now,
            expires_at,
            revoked_at: None,
        },
        secret: format!("mst_{id}_{secret}"),
    }
}

struct Cached {
    record: TokenRecord,
    fetched_at: Timestamp,
}

/// Every token id in the store, as of `loaded_at` (`None`: read it again).
#[derive(Default)]
struct KnownIds {
    ids: std::collections::HashSet<String>,
    loaded_at: Option<Timestamp>,
}

/// Authenticates bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    cache: Arc<RwLock<HashMap<String, Cached>>>,
    known: Arc<RwLock<KnownIds>>,
    /// One reader of the id set at a time: a flood of guesses arriving while
    /// it is stale reads the store once, not once per guess.
    reload: Arc<tokio::sync::Mutex<()>>,
    /// `MAESTRO_ADMIN_TOKEN`'s digest, when set: any string is accepted.
    fixed_admin: Option<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("fixed_admin", &self.fixed_admin.is_some())
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, fixed_admin_token: Option<&str>) -> Self {
        Auth {
            store,
            cache: Arc::default(),
            known: Arc::default(),
            reload: Arc::default(),
            fixed_admin: fixed_admin_token.map(digest),
        }
    }

    /// Create and store a token.
    pub async fn create(
        &self,
        role: Role,
        agent_id: Option<String>,
        name: String,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Minted, ApiError> {
        let minted = mint(role, agent_id, name, expires_at, now);
        self.store.insert_token(&minted.record).await?;
        self.known
            .write()
            .expect("token ids")
            .ids
            .insert(minted.record.id.clone());
        Ok(minted)
    }

    /// Revoke; `false` if unknown or already revoked.
    pub async fn revoke(&self, id: &str, now: Timestamp) -> Result<bool, ApiError> {
        let done = self.store.revoke_token(id, now).await?;
        self.cache.write().expect("token cache").remove(id);
        Ok(done)
    }

    /// Drop a token from the cache (created or revoked through another node).
    pub fn forget(&self, id: &str) {
        self.cache.write().expect("token cache").remove(id);
        self.known.write().expect("token ids").loaded_at = None;
    }

    /// Drop every cached token (cluster signals may have been missed).
    pub fn forget_all(&self) {
        self.cache.write().expect("token cache").clear();
        self.known.write().expect("token ids").loaded_at = None;
    }

    pub async fn list(&self) -> Result<Vec<TokenRecord>, ApiError> {
        Ok(self.store.list_tokens().await?)
    }

    /// First start without a configured admin token: mint one, to be printed
    /// once and written to `admin.token`. `None` when one exists already or
    /// `MAESTRO_ADMIN_TOKEN` is set.
    pub async fn bootstrap(&self, now: Timestamp) -> Result<Option<Minted>, ApiError> {
        if self.fixed_admin.is_some() {
            return Ok(None);
        }
        let tokens = self.store.list_tokens().await?;
        if tokens
            .iter()
            .any(|t| t.role == "admin" && t.revoked_at.is_none())
        {
            return Ok(None);
        }
        let m = self
            .create(Role::Admin, None, BOOTSTRAP_NAME.to_owned(), None, now)
            .await?;
        Ok(Some(m))
    }

    /// Who `authorization` (the header's value) is, or 401.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal, ApiError> {
        let Some(header) = authorization else {
            return Err(ApiError::Unauthorized(
                "missing Authorization: Bearer <token>".into(),
            ));
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = header
            .trim_start()
            .split_once([' ', '\t'])
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("expected Authorization: Bearer <token>".into())
            })?;
        if let Some(fixed) = &self.fixed_admin
            && bool::from(digest(token).ct_eq(fixed))
        {
            return Ok(Principal {
                token_id: "env-admin".into(),
                role: Role::Admin,
                agent_id: None,
                name: "admin".into(),
            });
        }
        let bad = || ApiError::Unauthorized("invalid token".into());
        let rest = token.strip_prefix("mst_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id.is_empty() || id.len() > 64 || secret.is_empty() {
            return Err(bad());
        }
        let record = self.record(id, now).await?.ok_or_else(bad)?;
        let presented = hex(&digest(secret));
        if !bool::from(presented.as_bytes().ct_eq(record.secret_hash.as_bytes())) {
            return Err(bad());
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        if record.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::Unauthorized("token expired".into()));
        }
        let role = Role::parse(&record.role).ok_or_else(bad)?;
        Ok(Principal {
            token_id: record.id,
            role,
            agent_id: record.agent_id,
            name: record.name,
        })
    }

    async fn record(&self, id: &str, now: Timestamp) -> Result<Option<TokenRecord>, ApiError> {
        if let Some(c) = self.cache.read().expect("token cache").get(id)
            && now.saturating_sub(c.fetched_at) < CACHE_TTL_MS
        {
            return Ok(Some(c.record.clone()));
        }
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) || !self.is_known(id, now).await? {
            return Ok(None);
        }
        let found = self.store.get_token(id).await?;
        let mut cache = self.cache.write().expect("token cache");
        match &found {
            Some(r) => {
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(
                    id.to_owned(),
                    Cached {
                        record: r.clone(),
                        fetched_at: now,
                    },
                );
            }
            None => {
                cache.remove(id);
            }
        }
        Ok(found)
    }
}

impl Auth {
    /// `id` is the id of a stored token (revoked or not), from the in-memory
    /// set, read again from the store when stale.
    async fn is_known(&self, id: &str, now: Timestamp) -> Result<bool, ApiError> {
        let fresh = |k: &KnownIds| {
            k.loaded_at
                .is_some_and(|at| now.saturating_sub(at) < KNOWN_IDS_TTL_MS)
        };
        {
            let k = self.known.read().expect("token ids");
            if fresh(&k) {
                return Ok(k.ids.contains(id));
            }
        }
        let _one_reader = self.reload.lock().await;
        {
            let k = self.known.read().expect("token ids");
            if fresh(&k) {
                return Ok(k.ids.contains(id));
            }
        }
        let ids = self
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect();
        let mut k = self.known.write().expect("token ids");
        *k = KnownIds {
            ids,
            loaded_at: Some(now),
        };
        Ok(k.ids.contains(id))
    }
}

/// Check an agent id named in a token request.
pub fn check_agent_binding(role: Role, agent_id: &Option<String>) -> Result<(), ApiError> {
    match (role, agent_id) {
        (Role::Agent, None) => Err(ApiError::validation(
            "an agent token needs agentId",
            "agentId",
        )),
        (Role::Agent, Some(a)) => {
            validate_id("agent", a).map_err(|e| ApiError::from(e.field("agentId")))
        }
        (_, Some(_)) => Err(ApiError::validation(
            "agentId is only for role agent",
            "agentId",
        )),
        (_, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_have_the_documented_shape_and_differ() {
        let a = mint(Role::Reader, None, "r".into(), None, 1);
        let b = mint(Role::Reader, None, "r".into(), None, 1);
        assert_ne!(a.secret, b.secret);
        let parts: Vec<_> = a.secret.split('_').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "mst");
        assert_eq!(parts[1], a.record.id);
        assert_eq!(parts[2].len(), 64);
        assert_eq!(a.record.secret_hash, hex(&digest(parts[2])));
        assert!(!a.record.secret_hash.contains(parts[2]));
    }

    #[tokio::test]
    async fn unknown_ids_are_answered_from_memory() {
        use maestro_core::ports::TokenStore;
        let store = Arc::new(maestro_store::MemoryStore::new());
        let auth = Auth::new(store.clone(), None);
        let now = 1_000;
        let real = auth
            .create(Role::Reader, None, "r".into(), None, now)
            .await
            .unwrap();
        let header = format!("Bearer {}", real.secret);
        assert!(auth.authenticate(Some(&header), now).await.is_ok());
        // A token written to the store behind this server's back (as another
        // node would, before its signal arrives) is unknown here: proof that a
        // guessed id is refused without a store read.
        let behind = mint(Role::Admin, None, "a".into(), None, now);
        store.insert_token(&behind.record).await.unwrap();
        let header = format!("Bearer {}", behind.secret);
        assert!(matches!(
            auth.authenticate(Some(&header), now + 1).await,
            Err(ApiError::Unauthorized(_))
        ));
        // Its signal (or the refresh) makes it known.
        auth.forget(&behind.record.id);
        assert!(auth.authenticate(Some(&header), now + 2).await.is_ok());
        let later = mint(Role::Admin, None, "b".into(), None, now);
        store.insert_token(&later.record).await.unwrap();
        let header = format!("Bearer {}", later.secret);
        assert!(
            auth.authenticate(Some(&header), now + 2 + KNOWN_IDS_TTL_MS)
                .await
                .is_ok(),
            "read again after the TTL"
        );
    }
}

/// Failed authentications per client address (docs/SECURITY.md). A token is
/// always verified first and a valid one is served: the limit never refuses a
/// request that authenticates. Once an address has failed `limit` times within
/// a minute (counted from its first failure), its further *failing* requests
/// get 429 `RATE_LIMITED` instead of 401 until that minute is over, so that
/// scanning for tokens is slow and visible.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    windows: std::sync::Mutex<HashMap<std::net::IpAddr, (u32, Timestamp)>>,
}

/// The window of [`FailureLimiter`].
pub const FAILURE_WINDOW_MS: u64 = 60_000;
/// Addresses tracked before expired windows are swept.
const FAILURE_SWEEP_AT: usize = 10_000;

impl FailureLimiter {
    pub fn new(limit_per_minute: u32) -> Self {
        FailureLimiter {
            limit: limit_per_minute.max(1),
            windows: Default::default(),
        }
    }

    /// Count a failed authentication of `ip`: `None` while it is within the
    /// limit (answer 401), else `Some(seconds until the window ends)` (429).
    pub fn failed(&self, ip: std::net::IpAddr, now: Timestamp) -> Option<u64> {
        let mut w = self.windows.lock().expect("failure limiter");
        if w.len() >= FAILURE_SWEEP_AT {
            w.retain(|_, (_, start)| now < *start + FAILURE_WINDOW_MS);
        }
        let e = w.entry(ip).or_insert((0, now));
        if now >= e.1 + FAILURE_WINDOW_MS {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
        let end = e.1 + FAILURE_WINDOW_MS;
        (e.0 > self.limit).then(|| (end - now).div_ceil(1000).max(1))
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;

    #[test]
    fn failures_past_the_limit_are_refused_until_the_minute_ends() {
        let l = FailureLimiter::new(3);
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        for t in 0..3 {
            assert_eq!(l.failed(a, 1000 + t), None, "failure {t} is a 401");
        }
        assert_eq!(l.failed(a, 1003), Some(60));
        assert_eq!(l.failed(b, 1003), None, "per address");
        assert_eq!(l.failed(a, 1000 + FAILURE_WINDOW_MS - 1), Some(1));
        assert_eq!(
            l.failed(a, 1000 + FAILURE_WINDOW_MS),
            None,
            "a new minute counts again from 1"
        );
    }
}
