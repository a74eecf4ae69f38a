//! Workflow definitions: define / update (a new revision each time) / get /
//! list / delete, with validation, and a cache of parsed revisions and their
//! plans (revisions are immutable, so the cache never goes stale).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use maestro_core::choreography::{Limits, WorkflowPlan, validate_workflow};
use maestro_core::model::{Timestamp, Workflow, merge_patch};
use maestro_core::ports::{Page, Store};
use maestro_core::{Error, Result};
use serde_json::Value;

type Compiled = (Arc<Workflow>, Arc<WorkflowPlan>);

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn Store>,
    limits: Limits,
    cache: Arc<Mutex<HashMap<(String, u64), Compiled>>>,
    /// Latest revision per workflow id, as read at a given instant: saves a store
    /// read per execute. Changes made through this process invalidate it at once;
    /// changes made by another process (a cluster) are seen within `LATEST_TTL`.
    latest: Arc<Mutex<HashMap<String, (Compiled, std::time::Instant)>>>,
}

/// How long a cached "latest revision" is trusted.
const LATEST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// Fields the server keeps; a patch may carry them (read-edit-write) but they are ignored.
const SERVER_FIELDS: [&str; 4] = ["createdAt", "updatedAt", "revision", "createdBy"];

impl Catalog {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        Catalog {
            store,
            limits,
            cache: Arc::default(),
            latest: Arc::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `defineWorkflow`: validate and store revision 1 (or the next free revision
    /// when a deleted workflow of that id is defined again).
    pub async fn define(
        &self,
        mut wf: Workflow,
        created_by: &str,
        now: Timestamp,
    ) -> Result<Workflow> {
        validate_workflow(&wf, &self.limits)?;
        if self.store.get_workflow(&wf.id, None).await?.is_some() {
            return Err(Error::already_exists("workflow", wf.id));
        }
        wf.created_at = now;
        wf.updated_at = now;
        if wf.created_by.is_empty() {
            wf.created_by = created_by.to_owned();
        }
        for revision in 1..=10_000u64 {
            wf.revision = revision;
            match self.store.insert_workflow_revision(&wf).await {
                Ok(()) => {
                    self.forget_latest(&wf.id);
                    return Ok(wf);
                }
                Err(Error::AlreadyExists { .. }) => {
                    // A live workflow of that id appeared meanwhile: a real duplicate.
                    if self.store.get_workflow(&wf.id, None).await?.is_some() {
                        return Err(Error::already_exists("workflow", wf.id));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::InvalidState(format!(
            "workflow {:?} has too many revisions",
            wf.id
        )))
    }

    /// `updateWorkflow`: merge `patch` (JSON merge patch over the camelCase
    /// document) into the latest revision, validate, store as revision + 1.
    pub async fn update(&self, id: &str, patch: &Value, now: Timestamp) -> Result<Workflow> {
        let Value::Object(p) = patch else {
            return Err(Error::validation("a workflow patch must be a JSON object"));
        };
        let current = self
            .store
            .get_workflow(id, None)
            .await?
            .ok_or_else(|| Error::not_found("workflow", id))?;
        let mut p = p.clone();
        for f in SERVER_FIELDS {
            p.remove(f);
        }
        if let Some(new_id) = p.get("id")
            && new_id != &Value::String(id.to_owned())
        {
            return Err(Error::validation("a workflow's id cannot be changed").field("id"));
        }
        let mut doc = serde_json::to_value(&current).map_err(|e| Error::store(e.to_string()))?;
        merge_patch(&mut doc, &Value::Object(p));
        let mut wf = maestro_core::model::parse_workflow(&doc)?;
        validate_workflow(&wf, &self.limits)?;
        wf.revision = current.revision + 1;
        wf.created_at = current.created_at;
        wf.created_by = current.created_by.clone();
        wf.updated_at = now;
        match self.store.insert_workflow_revision(&wf).await {
            Ok(()) => {
                self.forget_latest(id);
                Ok(wf)
            }
            Err(Error::AlreadyExists { .. }) => Err(Error::InvalidState(format!(
                "workflow {id:?} was updated concurrently; read it again and retry"
            ))),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>> {
        self.store.get_workflow(id, revision).await
    }

    pub async fn list(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>> {
        self.store.list_workflows(tags, limit, offset).await
    }

    pub async fn delete(&self, id: &str) -> Result<bool> {
        let deleted = self.store.delete_workflow(id).await;
        self.forget_latest(id);
        deleted
    }

    /// The latest revision, compiled.
    pub async fn latest(&self, id: &str) -> Result<Option<Compiled>> {
        if let Some((c, at)) = self.latest.lock().expect("catalog lock").get(id)
            && at.elapsed() < LATEST_TTL
        {
            return Ok(Some(c.clone()));
        }
        match self.store.get_workflow(id, None).await? {
            Some(wf) => {
                let c = self.compile(wf)?;
                let mut latest = self.latest.lock().expect("catalog lock");
                if latest.len() > 10_000 {
                    latest.clear();
                }
                latest.insert(id.to_owned(), (c.clone(), std::time::Instant::now()));
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }

    fn forget_latest(&self, id: &str) {
        self.latest.lock().expect("catalog lock").remove(id);
    }

    /// A given revision (deleted workflows included: executions pinned them), compiled.
    pub async fn revision(&self, id: &str, revision: u64) -> Result<Option<Compiled>> {
        if let Some(c) = self
            .cache
            .lock()
            .expect("catalog lock")
            .get(&(id.to_owned(), revision))
        {
            return Ok(Some(c.clone()));
        }
        match self.store.get_workflow(id, Some(revision)).await? {
            Some(wf) => self.compile(wf).map(Some),
            None => Ok(None),
        }
    }

    fn compile(&self, wf: Workflow) -> Result<Compiled> {
        let key = (wf.id.clone(), wf.revision);
        if let Some(c) = self.cache.lock().expect("catalog lock").get(&key) {
            return Ok(c.clone());
        }
        let plan = Arc::new(WorkflowPlan::new(&wf)?);
        let c = (Arc::new(wf), plan);
        let mut cache = self.cache.lock().expect("catalog lock");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, c.clone());
        Ok(c)
    }
}
