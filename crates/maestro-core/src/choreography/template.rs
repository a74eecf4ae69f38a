//! `${path}` placeholders: parsing and substitution.

use serde_json::{Map, Value};

use super::scope::{Scope, parse_path};
use crate::{Code, Error, Result};

/// A placeholder that could not be substituted: its path does not resolve in the
/// scope, or its syntax is bad. `placeholder` is the text as written, e.g.
/// `${user.name}` (for an unterminated one, the text from `${` to the end).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unresolved variable {placeholder}")]
pub struct Unresolved {
    pub placeholder: String,
}

/// A piece of a template string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'s> {
    Text(&'s str),
    /// `$${`, which stands for a literal `${`.
    Dollar,
    Placeholder {
        raw: &'s str,
        path: &'s str,
    },
}

/// Bad placeholder syntax: the offending text and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub raw: String,
    pub message: String,
}

/// Split a string into text, escapes and placeholders. Scans left to right: `$${` is
/// an escape, `${` opens a placeholder that runs to the next `}`.
pub(crate) fn parse_template(s: &str) -> std::result::Result<Vec<Piece<'_>>, TemplateError> {
    let b = s.as_bytes();
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let escaped = s[i..].starts_with("$${");
        if !escaped && !s[i..].starts_with("${") {
            i += 1;
            continue;
        }
        if text_start < i {
            pieces.push(Piece::Text(&s[text_start..i]));
        }
        if escaped {
            pieces.push(Piece::Dollar);
            i += 3;
            text_start = i;
            continue;
        }
        let start = i;
        let mut j = i + 2;
        loop {
            match b.get(j) {
                None => {
                    return Err(TemplateError {
                        raw: s[start..].to_owned(),
                        message: format!(
                            "unterminated placeholder {:?}: missing '}}'",
                            &s[start..]
                        ),
                    });
                }
                Some(b'}') => break,
                Some(b'$') if b.get(j + 1) == Some(&b'{') => {
                    return Err(TemplateError {
                        raw: s[start..j + 2].to_owned(),
                        message: format!(
                            "nested placeholder in {:?}: placeholders cannot contain '${{'",
                            &s[start..]
                        ),
                    });
                }
                Some(_) => j += 1,
            }
        }
        let raw = &s[start..=j];
        let path = &s[start + 2..j];
        if path.is_empty() {
            return Err(TemplateError {
                raw: raw.to_owned(),
                message: "empty placeholder ${}".to_owned(),
            });
        }
        if parse_path(path).is_none() {
            return Err(TemplateError {
                raw: raw.to_owned(),
                message: format!(
                    "invalid placeholder {raw}: a path is segments of [A-Za-z0-9_-] \
                     separated by '.'"
                ),
            });
        }
        pieces.push(Piece::Placeholder { raw, path });
        i = j + 1;
        text_start = i;
    }
    if text_start < b.len() {
        pieces.push(Piece::Text(&s[text_start..]));
    }
    Ok(pieces)
}

/// The placeholder paths of a string, in order. Bad syntax is `INVALID_PLACEHOLDER`.
pub fn template_paths(s: &str) -> Result<Vec<String>> {
    if !s.contains("${") {
        return Ok(Vec::new());
    }
    let pieces =
        parse_template(s).map_err(|e| Error::invalid(Code::InvalidPlaceholder, e.message))?;
    Ok(pieces
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder { path, .. } => Some(path.to_owned()),
            _ => None,
        })
        .collect())
}

/// Substitute every placeholder in every string of `inputs` (nested objects and
/// arrays included; keys are left alone).
pub fn substitute_variables(
    inputs: &Map<String, Value>,
    scope: &Scope<'_>,
) -> std::result::Result<Map<String, Value>, Unresolved> {
    inputs
        .iter()
        .map(|(k, v)| Ok((k.clone(), substitute_value(v, scope)?)))
        .collect()
}

/// Substitute the placeholders inside one JSON value.
pub fn substitute_value(v: &Value, scope: &Scope<'_>) -> std::result::Result<Value, Unresolved> {
    Ok(match v {
        Value::String(s) => substitute_str(s, scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_value(item, scope))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(substitute_variables(m, scope)?),
        other => other.clone(),
    })
}

/// A string that is exactly one placeholder keeps the JSON type of its value; any
/// other placeholder is interpolated (strings as-is, other values as compact JSON).
fn substitute_str(s: &str, scope: &Scope<'_>) -> std::result::Result<Value, Unresolved> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_owned()));
    }
    let pieces = parse_template(s).map_err(|e| Unresolved { placeholder: e.raw })?;
    let lookup = |raw: &str, path: &str| {
        scope.resolve(path).ok_or_else(|| Unresolved {
            placeholder: raw.to_owned(),
        })
    };
    if let [Piece::Placeholder { raw, path }] = pieces.as_slice() {
        return Ok(lookup(raw, path)?.into_owned());
    }
    let mut out = String::with_capacity(s.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Dollar => out.push_str("${"),
            Piece::Placeholder { raw, path } => match lookup(raw, path)?.as_ref() {
                Value::String(text) => out.push_str(text),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// `s` holds a placeholder (or something meant as one but malformed); `$${` alone
/// does not count.
fn has_placeholder(s: &str) -> bool {
    s.contains("${")
        && parse_template(s).map_or(true, |pieces| {
            pieces
                .iter()
                .any(|p| matches!(p, Piece::Placeholder { .. }))
        })
}

/// The workflow's `result`: for each key of `expectedOutputs`, a string value holding a
/// placeholder is substituted; any other value means "the variable named like the
/// key", resolved as a path. Keys that do not resolve are absent.
pub fn resolve_expected_outputs(
    expected: &Map<String, Value>,
    scope: &Scope<'_>,
) -> Map<String, Value> {
    let mut result = Map::new();
    for (key, spec) in expected {
        let resolved = match spec {
            Value::String(s) if has_placeholder(s) => substitute_str(s, scope).ok(),
            _ => scope.resolve(key).map(|v| v.into_owned()),
        };
        if let Some(v) = resolved {
            result.insert(key.clone(), v);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn parsing() {
        assert_eq!(template_paths("no placeholders").ok(), Some(vec![]));
        assert_eq!(
            template_paths("${a} and ${steps.verify-user.outputs.x.0}").ok(),
            Some(vec![
                "a".to_owned(),
                "steps.verify-user.outputs.x.0".to_owned()
            ])
        );
        assert_eq!(template_paths("$${a} is literal").ok(), Some(vec![]));
        assert_eq!(template_paths("$ and } and {x} and $").ok(), Some(vec![]));
        for bad in [
            "${}",
            "${a",
            "x ${a.b",
            "${a ${b}}",
            "${a b}",
            "${a..b}",
            "${.a}",
            "${a.}",
            "${é}",
        ] {
            let e = template_paths(bad).expect_err(bad);
            assert_eq!(e.code(), "INVALID_PLACEHOLDER", "{bad}");
        }
    }

    #[test]
    fn type_preservation_interpolation_and_escape() {
        let vars = obj(
            json!({"n": 42, "flag": true, "list": [1, "a"], "o": {"k": null},
            "name": "Ada", "nil": null}),
        );
        let scope = Scope {
            layers: vec![&vars],
            ..Scope::default()
        };
        let inputs = obj(json!({
            "n": "${n}", "flag": "${flag}", "list": "${list}", "o": "${o}", "nil": "${nil}",
            "greeting": "Hello ${name}, you are ${n}: ${flag} ${list} ${o} ${nil}",
            "escaped": "$${name} costs $$5 and ${name}",
            "nested": {"deep": ["${name}", {"x": "${o.k}"}], "${name}": "key untouched"},
            "plain": 7
        }));
        let out = substitute_variables(&inputs, &scope).expect("resolves");
        assert_eq!(
            Value::Object(out),
            json!({
                "n": 42, "flag": true, "list": [1, "a"], "o": {"k": null}, "nil": null,
                "greeting": "Hello Ada, you are 42: true [1,\"a\"] {\"k\":null} null",
                "escaped": "${name} costs $$5 and Ada",
                "nested": {"deep": ["Ada", {"x": null}], "${name}": "key untouched"},
                "plain": 7
            })
        );
    }

    #[test]
    fn substituted_values_are_not_substituted_again() {
        let vars = obj(json!({"evil": "${secret}", "secret": "s3cret"}));
        let scope = Scope {
            layers: vec![&vars],
            ..Scope::default()
        };
        assert_eq!(
            substitute_value(&json!("x ${evil}"), &scope),
            Ok(json!("x ${secret}"))
        );
    }

    #[test]
    fn unresolved() {
        let vars = obj(json!({"a": {"b": 1}}));
        let scope = Scope {
            layers: vec![&vars],
            ..Scope::default()
        };
        let e = substitute_value(&json!({"x": ["ok", "${a.c}"]}), &scope).expect_err("missing");
        assert_eq!(e.placeholder, "${a.c}");
        assert_eq!(e.to_string(), "unresolved variable ${a.c}");
        let e = substitute_value(&json!("pre ${nope} post"), &scope).expect_err("missing");
        assert_eq!(e.placeholder, "${nope}");
        let e = substitute_value(&json!("bad ${a b}"), &scope).expect_err("bad syntax");
        assert_eq!(e.placeholder, "${a b}");
        let e = substitute_value(&json!("open ${a"), &scope).expect_err("unterminated");
        assert_eq!(e.placeholder, "${a");
    }

    #[test]
    fn expected_outputs() {
        let vars = obj(json!({"token": "t1", "user": {"id": 7}}));
        let out = obj(json!({"sig": "abc"}));
        let scope = Scope {
            layers: vec![&out, &vars],
            steps: vec![("sign", &out)],
            ..Scope::default()
        };
        let expected = obj(json!({
            "token": "the JWT",                       // key resolved as a path
            "userId": "${user.id}",                   // placeholder keeps the type
            "signature": "sig=${steps.sign.outputs.sig}",
            "missing": "string",
            "broken": "${nope}",
            "sig": {"type": "string"},
            "escaped": "$${not a placeholder}",
        }));
        assert_eq!(
            Value::Object(resolve_expected_outputs(&expected, &scope)),
            json!({"token": "t1", "userId": 7, "signature": "sig=abc", "sig": "abc"})
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::String),
            "[a-z$\\{\\}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z${}.]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The same value with every `$` (in strings and keys) replaced by `_`.
    fn without_dollars(v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(s.replace('$', "_")),
            Value::Array(items) => Value::Array(items.into_iter().map(without_dollars).collect()),
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k.replace('$', "_"), without_dollars(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    proptest! {
        #![proptest_config(crate::choreography::proptest_config(128))]

        #[test]
        fn whole_placeholder_preserves_any_value(v in json_value(), k in "[A-Za-z0-9_-]{1,10}") {
            prop_assume!(k != "steps" && k != "execution");
            let mut vars = Map::new();
            vars.insert(k.clone(), v.clone());
            let scope = Scope { layers: vec![&vars], ..Scope::default() };
            let template = json!({"x": format!("${{{k}}}"), "y": [format!("${{{k}}}")]});
            let out = substitute_value(&template, &scope).expect("resolves");
            prop_assert_eq!(out, json!({"x": v.clone(), "y": [v]}));
        }

        #[test]
        fn interpolation_leaves_no_placeholder(
            v in json_value(), k in "[a-z]{1,6}", pre in "[^$]{0,8}", post in "[^$]{0,8}"
        ) {
            let v = without_dollars(v);
            let mut vars = Map::new();
            vars.insert(k.clone(), v.clone());
            let scope = Scope { layers: vec![&vars], ..Scope::default() };
            let out = substitute_value(&json!(format!("<{pre}${{{k}}}{post}>")), &scope)
                .expect("resolves");
            let rendered = match &v { Value::String(s) => s.clone(), other => other.to_string() };
            let Value::String(s) = out else { return Err(TestCaseError::fail("not a string")) };
            prop_assert!(!s.contains("${"), "placeholder left in {}", s);
            prop_assert_eq!(s, format!("<{pre}{rendered}{post}>"));
        }

        #[test]
        fn substitution_never_panics(v in json_value(), vars in json_value()) {
            let layer = match vars { Value::Object(m) => m, other => {
                let mut m = Map::new(); m.insert("v".into(), other); m } };
            let scope = Scope { layers: vec![&layer], ..Scope::default() };
            let _ = substitute_value(&v, &scope);
            if let Value::String(s) = &v { let _ = template_paths(s); }
        }
    }
}
