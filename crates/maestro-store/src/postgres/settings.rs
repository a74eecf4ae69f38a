//! API tokens, webhook subscriptions and the runtime config.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{EventType, Timestamp};
use maestro_core::ports::{
    ConfigStore, SubscriptionRecord, SubscriptionStore, TokenRecord, TokenStore,
};
use serde_json::Value;
use sqlx::postgres::PgRow;

use super::codec::{get, int, json, opt_int, opt_uint, uint};
use super::{PostgresStore, db, db_unique};
use crate::error::Error;

fn decode_token(row: &PgRow) -> Result<TokenRecord, Error> {
    const W: &str = "token";
    Ok(TokenRecord {
        id: get(row, "id", W)?,
        role: get(row, "role", W)?,
        agent_id: get(row, "agent_id", W)?,
        name: get(row, "name", W)?,
        secret_hash: get(row, "secret_hash", W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
        expires_at: opt_uint(get(row, "expires_at", W)?, W)?,
        revoked_at: opt_uint(get(row, "revoked_at", W)?, W)?,
    })
}

#[async_trait]
impl TokenStore for PostgresStore {
    async fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, role, agent_id, name, secret_hash, created_at, expires_at, \
             revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.role)
        .bind(token.agent_id.as_deref())
        .bind(&token.name)
        .bind(&token.secret_hash)
        .bind(int(token.created_at))
        .bind(opt_int(token.expires_at))
        .bind(opt_int(token.revoked_at))
        .execute(&self.pool)
        .await
        .map_err(|e| db_unique(e, "token", &token.id))?;
        Ok(())
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT id, role, agent_id, name, secret_hash, created_at, expires_at, revoked_at \
             FROM tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.as_ref().map(decode_token).transpose()?)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, role, agent_id, name, secret_hash, created_at, expires_at, revoked_at \
             FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(decode_token)
            .collect::<Result<Vec<_>, Error>>()?)
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(int(at))
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}

fn decode_subscription(row: &PgRow) -> Result<SubscriptionRecord, Error> {
    const W: &str = "subscription";
    let event_types: Vec<EventType> = json(row, "event_types", W)?;
    Ok(SubscriptionRecord {
        id: get(row, "id", W)?,
        event_types,
        agent_id: get(row, "agent_id", W)?,
        workflow_id: get(row, "workflow_id", W)?,
        url: get(row, "url", W)?,
        secret: get(row, "secret", W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
    })
}

#[async_trait]
impl SubscriptionStore for PostgresStore {
    async fn insert_subscription(&self, sub: &SubscriptionRecord) -> Result<()> {
        let event_types = serde_json::to_string(&sub.event_types)
            .map_err(|e| maestro_core::Error::store(format!("cannot encode subscription: {e}")))?;
        sqlx::query(
            "INSERT INTO subscriptions (id, event_types, agent_id, workflow_id, url, secret, \
             created_at) VALUES ($1, $2::json, $3, $4, $5, $6, $7)",
        )
        .bind(&sub.id)
        .bind(event_types)
        .bind(sub.agent_id.as_deref())
        .bind(sub.workflow_id.as_deref())
        .bind(&sub.url)
        .bind(&sub.secret)
        .bind(int(sub.created_at))
        .execute(&self.pool)
        .await
        .map_err(|e| db_unique(e, "subscription", &sub.id))?;
        Ok(())
    }

    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(
            "SELECT id, event_types, agent_id, workflow_id, url, secret, created_at \
             FROM subscriptions ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(decode_subscription)
            .collect::<Result<Vec<_>, Error>>()?)
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
    async fn subscription_cursor(&self, id: &str) -> Result<Option<u64>> {
        let row: Option<i64> =
            sqlx::query_scalar("SELECT delivered_seq FROM subscriptions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(row.map(|v| uint(v, "subscription cursor")).transpose()?)
    }

    async fn set_subscription_cursor(&self, id: &str, seq: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE subscriptions SET delivered_seq = GREATEST(delivered_seq, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(int(seq))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl ConfigStore for PostgresStore {
    async fn load_config(&self) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT value FROM config WHERE key = 'runtime'")
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row
            .as_ref()
            .map(|row| json(row, "value", "config"))
            .transpose()?)
    }

    async fn save_config(&self, config: &Value) -> Result<()> {
        let text = serde_json::to_string(config)
            .map_err(|e| maestro_core::Error::store(format!("cannot encode config: {e}")))?;
        sqlx::query(
            "INSERT INTO config (key, value) VALUES ('runtime', $1::json) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(text)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}
