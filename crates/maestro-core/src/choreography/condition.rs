//! Step conditions: structured comparisons and logic, or CEL. Nothing is `eval`ed.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::budget::CelBudget;
use super::cel::{self, Program};
use super::scope::Scope;
use crate::model::{CompareOp, ExecutionCondition, LogicalOp};

/// A condition that could not be evaluated (a CEL error or a non-bool result, or a
/// condition that validation would have refused). The step fails with
/// `CONDITION_ERROR`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    pub message: String,
}

impl ConditionError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConditionError {
            message: message.into(),
        }
    }
}

/// Deepest condition tree evaluated at all (validation allows far less by default);
/// it only keeps an unvalidated, hand-built tree from exhausting the stack.
const MAX_EVAL_DEPTH: usize = 256;

/// Evaluate a condition, compiling any CEL on the fly (a
/// [`WorkflowPlan`](super::WorkflowPlan) caches the compiled programs instead), under
/// the default [`CelBudget`].
pub fn evaluate_condition(
    c: &ExecutionCondition,
    scope: &Scope<'_>,
) -> Result<bool, ConditionError> {
    let budget = CelBudget::default();
    evaluate_with(c, scope, &|expression| {
        let program = cel::compile(expression)
            .map_err(|e| ConditionError::new(format!("invalid CEL expression: {e}")))?;
        cel::evaluate(&program, scope, &budget)
    })
}

/// Evaluate with `run_cel` answering the `expression` nodes.
pub(crate) fn evaluate_with(
    c: &ExecutionCondition,
    scope: &Scope<'_>,
    run_cel: &dyn Fn(&str) -> Result<bool, ConditionError>,
) -> Result<bool, ConditionError> {
    eval(c, scope, run_cel, 1)
}

fn eval(
    c: &ExecutionCondition,
    scope: &Scope<'_>,
    run_cel: &dyn Fn(&str) -> Result<bool, ConditionError>,
    depth: usize,
) -> Result<bool, ConditionError> {
    if depth > MAX_EVAL_DEPTH {
        return Err(ConditionError::new(format!(
            "condition nests deeper than {MAX_EVAL_DEPTH} levels"
        )));
    }
    match c {
        ExecutionCondition::Comparison {
            variable,
            operator,
            value,
        } => Ok(compare(
            scope.resolve(variable).as_deref(),
            *operator,
            value,
        )),
        ExecutionCondition::Logical {
            operator,
            conditions,
        } => match operator {
            LogicalOp::And | LogicalOp::Or if conditions.is_empty() => Err(ConditionError::new(
                "a logical and/or condition needs at least one condition",
            )),
            LogicalOp::And => {
                for sub in conditions {
                    if !eval(sub, scope, run_cel, depth + 1)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            LogicalOp::Or => {
                for sub in conditions {
                    if eval(sub, scope, run_cel, depth + 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            LogicalOp::Not => match conditions.as_slice() {
                [only] => Ok(!eval(only, scope, run_cel, depth + 1)?),
                _ => Err(ConditionError::new(
                    "a logical not condition needs exactly one condition",
                )),
            },
        },
        ExecutionCondition::Expression { expression } => run_cel(expression),
        ExecutionCondition::Unsupported { type_name } => Err(ConditionError::new(format!(
            "unsupported condition type {type_name:?}"
        ))),
        ExecutionCondition::Malformed { message, .. } => Err(ConditionError::new(format!(
            "malformed condition: {message}"
        ))),
    }
}

/// A comparison. A missing variable or a type mismatch is `false`, for every operator
/// (`neq` and `not_in` included).
pub(crate) fn compare(actual: Option<&Value>, op: CompareOp, expected: &Value) -> bool {
    if op == CompareOp::Exists {
        return match expected {
            Value::Bool(true) | Value::Null => actual.is_some(),
            Value::Bool(false) => actual.is_none(),
            _ => false,
        };
    }
    let Some(actual) = actual else {
        return false;
    };
    match op {
        CompareOp::Eq => json_eq(actual, expected),
        CompareOp::Neq => same_type(actual, expected) && !json_eq(actual, expected),
        CompareOp::Gt => ordering(actual, expected) == Some(Ordering::Greater),
        CompareOp::Gte => matches!(
            ordering(actual, expected),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        CompareOp::Lt => ordering(actual, expected) == Some(Ordering::Less),
        CompareOp::Lte => matches!(
            ordering(actual, expected),
            Some(Ordering::Less | Ordering::Equal)
        ),
        CompareOp::In => match expected {
            Value::Array(items) => items.iter().any(|item| json_eq(actual, item)),
            _ => false,
        },
        CompareOp::NotIn => match expected {
            Value::Array(items) => !items.iter().any(|item| json_eq(actual, item)),
            _ => false,
        },
        CompareOp::Contains => match (actual, expected) {
            (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
            (Value::Array(items), _) => items.iter().any(|item| json_eq(item, expected)),
            (Value::Object(m), Value::String(key)) => m.contains_key(key),
            _ => false,
        },
        CompareOp::Exists => false,
    }
}

/// Deep JSON equality; numbers compare numerically (`1 == 1.0`), object key order is
/// irrelevant.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y) == Some(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Order of two numbers or two strings; anything else does not compare.
fn ordering(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Integers compare exactly (all of i64 and u64); anything with a fraction as f64.
fn number_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// The compiled CEL programs of one condition tree, keyed by expression text.
pub(crate) type Programs = Vec<(String, Result<std::sync::Arc<Program>, String>)>;

/// Compile every `expression` node of a condition tree (depth-bounded).
pub(crate) fn compile_all(c: &ExecutionCondition, out: &mut Programs, depth: usize) {
    if depth > MAX_EVAL_DEPTH {
        return;
    }
    match c {
        ExecutionCondition::Expression { expression } => {
            if !out.iter().any(|(e, _)| e == expression) {
                let program = cel::compile(expression).map(std::sync::Arc::new);
                out.push((expression.clone(), program));
            }
        }
        ExecutionCondition::Logical { conditions, .. } => {
            for sub in conditions {
                compile_all(sub, out, depth + 1);
            }
        }
        ExecutionCondition::Comparison { .. }
        | ExecutionCondition::Unsupported { .. }
        | ExecutionCondition::Malformed { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn cond(v: Value) -> ExecutionCondition {
        serde_json::from_value(v).expect("condition")
    }

    fn check(vars: &Value, c: Value) -> Result<bool, ConditionError> {
        let layer = obj(vars.clone());
        let scope = Scope {
            layers: vec![&layer],
            ..Scope::default()
        };
        evaluate_condition(&cond(c), &scope)
    }

    fn cmp(var: &str, op: &str, value: Value) -> Value {
        json!({"type": "comparison", "variable": var, "operator": op, "value": value})
    }

    #[test]
    fn comparison_operators() {
        let vars = json!({"n": 5, "f": 5.0, "big": u64::MAX, "s": "beta", "b": true,
            "nil": null, "list": [1, "two", {"k": 3}], "o": {"k": 1, "j": [1]}});
        let cases = [
            ("n", "eq", json!(5), true),
            ("n", "eq", json!(5.0), true),
            ("f", "eq", json!(5), true),
            ("o", "eq", json!({"j": [1.0], "k": 1}), true),
            ("n", "eq", json!("5"), false),
            ("missing", "eq", Value::Null, false),
            ("nil", "eq", Value::Null, true),
            ("n", "neq", json!(6), true),
            ("n", "neq", json!(5), false),
            ("n", "neq", json!("6"), false),
            ("missing", "neq", json!(1), false),
            ("n", "gt", json!(4.5), true),
            ("n", "gt", json!(5), false),
            ("big", "gt", json!(u64::MAX - 1), true),
            ("s", "gt", json!("alpha"), true),
            ("s", "gt", json!(1), false),
            ("n", "gte", json!(5), true),
            ("n", "gte", json!(6), false),
            ("n", "lt", json!(6), true),
            ("s", "lt", json!("alpha"), false),
            ("n", "lte", json!(5), true),
            ("missing", "lte", json!(5), false),
            ("b", "gt", json!(false), false),
            ("n", "in", json!([1, 5.0]), true),
            ("n", "in", json!([1, 2]), false),
            ("n", "in", json!(5), false),
            ("missing", "in", json!([null]), false),
            ("n", "not_in", json!([1, 2]), true),
            ("n", "not_in", json!([5]), false),
            ("n", "not_in", json!("5"), false),
            ("missing", "not_in", json!([1]), false),
            ("n", "exists", json!(true), true),
            ("nil", "exists", Value::Null, true),
            ("missing", "exists", json!(true), false),
            ("missing", "exists", json!(false), true),
            ("n", "exists", json!(false), false),
            ("n", "exists", json!("yes"), false),
            ("s", "contains", json!("et"), true),
            ("s", "contains", json!("x"), false),
            ("list", "contains", json!({"k": 3.0}), true),
            ("list", "contains", json!("two"), true),
            ("list", "contains", json!(2), false),
            ("o", "contains", json!("k"), true),
            ("o", "contains", json!("z"), false),
            ("n", "contains", json!(5), false),
            ("missing", "contains", json!("a"), false),
            ("list.2.k", "eq", json!(3), true),
        ];
        for (var, op, value, want) in cases {
            let got = check(&vars, cmp(var, op, value.clone()));
            assert_eq!(got, Ok(want), "{var} {op} {value}");
        }
    }

    #[test]
    fn logical_operators() {
        let vars = json!({"a": 1});
        let t = cmp("a", "eq", json!(1));
        let f = cmp("a", "eq", json!(2));
        let and = |cs: Vec<Value>| json!({"type": "logical", "operator": "and", "conditions": cs});
        let or = |cs: Vec<Value>| json!({"type": "logical", "operator": "or", "conditions": cs});
        let not = |cs: Vec<Value>| json!({"type": "logical", "operator": "not", "conditions": cs});
        assert_eq!(check(&vars, and(vec![t.clone(), t.clone()])), Ok(true));
        assert_eq!(check(&vars, and(vec![t.clone(), f.clone()])), Ok(false));
        assert_eq!(check(&vars, or(vec![f.clone(), t.clone()])), Ok(true));
        assert_eq!(check(&vars, or(vec![f.clone(), f.clone()])), Ok(false));
        assert_eq!(check(&vars, not(vec![f.clone()])), Ok(true));
        assert_eq!(
            check(&vars, not(vec![and(vec![t.clone(), f.clone()])])),
            Ok(true)
        );
        assert!(check(&vars, not(vec![t.clone(), f.clone()])).is_err());
        assert!(check(&vars, and(vec![])).is_err());
        // Short circuit: the failing CEL after a false is never evaluated.
        let boom = json!({"type": "expression", "expression": "1 + 1"});
        assert_eq!(check(&vars, and(vec![f.clone(), boom.clone()])), Ok(false));
        assert!(check(&vars, and(vec![t.clone(), boom])).is_err());
        let js = json!({"type": "javascript", "code": "true"});
        assert!(check(&vars, js).is_err());
    }

    #[test]
    fn cel_expressions() {
        let vars = json!({"amount": 150, "user": {"role": "admin"}});
        let expr = |e: &str| json!({"type": "expression", "expression": e});
        assert_eq!(
            check(&vars, expr("amount > 100 && user.role == 'admin'")),
            Ok(true)
        );
        assert_eq!(check(&vars, expr("amount < 100")), Ok(false));
        assert_eq!(
            check(&vars, expr("execution.id == '' && size(steps) == 0")),
            Ok(true)
        );
        let e = check(&vars, expr("amount + 1")).expect_err("non-bool");
        assert!(e.message.contains("bool"), "{e}");
        assert!(check(&vars, expr("missing > 1")).is_err());
        assert!(check(&vars, expr("amount >")).is_err());
        assert!(check(&vars, expr("amount.all(x, true)")).is_err());
    }

    #[test]
    fn deep_hand_built_tree_is_refused_not_overflowed() {
        let mut c = ExecutionCondition::Comparison {
            variable: "a".into(),
            operator: CompareOp::Exists,
            value: Value::Null,
        };
        for _ in 0..10_000 {
            c = ExecutionCondition::Logical {
                operator: LogicalOp::Not,
                conditions: vec![c],
            };
        }
        let scope = Scope::default();
        assert!(evaluate_condition(&c, &scope).is_err());
        let mut programs = Programs::new();
        compile_all(&c, &mut programs, 1);
        // Dropping a 10k-deep tree recurses too; unwrap it iteratively.
        let mut cur = c;
        while let ExecutionCondition::Logical { mut conditions, .. } = cur {
            match conditions.pop() {
                Some(next) => cur = next,
                None => break,
            }
        }
    }
}
