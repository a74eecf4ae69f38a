//! The execution state machine alone: transitions per second.
//!
//! `cargo bench -p maestro-core --bench machine`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use maestro_core::choreography::WorkflowPlan;
use maestro_core::machine::{Action, Env, ExecutionState, Input};
use maestro_core::model::{MaestroConfig, Workflow};
use serde_json::{Map, json};

struct BenchEnv(MaestroConfig);

impl Env for BenchEnv {
    fn now(&self) -> u64 {
        1_000
    }
    fn config(&self) -> &MaestroConfig {
        &self.0
    }
    fn jitter(&mut self, max: u64) -> u64 {
        max / 2
    }
    fn compensation_for(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

fn chain(n: usize) -> (Arc<Workflow>, Arc<WorkflowPlan>) {
    let steps: Vec<_> = (0..n)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "capability": "op", "inputs": {"x": "${x}"}});
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let w: Workflow =
        serde_json::from_value(json!({"id": "w", "name": "n", "steps": steps})).unwrap();
    let p = WorkflowPlan::new(&w).unwrap();
    (Arc::new(w), Arc::new(p))
}

fn fan(n: usize) -> (Arc<Workflow>, Arc<WorkflowPlan>) {
    let mut steps: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("p{i}"), "capability": "op"}))
        .collect();
    steps.push(json!({"id": "join", "capability": "op",
        "dependencies": (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>()}));
    let w: Workflow =
        serde_json::from_value(json!({"id": "f", "name": "n", "steps": steps})).unwrap();
    let p = WorkflowPlan::new(&w).unwrap();
    (Arc::new(w), Arc::new(p))
}

/// Run one execution to completion, answering every call with success.
fn run(w: &Arc<Workflow>, p: &Arc<WorkflowPlan>, env: &mut BenchEnv) -> usize {
    let mut inputs = Map::new();
    inputs.insert("x".into(), json!(1));
    let mut st = ExecutionState::new("e".into(), w.clone(), p.clone(), inputs, None, None, 1_000);
    let mut pending = st.apply(Input::Start, env);
    let mut transitions = 1;
    let outputs = json!({"v": 1}).as_object().unwrap().clone();
    while let Some(a) = pending.pop() {
        if let Action::Invoke(c) = a {
            let more = st.apply(
                Input::AttemptFinished {
                    step_id: c.step_id,
                    attempt: c.attempt,
                    agent_id: None,
                    outcome: Ok(outputs.clone()),
                },
                env,
            );
            transitions += 1;
            pending.extend(more);
        }
    }
    black_box(st.take_changes());
    transitions
}

fn bench(c: &mut Criterion) {
    let mut env = BenchEnv(MaestroConfig::default());
    let (w, p) = chain(10);
    let mut g = c.benchmark_group("machine");
    g.throughput(Throughput::Elements(11));
    g.bench_function("chain10_transitions", |b| b.iter(|| run(&w, &p, &mut env)));
    let (w, p) = fan(100);
    g.throughput(Throughput::Elements(102));
    g.bench_function("fanout100_transitions", |b| {
        b.iter(|| run(&w, &p, &mut env))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
