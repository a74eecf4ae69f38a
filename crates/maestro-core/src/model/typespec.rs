//! Checking step inputs (and outputs) against a capability's declarations.
//!
//! Two forms are accepted (API.md "Agents"): the original's simple map
//! `field -> type` (`string number integer boolean object array any`, suffix `?`
//! = optional), or a JSON Schema object. For JSON Schema the checked subset is
//! `type` (string or array of names, `null` included), `required`, `properties`
//! (recursively), `items`, `enum` and `const`; other keywords are accepted and
//! not enforced. Inputs the spec does not declare are passed through.

use serde_json::{Map, Value};

use super::TypeSpec;

const SIMPLE_TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "any",
];

impl TypeSpec {
    /// Whether the map is a JSON Schema rather than a simple type map.
    pub fn is_json_schema(&self) -> bool {
        let m = &self.0;
        matches!(m.get("type"), Some(Value::String(t)) if t == "object")
            || m.contains_key("properties")
            || m.contains_key("$schema")
            || matches!(m.get("required"), Some(Value::Array(_)))
    }

    /// Check a declaration is well formed (used when an agent registers).
    pub fn validate(&self) -> Result<(), String> {
        if self.is_json_schema() {
            return Ok(());
        }
        for (field, ty) in &self.0 {
            let Value::String(t) = ty else {
                return Err(format!(
                    "type of {field:?} must be a string such as \"string\""
                ));
            };
            let base = t.strip_suffix('?').unwrap_or(t);
            if !SIMPLE_TYPES.contains(&base) {
                return Err(format!(
                    "unknown type {t:?} for {field:?}: expected one of {} (suffix ? = optional)",
                    SIMPLE_TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Check `inputs` against the declaration; the message names the field.
    pub fn check(&self, inputs: &Map<String, Value>) -> Result<(), String> {
        self.check_as(inputs, "input")
    }

    /// Check a step's `outputs` against the declared outputs.
    pub fn check_outputs(&self, outputs: &Map<String, Value>) -> Result<(), String> {
        self.check_as(outputs, "output")
    }

    /// `noun` (`input` / `output`) names what is checked in the messages.
    fn check_as(&self, inputs: &Map<String, Value>, noun: &str) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        if self.is_json_schema() {
            return check_schema(
                &Value::Object(self.0.clone()),
                &Value::Object(inputs.clone()),
                "",
                0,
                noun,
            );
        }
        for (field, ty) in &self.0 {
            let Value::String(t) = ty else { continue };
            let (base, optional) = match t.strip_suffix('?') {
                Some(b) => (b, true),
                None => (t.as_str(), false),
            };
            match inputs.get(field) {
                None | Some(Value::Null) if optional => {}
                None => return Err(format!("missing required {noun} {field:?} ({base})")),
                Some(v) => {
                    if !simple_type_matches(base, v) {
                        return Err(format!(
                            "{noun} {field:?} must be {base}, got {}",
                            type_name(v)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn simple_type_matches(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true, // "any"
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_schema(
    schema: &Value,
    v: &Value,
    path: &str,
    depth: usize,
    noun: &str,
) -> Result<(), String> {
    let Value::Object(s) = schema else {
        return Ok(()); // `true` / non-object schemas accept anything
    };
    if depth > 64 {
        return Ok(());
    }
    let at = if path.is_empty() {
        format!("{noun}s")
    } else {
        format!("{noun} {path:?}")
    };
    match s.get("type") {
        Some(Value::String(t)) if !simple_type_matches(t, v) => {
            return Err(format!("{at} must be {t}, got {}", type_name(v)));
        }
        Some(Value::Array(ts)) => {
            let ok = ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| simple_type_matches(t, v));
            if !ok {
                return Err(format!("{at} has type {}, not one of {ts:?}", type_name(v)));
            }
        }
        _ => {}
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        return Err(format!(
            "{at} must be one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return Err(format!("{at} must be {c}"));
    }
    if let Value::Object(obj) = v {
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    let p = join(path, r);
                    return Err(format!("missing required {noun} {p:?}"));
                }
            }
        }
        if let Some(Value::Object(props)) = s.get("properties") {
            for (k, sub) in props {
                if let Some(x) = obj.get(k) {
                    check_schema(sub, x, &join(path, k), depth + 1, noun)?;
                }
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (v, s.get("items")) {
        for (i, x) in items.iter().enumerate() {
            check_schema(sub, x, &join(path, &i.to_string()), depth + 1, noun)?;
        }
    }
    Ok(())
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_owned()
    } else {
        format!("{path}.{k}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: Value) -> TypeSpec {
        TypeSpec(v.as_object().unwrap().clone())
    }
    fn inputs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn simple_map() {
        let s = spec(json!({"data": "string", "n": "integer?", "x": "any"}));
        assert!(s.validate().is_ok());
        assert!(
            s.check(&inputs(json!({"data": "a", "x": 1, "extra": true})))
                .is_ok()
        );
        assert!(
            s.check(&inputs(json!({"x": 1})))
                .unwrap_err()
                .contains("data")
        );
        assert!(
            s.check(&inputs(json!({"data": 1, "x": 1})))
                .unwrap_err()
                .contains("string")
        );
        assert!(
            s.check(&inputs(json!({"data": "a", "n": 1.5, "x": 1})))
                .is_err()
        );
        assert!(
            s.check(&inputs(json!({"data": "a", "n": 2, "x": null})))
                .is_ok()
        );
        assert!(spec(json!({"a": "strin"})).validate().is_err());
        assert!(spec(json!({"a": 3})).validate().is_err());
    }

    #[test]
    fn json_schema_subset() {
        let s = spec(json!({"type": "object", "required": ["user"],
            "properties": {"user": {"type": "object", "required": ["id"],
                "properties": {"id": {"type": "string"}, "role": {"enum": ["a", "b"]}}},
                "tags": {"type": "array", "items": {"type": "string"}}}}));
        assert!(s.is_json_schema());
        assert!(s.check(&inputs(json!({"user": {"id": "u"}}))).is_ok());
        assert!(s.check(&inputs(json!({}))).unwrap_err().contains("user"));
        assert!(
            s.check(&inputs(json!({"user": {"id": 1}})))
                .unwrap_err()
                .contains("user.id")
        );
        assert!(
            s.check(&inputs(json!({"user": {"id": "u", "role": "c"}})))
                .is_err()
        );
        assert!(
            s.check(&inputs(json!({"user": {"id": "u"}, "tags": ["a", 2]})))
                .unwrap_err()
                .contains("tags.1")
        );
    }
}
