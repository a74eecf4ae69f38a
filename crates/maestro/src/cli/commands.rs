//! `agents`, `workflows`, `executions` and `tokens`.

use std::process::ExitCode;

use maestro_client::Error;
use maestro_client::client::{
    AgentQuery, ExecutionQuery, NewToken, Page, Paging, WorkflowFormat, WorkflowQuery,
};
use maestro_core::model::{
    AgentStatus, ExecutionStatus, RegisteredAgent, StepStatus, Workflow, WorkflowExecution,
};
use maestro_core::ports::TokenRecord;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::output::{self, Table, ago, block, duration, out, truncate, when};
use super::{AgentsCmd, CliError, Ctx, ExecutionsCmd, TokensCmd, WorkflowsCmd, read_input};

type CmdResult = Result<ExitCode, CliError>;

/// `{"success": true, <key>: value}`.
pub(crate) fn one<T: Serialize>(key: &str, value: &T) -> Value {
    let mut v = json!({"success": true});
    v[key] = serde_json::to_value(value).unwrap_or(Value::Null);
    v
}

/// `{"success": true, "count", "total", <key>: items}`.
pub(crate) fn list<T: Serialize>(key: &str, page: &Page<T>) -> Value {
    let mut v = json!({"success": true, "count": page.count, "total": page.total});
    v[key] = serde_json::to_value(&page.items).unwrap_or(Value::Null);
    v
}

fn message(ctx: &Ctx, msg: &str) -> CmdResult {
    if ctx.json {
        output::json(&json!({"success": true, "message": msg}));
    } else {
        out(msg);
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a table, or say on stderr that there is nothing; and that more
/// items match than were shown.
fn print_table(t: &Table, what: &str, count: usize, total: usize) {
    if t.is_empty() {
        eprintln!("no {what}");
    } else {
        out(&t.render());
    }
    if total > count {
        eprintln!("(showing {count} of {total}; use --limit and --offset for more)");
    }
}

// ------------------------------------------------------------------ agents

pub(crate) async fn agents(ctx: &Ctx, cmd: AgentsCmd) -> CmdResult {
    match cmd {
        AgentsCmd::Ls {
            types,
            status,
            capabilities,
            limit,
            offset,
        } => {
            let status = status
                .iter()
                .map(|s| match s.as_str() {
                    "online" => Ok(AgentStatus::Online),
                    "offline" => Ok(AgentStatus::Offline),
                    "degraded" => Ok(AgentStatus::Degraded),
                    other => Err(CliError::Usage(format!(
                        "unknown status {other:?} (online, offline, degraded)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let page = ctx
                .client
                .list_agents(&AgentQuery {
                    types,
                    status,
                    capabilities,
                    tags: Vec::new(),
                    limit,
                    offset,
                })
                .await?;
            if ctx.json {
                output::json(&list("agents", &page));
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "ID",
                "TYPE",
                "STATUS",
                "TRANSPORT",
                "CAPABILITIES",
                "HEARTBEAT",
            ]);
            for a in &page.items {
                let caps: Vec<&str> = a.capabilities.iter().map(|c| c.id.as_str()).collect();
                t.row(vec![
                    a.id.clone(),
                    a.agent_type.clone(),
                    agent_status(a),
                    transport(a),
                    truncate(&caps.join(","), 48),
                    ago(a.last_heartbeat),
                ]);
            }
            print_table(&t, "agents", page.count, page.total);
            Ok(ExitCode::SUCCESS)
        }
        AgentsCmd::Get { id } => {
            let a = ctx.client.get_agent(&id).await?;
            if ctx.json {
                output::json(&one("agent", &a));
                return Ok(ExitCode::SUCCESS);
            }
            let mut s = block(&[
                ("id", a.id.clone()),
                ("type", a.agent_type.clone()),
                ("name", a.name.clone()),
                ("description", a.description.clone()),
                ("status", agent_status(&a)),
                ("transport", transport(&a)),
                ("endpoint", a.endpoint.clone().unwrap_or_default()),
                (
                    "max concurrency",
                    a.max_concurrency.map(|m| m.to_string()).unwrap_or_default(),
                ),
                ("last heartbeat", when(a.last_heartbeat)),
                ("public key", a.public_key.clone()),
                (
                    "metadata",
                    if a.metadata.is_empty() {
                        String::new()
                    } else {
                        Value::Object(a.metadata.clone()).to_string()
                    },
                ),
            ]);
            if !a.capabilities.is_empty() {
                let mut t = Table::new(&["CAPABILITY", "VERSION", "INPUTS", "OUTPUTS", "TAGS"]);
                for c in &a.capabilities {
                    let mut id = c.id.clone();
                    if c.deprecated {
                        id.push_str(" (deprecated)");
                    }
                    t.row(vec![
                        id,
                        c.version.clone(),
                        truncate(&spec(&c.inputs.0), 40),
                        truncate(&spec(&c.outputs.0), 40),
                        c.tags.join(","),
                    ]);
                }
                s.push('\n');
                s.push_str(&t.render());
            }
            out(&s);
            Ok(ExitCode::SUCCESS)
        }
        AgentsCmd::Rm { id } => {
            let m = ctx.client.delete_agent(&id).await?;
            message(ctx, &m)
        }
    }
}

fn agent_status(a: &RegisteredAgent) -> String {
    if a.status_hold {
        format!("{} (hold)", a.status.as_str())
    } else {
        a.status.as_str().to_owned()
    }
}

fn transport(a: &RegisteredAgent) -> String {
    serde_json::to_value(a.effective_transport())
        .ok()
        .as_ref()
        .map(output::compact)
        .unwrap_or_default()
}

/// `{"data": "string"}` as `data:string`.
fn spec(m: &Map<String, Value>) -> String {
    m.iter()
        .map(|(k, v)| match v {
            Value::String(t) => format!("{k}:{t}"),
            _ => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

// --------------------------------------------------------------- workflows

pub(crate) async fn workflows(ctx: &Ctx, cmd: WorkflowsCmd) -> CmdResult {
    match cmd {
        WorkflowsCmd::Apply { file } => apply(ctx, &file).await,
        WorkflowsCmd::Ls {
            tags,
            limit,
            offset,
        } => {
            let page = ctx
                .client
                .list_workflows(&WorkflowQuery {
                    tags,
                    limit,
                    offset,
                })
                .await?;
            if ctx.json {
                output::json(&list("workflows", &page));
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "NAME", "REVISION", "STEPS", "ON ERROR", "UPDATED"]);
            for w in &page.items {
                t.row(vec![
                    w.id.clone(),
                    truncate(&w.name, 40),
                    w.revision.to_string(),
                    w.steps.len().to_string(),
                    on_error(w),
                    ago(w.updated_at),
                ]);
            }
            print_table(&t, "workflows", page.count, page.total);
            Ok(ExitCode::SUCCESS)
        }
        WorkflowsCmd::Get { id, revision } => {
            let w = ctx.client.get_workflow(&id, revision).await?;
            if ctx.json {
                output::json(&one("workflow", &w));
                return Ok(ExitCode::SUCCESS);
            }
            out(&workflow_text(&w));
            Ok(ExitCode::SUCCESS)
        }
        WorkflowsCmd::Rm { id } => {
            let m = ctx.client.delete_workflow(&id).await?;
            message(ctx, &m)
        }
    }
}

fn on_error(w: &Workflow) -> String {
    serde_json::to_value(w.on_error)
        .ok()
        .as_ref()
        .map(output::compact)
        .unwrap_or_default()
}

fn workflow_text(w: &Workflow) -> String {
    let map_line = |m: &Map<String, Value>| {
        if m.is_empty() {
            String::new()
        } else {
            Value::Object(m.clone()).to_string()
        }
    };
    let mut s = block(&[
        ("id", w.id.clone()),
        ("name", w.name.clone()),
        ("description", w.description.clone()),
        ("version", w.version.clone()),
        ("revision", w.revision.to_string()),
        ("on error", on_error(w)),
        (
            "max duration",
            w.max_duration.map(duration).unwrap_or_default(),
        ),
        ("tags", w.tags.join(", ")),
        ("initial inputs", map_line(&w.initial_inputs)),
        ("expected outputs", map_line(&w.expected_outputs)),
        ("created", when(w.created_at)),
        ("updated", when(w.updated_at)),
        ("created by", w.created_by.clone()),
    ]);
    let mut t = Table::new(&["STEP", "CAPABILITY", "AGENT", "DEPENDS ON", "CONDITION"]);
    for st in &w.steps {
        t.row(vec![
            st.id.clone(),
            st.capability.clone(),
            st.agent_id.clone().unwrap_or_else(|| "(any)".into()),
            st.dependencies.join(","),
            if st.condition.is_some() { "yes" } else { "" }.to_owned(),
        ]);
    }
    s.push('\n');
    s.push_str(&t.render());
    s
}

/// Server-kept keys of a workflow: never part of what `apply` patches.
const SERVER_KEPT: [&str; 4] = ["createdAt", "updatedAt", "revision", "createdBy"];

/// `workflows apply -f FILE`: POST; on 409, make the stored workflow equal to
/// the file with one merge patch (keys the file lacks are removed), unless
/// nothing differs.
async fn apply(ctx: &Ctx, file: &std::path::Path) -> CmdResult {
    let text = read_input(file)?;
    let format = if file == std::path::Path::new("-") {
        if text.trim_start().starts_with('{') {
            WorkflowFormat::Json
        } else {
            WorkflowFormat::Yaml
        }
    } else {
        WorkflowFormat::from_path(file)
    };
    let doc: Value = match format {
        WorkflowFormat::Json => serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: not valid JSON: {e}", file.display())))?,
        WorkflowFormat::Yaml => serde_norway::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: not valid YAML: {e}", file.display())))?,
    };
    if !doc.is_object() {
        return Err(CliError::Usage(format!(
            "{}: a workflow document is an object with id, name and steps",
            file.display()
        )));
    }
    let (verb, wf) = match ctx.client.define_workflow_text(&text, format).await {
        Ok(wf) => ("created", wf),
        Err(Error::Api { status: 409, .. }) => {
            let id = doc["id"].as_str().unwrap_or_default();
            let current = ctx.client.get_workflow(id, None).await?;
            if same_workflow(&doc, &current) {
                ("unchanged", current)
            } else {
                let current_doc = serde_json::to_value(&current).unwrap_or(Value::Null);
                let mut patch = replace_patch(&current_doc, &doc);
                if let Some(p) = patch.as_object_mut() {
                    for k in SERVER_KEPT.iter().chain(["id"].iter()) {
                        p.remove(*k);
                    }
                }
                ("updated", ctx.client.update_workflow(id, &patch).await?)
            }
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        output::json(&one("workflow", &wf));
    } else {
        out(&format!(
            "workflow {} {verb} (revision {})",
            wf.id, wf.revision
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the file's workflow is the stored one, server-kept fields aside.
fn same_workflow(doc: &Value, current: &Workflow) -> bool {
    let Ok(mut w) = serde_json::from_value::<Workflow>(doc.clone()) else {
        return false;
    };
    w.created_at = current.created_at;
    w.updated_at = current.updated_at;
    w.revision = current.revision;
    w.created_by = current.created_by.clone();
    &w == current
}

/// The merge patch (RFC 7386) that turns `current` into `desired`: keys of
/// `current` that `desired` lacks become `null` (server-kept ones aside, at
/// the top), nested objects recurse, anything else is replaced.
fn replace_patch(current: &Value, desired: &Value) -> Value {
    fn go(current: &Value, desired: &Value, top: bool) -> Value {
        match (current, desired) {
            (Value::Object(c), Value::Object(d)) => {
                let mut p = Map::new();
                for (k, cv) in c {
                    if top && SERVER_KEPT.contains(&k.as_str()) {
                        continue;
                    }
                    match d.get(k) {
                        None => {
                            p.insert(k.clone(), Value::Null);
                        }
                        Some(dv) if dv == cv => {}
                        Some(dv) => {
                            p.insert(k.clone(), go(cv, dv, false));
                        }
                    }
                }
                for (k, dv) in d {
                    if !c.contains_key(k) && !dv.is_null() {
                        p.insert(k.clone(), dv.clone());
                    }
                }
                Value::Object(p)
            }
            (_, d) => d.clone(),
        }
    }
    go(current, desired, true)
}

// -------------------------------------------------------------- executions

pub(crate) async fn executions(ctx: &Ctx, cmd: ExecutionsCmd) -> CmdResult {
    match cmd {
        ExecutionsCmd::Ls {
            workflow,
            status,
            limit,
            offset,
        } => {
            let status = status
                .iter()
                .map(|s| {
                    ExecutionStatus::parse(s).ok_or_else(|| {
                        CliError::Usage(format!(
                            "unknown status {s:?} (pending, running, paused, completed, failed, rolled_back, cancelled)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let page = ctx
                .client
                .list_executions(&ExecutionQuery {
                    workflow_id: workflow,
                    status,
                    limit,
                    offset,
                    ..Default::default()
                })
                .await?;
            if ctx.json {
                output::json(&list("executions", &page));
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "ID", "WORKFLOW", "REVISION", "STATUS", "STEPS", "CREATED", "DURATION",
            ]);
            for e in &page.items {
                t.row(vec![
                    e.id.clone(),
                    e.workflow_id.clone(),
                    e.revision.to_string(),
                    e.status.as_str().to_owned(),
                    steps_done(e),
                    ago(e.created_at),
                    e.duration().map(duration).unwrap_or_default(),
                ]);
            }
            print_table(&t, "executions", page.count, page.total);
            Ok(ExitCode::SUCCESS)
        }
        ExecutionsCmd::Get { id } => {
            let e = ctx.client.get_execution(&id).await?;
            if ctx.json {
                output::json(&one("execution", &e));
            } else {
                out(&execution_text(&e));
            }
            Ok(ExitCode::SUCCESS)
        }
        ExecutionsCmd::Cancel { id, reason } => {
            let e = ctx.client.cancel_execution(&id, reason.as_deref()).await?;
            changed(ctx, &e)
        }
        ExecutionsCmd::Pause { id } => {
            let e = ctx.client.pause_execution(&id).await?;
            changed(ctx, &e)
        }
        ExecutionsCmd::Resume { id } => {
            let e = ctx.client.resume_execution(&id).await?;
            changed(ctx, &e)
        }
    }
}

fn changed(ctx: &Ctx, e: &WorkflowExecution) -> CmdResult {
    if ctx.json {
        output::json(&one("execution", e));
    } else {
        out(&format!("execution {}: {}", e.id, e.status.as_str()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `finished/total` steps.
fn steps_done(e: &WorkflowExecution) -> String {
    let done = e
        .step_executions
        .iter()
        .filter(|s| {
            matches!(
                s.status,
                StepStatus::Completed | StepStatus::Skipped | StepStatus::Compensated
            )
        })
        .count();
    format!("{done}/{}", e.step_executions.len())
}

/// An execution as a `key: value` block, its steps as a table, then its
/// result.
pub(crate) fn execution_text(e: &WorkflowExecution) -> String {
    let error = e
        .error
        .as_ref()
        .map(|er| {
            let step = er
                .step_id
                .as_ref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default();
            format!("{}: {}{step}", er.code, er.message)
        })
        .unwrap_or_default();
    let mut s = block(&[
        ("id", e.id.clone()),
        (
            "workflow",
            format!("{} (revision {})", e.workflow_id, e.revision),
        ),
        ("status", e.status.as_str().to_owned()),
        ("correlation", e.context.correlation_id.clone()),
        (
            "parent",
            e.context.parent_execution_id.clone().unwrap_or_default(),
        ),
        ("created", when(e.created_at)),
        ("started", e.started_at.map(when).unwrap_or_default()),
        ("completed", e.completed_at.map(when).unwrap_or_default()),
        ("duration", e.duration().map(duration).unwrap_or_default()),
        ("error", error),
        ("cancel reason", e.cancel_reason.clone().unwrap_or_default()),
    ]);
    let mut t = Table::new(&["STEP", "STATUS", "AGENT", "ATTEMPTS", "DURATION", "ERROR"]);
    for st in e.step_executions.iter() {
        t.row(vec![
            st.step_id.clone(),
            st.status.as_str().to_owned(),
            st.agent_id.clone().unwrap_or_default(),
            st.attempts.len().to_string(),
            st.duration.map(duration).unwrap_or_default(),
            st.error
                .as_ref()
                .map(|er| truncate(&format!("{}: {}", er.code, er.message), 60))
                .unwrap_or_default(),
        ]);
    }
    s.push('\n');
    s.push_str(&t.render());
    if let Some(log) = &e.rollback_log
        && !log.is_empty()
    {
        let mut t = Table::new(&["ROLLBACK STEP", "ACTION", "CAPABILITY", "STATUS"]);
        for r in log {
            t.row(vec![
                r.step_id.clone(),
                r.action.clone(),
                r.rollback_capability.clone().unwrap_or_default(),
                serde_json::to_value(r.status)
                    .ok()
                    .as_ref()
                    .map(output::compact)
                    .unwrap_or_default(),
            ]);
        }
        s.push('\n');
        s.push_str(&t.render());
    }
    if let Some(r) = &e.result {
        s.push_str("\nresult:\n");
        s.push_str(&indent(
            &serde_json::to_string_pretty(&Value::Object(r.clone())).unwrap_or_default(),
        ));
    }
    s
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

// ------------------------------------------------------------------ tokens

pub(crate) async fn tokens(ctx: &Ctx, cmd: TokensCmd) -> CmdResult {
    match cmd {
        TokensCmd::Create {
            role,
            agent,
            name,
            expires_in,
        } => {
            let created = ctx
                .client
                .create_token(&NewToken {
                    role,
                    agent_id: agent,
                    name,
                    expires_at: expires_in.map(|d| output::now_ms() + d.as_millis() as u64),
                })
                .await?;
            if ctx.json {
                let mut v = one("token", &created.token);
                v["secret"] = json!(created.secret);
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let t = &created.token;
            out(&block(&[
                ("id", t.id.clone()),
                ("role", t.role.clone()),
                ("agent", t.agent_id.clone().unwrap_or_default()),
                ("name", t.name.clone()),
                ("expires", t.expires_at.map(when).unwrap_or_default()),
                ("secret", created.secret.clone()),
            ]));
            eprintln!("(the secret is shown only once: keep it now)");
            Ok(ExitCode::SUCCESS)
        }
        TokensCmd::Ls { limit, offset } => {
            let page = ctx.client.list_tokens(Paging { limit, offset }).await?;
            if ctx.json {
                output::json(&list("tokens", &page));
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "ROLE", "AGENT", "NAME", "CREATED", "EXPIRES", "STATE"]);
            for tok in &page.items {
                t.row(vec![
                    tok.id.clone(),
                    tok.role.clone(),
                    tok.agent_id.clone().unwrap_or_default(),
                    tok.name.clone(),
                    ago(tok.created_at),
                    tok.expires_at.map(output::time).unwrap_or_default(),
                    token_state(tok),
                ]);
            }
            print_table(&t, "tokens", page.count, page.total);
            Ok(ExitCode::SUCCESS)
        }
        TokensCmd::Revoke { id } => {
            let m = ctx.client.revoke_token(&id).await?;
            message(ctx, &m)
        }
    }
}

fn token_state(t: &TokenRecord) -> String {
    if t.revoked_at.is_some() {
        "revoked".into()
    } else if t.expires_at.is_some_and(|e| e <= output::now_ms()) {
        "expired".into()
    } else {
        "active".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_patch_removes_what_the_file_lacks() {
        let current = json!({
            "id": "w", "name": "old", "description": "d", "tags": ["a"],
            "initialInputs": {"x": 1, "y": 2}, "steps": [{"id": "s"}],
            "revision": 3, "createdAt": 1, "updatedAt": 2, "createdBy": "admin"
        });
        let desired = json!({
            "id": "w", "name": "new", "initialInputs": {"x": 1, "z": 3},
            "steps": [{"id": "s"}, {"id": "t"}], "onError": "rollback"
        });
        let p = replace_patch(&current, &desired);
        assert_eq!(
            p,
            json!({
                "name": "new", "description": null, "tags": null,
                "initialInputs": {"y": null, "z": 3},
                "steps": [{"id": "s"}, {"id": "t"}], "onError": "rollback"
            })
        );
        let mut applied = current.clone();
        maestro_core::model::merge_patch(&mut applied, &p);
        for k in ["name", "initialInputs", "steps", "onError"] {
            assert_eq!(applied[k], desired[k], "{k}");
        }
        assert!(applied.get("tags").is_none());
        assert_eq!(applied["revision"], 3);
    }
}
