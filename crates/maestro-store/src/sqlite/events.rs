//! The event log: seq allocation inside the committing transaction, and queries.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{ChoreographyEvent, EventFilter, EventType, NewEvent, Timestamp};
use maestro_core::ports::{EventOrder, EventStore};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use super::codec::{Bind, Where, bind_all, get, int, json, opt_json, uint};
use super::write::{self, MultiInsert, Query, to_json};
use super::{SqliteStore, db};
use crate::error::Error;

/// Bumps the counter by the number of events and answers the last seq of the
/// range: inside the transaction, so seqs are handed out in commit order.
const ALLOCATE_SEQS: &str =
    "UPDATE meta SET value = value + ?1 WHERE key = 'event_seq' RETURNING value";

static INSERT_EVENTS: MultiInsert = MultiInsert::new(
    "INSERT INTO events (seq, type, source_agent, target_agent, workflow_id, execution_id, \
     correlation_id, timestamp, payload, metadata)",
    10,
    "",
);

fn bind_event(q: Query, (seq, e): &(i64, &NewEvent)) -> Result<Query> {
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
    Ok(q.bind(*seq)
        .bind(event_type.as_str())
        .bind(source_agent.clone())
        .bind(target_agent.clone())
        .bind(workflow_id.clone())
        .bind(execution_id.clone())
        .bind(correlation_id.clone())
        .bind(int(*timestamp))
        .bind(to_json(payload)?)
        .bind(write::opt_json(metadata.as_ref())?))
}

/// Give `events` their seqs and insert them, on a connection inside a write
/// transaction.
pub(super) async fn insert_events(
    conn: &mut SqliteConnection,
    events: Vec<NewEvent>,
) -> Result<Vec<ChoreographyEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = events.len() as i64;
    let last: i64 = sqlx::query_scalar(ALLOCATE_SEQS)
        .bind(n)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let first = last - n + 1;
    let rows: Vec<(i64, &NewEvent)> = (first..).zip(events.iter()).collect();
    INSERT_EVENTS.run(conn, &rows, bind_event).await?;
    let first = uint(first, "event seq")?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_event(first + i as u64))
        .collect())
}

const EVENT_COLUMNS: &str = "seq, type, source_agent, target_agent, workflow_id, execution_id, \
    correlation_id, timestamp, payload, metadata";

fn decode_event(row: &SqliteRow) -> Result<ChoreographyEvent, Error> {
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
        payload: json(&get::<String>(row, "payload", W)?, W)?,
        timestamp: uint(get(row, "timestamp", W)?, W)?,
        correlation_id: get(row, "correlation_id", W)?,
        metadata: opt_json(get(row, "metadata", W)?, W)?,
    })
}

fn event_filter(f: &EventFilter) -> Where {
    let mut w = Where::default();
    if !f.event_types.is_empty() {
        let types: Vec<&str> = f.event_types.iter().map(|t| t.as_str()).collect();
        w.add(
            "type IN (SELECT value FROM json_each(?))",
            [Bind::Text(
                serde_json::to_string(&types).expect("strings serialize"),
            )],
        );
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

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        let events = insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(db)?;
        Ok(events)
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
            "SELECT {EVENT_COLUMNS} FROM events{} ORDER BY seq {direction} LIMIT ?",
            w.sql()
        );
        let rows = bind_all(sqlx::query(AssertSqlSafe(sql)), &w.binds)
            .bind(int(limit as u64))
            .fetch_all(&self.reader)
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
        let done = sqlx::query(
            "DELETE FROM events WHERE seq IN \
             (SELECT seq FROM events WHERE timestamp < ?1 ORDER BY seq LIMIT ?2)",
        )
        .bind(int(before))
        .bind(int(limit as u64))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn last_seq(&self) -> Result<u64> {
        // The counter, not MAX(seq): it is bumped in the same transaction that
        // inserts the events, and stays right if old events are ever pruned.
        let v: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'event_seq'")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(uint(v, "event seq")?)
    }

    async fn count_events(&self, filter: &EventFilter) -> Result<u64> {
        let w = event_filter(filter);
        let sql = format!("SELECT COUNT(*) FROM events{}", w.sql());
        let n: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), &w.binds)
            .fetch_one(&self.reader)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        Ok(uint(n, "event count")?)
    }

    async fn count_events_since(&self, since: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE timestamp >= ?1")
            .bind(int(since))
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(uint(n, "event count")?)
    }
}
