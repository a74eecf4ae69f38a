//! `sensitive` outputs: passed to later steps as they are, shown as `"***"` to
//! everyone but admins in execution reads, events, the event stream and
//! webhooks (API.md §6).
//!
//! Masking is done in two steps, the same way for every read:
//!
//! 1. **Collect** the sensitive values. A capability's `sensitive` list names
//!    output keys; the values under those keys in a step's outputs are
//!    sensitive (the step's capability comes from the workflow revision the
//!    execution pinned; a fallback's outputs standing in for a failed step
//!    count under both steps' declarations). A sensitive object or array counts
//!    whole and by each of its string and number leaves. For an event, the
//!    values are those of its execution (read from the store, see
//!    [`EventMasker`]), plus those under sensitive keys of the event's own
//!    `outputs`.
//! 2. **Replace** ([`Secrets::mask`]), anywhere in the JSON shown: a value
//!    under a sensitive key, and any string, number, object or array equal to
//!    a sensitive value, becomes `"***"`; inside a longer string (error
//!    messages, interpolated inputs, results), every occurrence of a sensitive
//!    string or number of at least [`MIN_EMBEDDED_CHARS`] characters becomes
//!    `"***"`. Shorter values would match ordinary text everywhere (`"1"`,
//!    `"EUR"`). Booleans and null are masked only under their key: a copy of a
//!    boolean cannot be told from any other boolean, and masking every `true`
//!    would give the value away by which ones are left.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use maestro_core::model::{ChoreographyEvent, ExecutionError, WorkflowExecution};
use maestro_core::ports::Store;
use serde_json::{Map, Value};

use crate::registry::Registry;

pub const MASK: &str = "***";

/// Sensitive values shorter than this (in characters of their text) are
/// masked whole only, never inside longer strings.
pub const MIN_EMBEDDED_CHARS: usize = 4;

/// Sensitive keys by capability id, from the registry: a key is sensitive for
/// a capability while some registered agent declares it so.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SensitiveIndex {
    by_capability: HashMap<String, HashSet<String>>,
    all: HashSet<String>,
}

impl SensitiveIndex {
    /// `None` when no registered capability declares sensitive outputs (the
    /// fast path: nothing to mask).
    pub fn from_registry(registry: &Registry) -> Option<SensitiveIndex> {
        let idx = registry.read(|r| {
            let mut idx = SensitiveIndex::default();
            for a in r.agents() {
                for c in &a.capabilities {
                    if c.sensitive.is_empty() {
                        continue;
                    }
                    let set = idx.by_capability.entry(c.id.clone()).or_default();
                    for k in &c.sensitive {
                        set.insert(k.clone());
                        idx.all.insert(k.clone());
                    }
                }
            }
            idx
        });
        (!idx.all.is_empty()).then_some(idx)
    }

    #[cfg(test)]
    fn of(pairs: &[(&str, &[&str])]) -> SensitiveIndex {
        let mut idx = SensitiveIndex::default();
        for (cap, keys) in pairs {
            for k in *keys {
                idx.by_capability
                    .entry((*cap).to_owned())
                    .or_default()
                    .insert((*k).to_owned());
                idx.all.insert((*k).to_owned());
            }
        }
        idx
    }
}

/// Which output keys are sensitive, per step.
#[derive(Debug, Clone)]
enum Keys {
    /// Known from the pinned workflow revision (fallbacks included).
    ByStep(HashMap<String, HashSet<String>>),
    /// The revision could not be read: every key any capability declares.
    Any(HashSet<String>),
}

impl Keys {
    /// The keys of `e`'s steps under `idx`; `capabilities`: step id →
    /// capability id, from the revision `e` pinned.
    fn of(
        idx: &SensitiveIndex,
        capabilities: Option<&HashMap<String, String>>,
        e: &WorkflowExecution,
    ) -> Keys {
        let Some(caps) = capabilities else {
            return Keys::Any(idx.all.clone());
        };
        let own = |step: &str| {
            caps.get(step)
                .and_then(|c| idx.by_capability.get(c))
                .cloned()
                .unwrap_or_default()
        };
        let mut by_step: HashMap<String, HashSet<String>> = caps
            .keys()
            .map(|s| (s.clone(), own(s)))
            .filter(|(_, k)| !k.is_empty())
            .collect();
        // A fallback's outputs stand in for the failed step: mask by both.
        for st in e.step_executions.iter() {
            if let Some(fb) = &st.fallback_step {
                let extra = own(fb);
                if !extra.is_empty() {
                    by_step.entry(st.step_id.clone()).or_default().extend(extra);
                }
            }
        }
        Keys::ByStep(by_step)
    }

    fn for_step(&self, step: &str) -> Option<&HashSet<String>> {
        match self {
            Keys::ByStep(m) => m.get(step),
            Keys::Any(all) => Some(all),
        }
    }
}

/// The sensitive values of one execution (or event), and the one function
/// that masks them: [`Secrets::mask`].
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    /// Text of each sensitive string and number (a number's JSON text).
    texts: HashSet<String>,
    /// Those of at least [`MIN_EMBEDDED_CHARS`] characters, longest first, so
    /// that a value containing another is replaced whole.
    embedded: Vec<String>,
    /// Sensitive objects and arrays, compared whole.
    compounds: Vec<Value>,
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty() && self.compounds.is_empty()
    }

    /// Add a sensitive value: itself and, for an object or array, every leaf.
    pub fn add(&mut self, v: &Value) {
        match v {
            Value::Null | Value::Bool(_) => {}
            Value::Number(n) => self.add_text(n.to_string()),
            Value::String(s) => self.add_text(s.clone()),
            Value::Array(a) => {
                if !self.compounds.contains(v) {
                    self.compounds.push(v.clone());
                }
                a.iter().for_each(|x| self.add(x));
            }
            Value::Object(o) => {
                if !self.compounds.contains(v) {
                    self.compounds.push(v.clone());
                }
                o.values().for_each(|x| self.add(x));
            }
        }
    }

    fn add_text(&mut self, t: String) {
        if t.is_empty() || t == MASK || self.texts.contains(&t) {
            return;
        }
        if t.chars().count() >= MIN_EMBEDDED_CHARS {
            let at = self.embedded.partition_point(|e| e.len() >= t.len());
            self.embedded.insert(at, t.clone());
        }
        self.texts.insert(t);
    }

    /// Mask every sensitive value in `v`, at any depth (the rule is in the
    /// module doc).
    pub fn mask(&self, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        let whole = match v {
            Value::Null | Value::Bool(_) => false,
            Value::Number(n) => self.texts.contains(&n.to_string()),
            Value::String(s) => {
                self.mask_text(s);
                false
            }
            Value::Array(_) | Value::Object(_) => self.compounds.contains(v),
        };
        if whole {
            *v = Value::String(MASK.into());
            return;
        }
        match v {
            Value::Array(a) => a.iter_mut().for_each(|x| self.mask(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.mask(x)),
            _ => {}
        }
    }

    /// [`Secrets::mask`] for a string held outside JSON (an error message).
    pub fn mask_text(&self, s: &mut String) {
        if self.texts.contains(s.as_str()) {
            *s = MASK.into();
            return;
        }
        for t in &self.embedded {
            if s.contains(t.as_str()) {
                *s = s.replace(t.as_str(), MASK);
            }
        }
    }

    fn mask_map(&self, m: &mut Map<String, Value>) {
        m.values_mut().for_each(|v| self.mask(v));
    }

    fn mask_error(&self, e: &mut ExecutionError) {
        self.mask_text(&mut e.message);
        if let Some(d) = e.details.as_mut() {
            self.mask(d);
        }
    }
}

/// Replace the values under `keys` in `outputs` by `"***"`, adding them to
/// `secrets`.
fn take_keys(outputs: &mut Map<String, Value>, keys: Option<&HashSet<String>>, s: &mut Secrets) {
    let Some(keys) = keys else { return };
    for (k, v) in outputs.iter_mut() {
        if keys.contains(k) && v != MASK {
            s.add(v);
            *v = Value::String(MASK.into());
        }
    }
}

/// Step 1 for an execution: mask its outputs' sensitive keys in place (step
/// rows, `context.stepOutputs`, `outputs`) and collect their values.
fn take_execution(e: &mut WorkflowExecution, keys: &Keys) -> Secrets {
    let mut s = Secrets::default();
    for st in e.step_executions.0.iter_mut() {
        if let Some(o) = st.outputs.as_mut() {
            take_keys(o, keys.for_step(&st.step_id), &mut s);
        }
    }
    for (step, o) in e.context.step_outputs.iter_mut() {
        take_keys(o, keys.for_step(step), &mut s);
    }
    for (step, o) in e.outputs.iter_mut().flatten() {
        if let Some(o) = o.as_object_mut() {
            take_keys(o, keys.for_step(step), &mut s);
        }
    }
    s
}

/// Step 2 for an execution: every free-form part (not ids, statuses, times).
fn mask_execution(e: &mut WorkflowExecution, s: &Secrets) {
    if s.is_empty() {
        return;
    }
    for st in e.step_executions.0.iter_mut() {
        s.mask_map(&mut st.inputs);
        if let Some(o) = st.outputs.as_mut() {
            s.mask_map(o);
        }
        if let Some(err) = st.error.as_mut() {
            s.mask_error(err);
        }
        for a in st.attempts.iter_mut() {
            if let Some(err) = a.error.as_mut() {
                s.mask_error(err);
            }
        }
    }
    s.mask_map(&mut e.context.variables);
    e.context
        .step_outputs
        .values_mut()
        .for_each(|o| s.mask_map(o));
    for m in [e.outputs.as_mut(), e.result.as_mut()]
        .into_iter()
        .flatten()
    {
        s.mask_map(m);
    }
    if let Some(err) = e.error.as_mut() {
        s.mask_error(err);
    }
    for entry in e.rollback_log.iter_mut().flatten() {
        s.mask_map(&mut entry.inputs);
        if let Some(err) = entry.error.as_mut() {
            s.mask_error(err);
        }
    }
    if let Some(r) = e.cancel_reason.as_mut() {
        s.mask_text(r);
    }
}

/// Step id → capability id of a workflow revision; `None` if it cannot be read.
async fn step_capabilities(
    store: &dyn Store,
    workflow_id: &str,
    revision: u64,
) -> Option<HashMap<String, String>> {
    match store.get_workflow(workflow_id, Some(revision)).await {
        Ok(Some(wf)) => Some(
            wf.steps
                .into_iter()
                .map(|st| (st.id, st.capability))
                .collect(),
        ),
        _ => None,
    }
}

/// An execution with the sensitive values of `idx` masked.
pub async fn execution(
    store: &dyn Store,
    idx: &SensitiveIndex,
    mut e: WorkflowExecution,
) -> WorkflowExecution {
    let caps = step_capabilities(store, &e.workflow_id, e.revision).await;
    let keys = Keys::of(idx, caps.as_ref(), &e);
    let secrets = take_execution(&mut e, &keys);
    mask_execution(&mut e, &secrets);
    e
}

/// Step 1 for an event's own payload: every `outputs` object in it — a
/// step's outputs next to its `stepId` (and `fallbackStep`), or a map of
/// outputs by step id as in `workflow:completed`.
fn take_payload(v: &mut Value, keys: &Keys, s: &mut Secrets) {
    match v {
        Value::Object(m) => {
            let step = |f: &str| m.get(f).and_then(Value::as_str).map(str::to_owned);
            let (step, fallback) = (step("stepId"), step("fallbackStep"));
            for (k, child) in m.iter_mut() {
                match child {
                    Value::Object(o) if k == "outputs" => {
                        // A step's outputs sit next to its `stepId`; without
                        // one they are outputs by step id. Without the
                        // revision (`Any`) the shape is a guess: try both.
                        let guess = matches!(keys, Keys::Any(_));
                        for st in step.iter().chain(&fallback) {
                            take_keys(o, keys.for_step(st), s);
                        }
                        if let Keys::Any(all) = keys {
                            take_keys(o, Some(all), s);
                        }
                        if step.is_none() || guess {
                            for (st, inner) in o.iter_mut() {
                                if let Value::Object(inner) = inner {
                                    take_keys(inner, keys.for_step(st), s);
                                }
                            }
                        }
                    }
                    _ => take_payload(child, keys, s),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| take_payload(x, keys, s)),
        _ => {}
    }
}

/// Step id → capability id of one workflow revision.
type StepCapabilities = Arc<HashMap<String, String>>;

/// What is known of one execution's sensitive values (cheap to clone).
#[derive(Clone)]
struct Known {
    keys: Arc<Keys>,
    secrets: Arc<Secrets>,
    /// Valid for the execution's events up to this seq: it was read after
    /// they were committed (an execution's state and events are committed
    /// together, so the read holds every value they could carry).
    as_of: u64,
    /// Finished (or gone): its values no longer change.
    settled: bool,
}

/// Executions (and revisions) remembered by one [`EventMasker`]; past this the
/// memory is dropped and rebuilt from the store.
const REMEMBERED: usize = 1024;

/// Masks events for one reader (a listing, an SSE stream, a webhook worker).
///
/// An event carries only part of what its execution knows: a later step's
/// `workflow:step_failed` may quote in its error message a value a former
/// step's `workflow:step_completed` marked sensitive. So an event of an
/// execution is masked with the sensitive values of that execution, read from
/// the store the first time one of its events is seen, and read again when a
/// later event (higher seq) of a still running execution comes; a finished
/// execution is read once. An execution that is not in the store (deleted by
/// retention) and events of no execution are masked by their own payload, with
/// every key any capability declares sensitive. When the store cannot be read,
/// the payload is replaced by `"***"` whole.
pub struct EventMasker {
    store: Arc<dyn Store>,
    registry: Registry,
    /// The index the memory below was built with.
    idx: Option<Arc<SensitiveIndex>>,
    /// Every sensitive key of `idx`, for payloads of no known execution.
    any: Arc<Keys>,
    executions: HashMap<String, Known>,
    /// Step id → capability id by (workflow, revision): revisions never change.
    revisions: HashMap<(String, u64), StepCapabilities>,
}

impl std::fmt::Debug for EventMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventMasker")
            .field("executions", &self.executions.len())
            .finish_non_exhaustive()
    }
}

impl EventMasker {
    pub fn new(store: Arc<dyn Store>, registry: Registry) -> Self {
        EventMasker {
            store,
            registry,
            idx: None,
            any: Arc::new(Keys::Any(HashSet::new())),
            executions: HashMap::new(),
            revisions: HashMap::new(),
        }
    }

    /// Whether anything is sensitive now; forgets what was learnt under
    /// other declarations.
    fn refresh_index(&mut self) -> bool {
        let idx = SensitiveIndex::from_registry(&self.registry);
        if idx.as_ref() != self.idx.as_deref() {
            self.executions.clear();
            self.any = Arc::new(Keys::Any(
                idx.as_ref().map(|i| i.all.clone()).unwrap_or_default(),
            ));
            self.idx = idx.map(Arc::new);
        }
        self.idx.is_some()
    }

    /// One event, as it comes (a stream, a webhook).
    pub async fn event(&mut self, e: ChoreographyEvent) -> ChoreographyEvent {
        if !self.refresh_index() {
            return e;
        }
        let seq = e.seq;
        self.mask(e, seq).await
    }

    /// A page of events, all committed before this call.
    pub async fn events(&mut self, events: Vec<ChoreographyEvent>) -> Vec<ChoreographyEvent> {
        if !self.refresh_index() {
            return events;
        }
        let as_of = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.mask(e, as_of).await);
        }
        out
    }

    /// `as_of`: every event up to this seq is committed.
    async fn mask(&mut self, mut e: ChoreographyEvent, as_of: u64) -> ChoreographyEvent {
        let Some(idx) = self.idx.clone() else {
            return e;
        };
        let known = match &e.execution_id {
            Some(id) => match self.known(&idx, id, e.seq, as_of).await {
                Some(k) => Some(k),
                None => {
                    e.payload = Value::String(MASK.into());
                    return e;
                }
            },
            None => None,
        };
        let keys = known.as_ref().map_or(&*self.any, |k| &*k.keys);
        let mut own = Secrets::default();
        take_payload(&mut e.payload, keys, &mut own);
        if let Some(k) = &known {
            k.secrets.mask(&mut e.payload);
        }
        own.mask(&mut e.payload);
        e
    }

    /// The execution's values, valid for its event `seq`; `None` if the
    /// store cannot be read.
    async fn known(
        &mut self,
        idx: &SensitiveIndex,
        id: &str,
        seq: u64,
        as_of: u64,
    ) -> Option<Known> {
        if let Some(k) = self.executions.get(id)
            && (k.settled || seq <= k.as_of)
        {
            return Some(k.clone());
        }
        let k = match self.store.get_execution(id).await {
            Ok(Some(mut x)) => {
                let caps = self.capabilities(&x.workflow_id, x.revision).await;
                let keys = Keys::of(idx, caps.as_deref(), &x);
                let secrets = take_execution(&mut x, &keys);
                Known {
                    keys: Arc::new(keys),
                    secrets: Arc::new(secrets),
                    as_of: as_of.max(seq),
                    settled: x.status.is_terminal(),
                }
            }
            Ok(None) => Known {
                keys: self.any.clone(),
                secrets: Arc::default(),
                as_of,
                settled: true,
            },
            Err(err) => {
                tracing::warn!(execution = %id, error = %err, "reading an execution to mask its events failed");
                return None;
            }
        };
        if self.executions.len() >= REMEMBERED {
            self.executions.clear();
        }
        self.executions.insert(id.to_owned(), k.clone());
        Some(k)
    }

    async fn capabilities(&mut self, workflow_id: &str, revision: u64) -> Option<StepCapabilities> {
        let key = (workflow_id.to_owned(), revision);
        if let Some(c) = self.revisions.get(&key) {
            return Some(c.clone());
        }
        // Not remembered when unreadable: that may pass (masking meanwhile
        // falls back to every declared key).
        let c = Arc::new(step_capabilities(&*self.store, workflow_id, revision).await?);
        if self.revisions.len() >= REMEMBERED {
            self.revisions.clear();
        }
        self.revisions.insert(key, c.clone());
        Some(c)
    }
}

#[cfg(test)]
mod tests;
