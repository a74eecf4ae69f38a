//! The event log: seq allocation inside the committing transaction, and queries.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{ChoreographyEvent, EventFilter, EventType, NewEvent, Timestamp};
use maestro_core::ports::{EventOrder, EventStore};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::codec::{Bind, Where, bind_all, get, int, json, opt_json, uint};
use super::write::{self, to_json};
use super::{PostgresStore, db, retry_conflicts};
use crate::error::Error;

/// Bumps the counter by the number of events and inserts them with the seqs of
/// the range, in one statement. The counter's row lock is held until the
/// transaction ends, so ranges are handed out in commit order (module doc).
/// Answers the last seq of the range.
const INSERT_EVENTS: &str = "WITH s AS (UPDATE event_seq SET last = last + $1 RETURNING last), \
     ins AS (INSERT INTO events (seq, type, source_agent, target_agent, workflow_id, \
     execution_id, correlation_id, timestamp, payload, metadata) \
     SELECT s.last - $1 + e.ord, e.type, e.source_agent, e.target_agent, e.workflow_id, \
     e.execution_id, e.correlation_id, e.ts, e.payload::json, e.metadata::json \
     FROM s, UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::bigint[], $9::text[], $10::text[]) WITH ORDINALITY \
     AS e(type, source_agent, target_agent, workflow_id, execution_id, correlation_id, ts, \
     payload, metadata, ord)) \
     SELECT last FROM s";

/// A batch's events as one array per column.
#[derive(Default)]
pub(super) struct EventColumns {
    event_type: Vec<&'static str>,
    source_agent: Vec<String>,
    target_agent: Vec<Option<String>>,
    workflow_id: Vec<Option<String>>,
    execution_id: Vec<Option<String>>,
    correlation_id: Vec<String>,
    timestamp: Vec<i64>,
    payload: Vec<String>,
    metadata: Vec<Option<String>>,
}

impl EventColumns {
    pub(super) fn new(events: &[NewEvent]) -> Result<Self> {
        let mut c = EventColumns::default();
        for e in events {
            let NewEvent {
                event_type,
                source_agent,
                target_agent,
                workflow_id,
                execution_id,
                payload,
                timestamp,
                correlation_id,
                metadata,
            } = e;
            c.event_type.push(event_type.as_str());
            c.source_agent.push(source_agent.clone());
            c.target_agent.push(target_agent.clone());
            c.workflow_id.push(workflow_id.clone());
            c.execution_id.push(execution_id.clone());
            c.correlation_id.push(correlation_id.clone());
            c.timestamp.push(int(*timestamp));
            c.payload.push(to_json(payload)?);
            c.metadata.push(write::opt_json(metadata.as_ref())?);
        }
        Ok(c)
    }

    /// Allocate the seqs and insert, on a connection inside a write transaction
    /// (as its last statement: the counter stays locked until the commit).
    /// Answers the first seq, `None` when there are no events.
    pub(super) async fn insert(&self, conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
        if self.event_type.is_empty() {
            return Ok(None);
        }
        let n = self.event_type.len() as i64;
        let last: i64 = sqlx::query_scalar(INSERT_EVENTS)
            .bind(n)
            .bind(&self.event_type)
            .bind(&self.source_agent)
            .bind(&self.target_agent)
            .bind(&self.workflow_id)
            .bind(&self.execution_id)
            .bind(&self.correlation_id)
            .bind(&self.timestamp)
            .bind(&self.payload)
            .bind(&self.metadata)
            .fetch_one(conn)
            .await?;
        Ok(Some(last - n + 1))
    }
}

/// The committed events: `events` with the seqs from `first` on.
pub(super) fn committed(
    events: Vec<NewEvent>,
    first: Option<i64>,
) -> Result<Vec<ChoreographyEvent>> {
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let first = uint(first, "event seq")?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_event(first + i as u64))
        .collect())
}

const EVENT_COLUMNS: &str = "seq, type, source_agent, target_agent, workflow_id, execution_id, \
    correlation_id, timestamp, payload, metadata";

fn decode_event(row: &PgRow) -> Result<ChoreographyEvent, Error> {
    const W: &str = "event";
    let seq = uint(get(row, "seq", W)?, W)?;
    let event_type: String = get(row, "type", W)?;
    Ok(ChoreographyEvent {
        id: format!("evt_{seq}"),
        seq,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| Error::corrupt(W, format!("unknown type {event_type:?}")))?,
        source_agent: get(row, "source_agent", W)?,
        target_agent: get(row, "target_agent", W)?,
        workflow_id: get(row, "workflow_id", W)?,
        execution_id: get(row, "execution_id", W)?,
        payload: json(row, "payload", W)?,
        timestamp: uint(get(row, "timestamp", W)?, W)?,
        correlation_id: get(row, "correlation_id", W)?,
        metadata: opt_json(row, "metadata", W)?,
    })
}

fn event_filter(f: &EventFilter) -> Where {
    let mut w = Where::default();
    if !f.event_types.is_empty() {
        let types = f
            .event_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        w.add("type = ANY(?)", [Bind::TextArray(types)]);
    }
    if let Some(a) = &f.agent_id {
        w.add(
            "(source_agent = ? OR target_agent = ?)",
            [Bind::Text(a.clone()), Bind::Text(a.clone())],
        );
    }
    if let Some(a) = &f.source_agent {
        w.add("source_agent = ?", [Bind::Text(a.clone())]);
    }
    if let Some(x) = &f.workflow_id {
        w.add("workflow_id = ?", [Bind::Text(x.clone())]);
    }
    if let Some(x) = &f.execution_id {
        w.add("execution_id = ?", [Bind::Text(x.clone())]);
    }
    if let Some(x) = &f.correlation_id {
        w.add("correlation_id = ?", [Bind::Text(x.clone())]);
    }
    if let Some(t) = f.since {
        w.add("timestamp >= ?", [Bind::Int(int(t))]);
    }
    if let Some(s) = f.after {
        w.add("seq > ?", [Bind::Int(int(s))]);
    }
    w
}

impl PostgresStore {
    async fn append_once(&self, columns: &EventColumns) -> Result<Option<i64>, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        let first = columns.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(first)
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let columns = EventColumns::new(&events)?;
        let first = retry_conflicts!(self.append_once(&columns))?;
        committed(events, first)
    }

    async fn query_events(
        &self,
        filter: &EventFilter,
        order: EventOrder,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>> {
        let w = event_filter(filter);
        let direction = match order {
            EventOrder::Ascending => "ASC",
            EventOrder::Newest => "DESC",
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events{} ORDER BY seq {direction} LIMIT {}",
            w.sql(),
            w.next(0)
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), &w.binds)
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut events = rows
            .iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, Error>>()?;
        if order == EventOrder::Newest {
            events.reverse();
        }
        Ok(events)
    }

    async fn purge_events(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let done = retry_conflicts!(
            sqlx::query(
                "DELETE FROM events WHERE seq IN \
                 (SELECT seq FROM events WHERE timestamp < $1 ORDER BY seq LIMIT $2)"
            )
            .bind(int(before))
            .bind(int(limit as u64))
            .execute(&self.pool)
        )?;
        Ok(done.rows_affected())
    }

    async fn last_seq(&self) -> Result<u64> {
        // The counter, not MAX(seq): it is bumped in the same transaction that
        // inserts the events, and stays right if old events are ever pruned.
        let v: i64 = sqlx::query_scalar("SELECT last FROM event_seq")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(uint(v, "event seq")?)
    }

    async fn count_events(&self, filter: &EventFilter) -> Result<u64> {
        let w = event_filter(filter);
        let sql = format!("SELECT COUNT(*) FROM events{}", w.sql());
        let n: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), &w.binds)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        Ok(uint(n, "event count")?)
    }

    async fn count_events_since(&self, since: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE timestamp >= $1")
            .bind(int(since))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(uint(n, "event count")?)
    }
}
