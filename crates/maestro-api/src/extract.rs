//! Request extractors whose rejections use the API's error envelope: a JSON
//! (or YAML) body with content-type, size and depth checks and errors that
//! name the field, and strict query parameters (unknown ones are refused).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// Body formats a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

fn content_format(req: &Request, yaml_ok: bool) -> Result<Format, ApiError> {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: expected application/json".into(),
        ));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Ok(Format::Json);
    }
    if yaml_ok
        && matches!(
            essence,
            "application/yaml" | "application/x-yaml" | "text/yaml"
        )
    {
        return Ok(Format::Yaml);
    }
    Err(ApiError::UnsupportedMediaType(format!(
        "unsupported Content-Type {essence:?}: expected application/json{}",
        if yaml_ok { " or application/yaml" } else { "" }
    )))
}

async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.opts.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            // axum does not export the limit error type; find it by message in
            // the cause chain. The only other failure is the client going away.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.to_string().contains("length limit exceeded") {
                    return ApiError::PayloadTooLarge(limit);
                }
                cause = c.source();
            }
            ApiError::InvalidJson {
                message: format!("could not read the request body: {e}"),
                field: None,
            }
        })
}

/// Refuse the NUL character (`\u0000`) anywhere in a body: no field of the API
/// needs it, and text columns of some stores (PostgreSQL) cannot hold it.
pub(crate) fn check_no_nul(bytes: &[u8]) -> Result<(), ApiError> {
    let found = bytes
        .windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].iter().all(|&b| b == b'0'))
        || bytes.contains(&0);
    if found {
        return Err(ApiError::Validation {
            message: "the NUL character (\\u0000) is not accepted".into(),
            field: None,
        });
    }
    Ok(())
}

/// Refuse nesting deeper than `max` before any parsing: a cheap scan that
/// skips string contents.
pub(crate) fn check_json_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::Validation {
                        message: format!("JSON nesting is deeper than the limit of {max}"),
                        field: None,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Deserialize JSON, naming the path of the offending field.
pub(crate) fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    max_depth: usize,
) -> Result<T, ApiError> {
    check_json_depth(bytes, max_depth)?;
    check_no_nul(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != "." && !path.is_empty()).then_some(path);
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => inner.to_string(),
        };
        if inner.is_data() {
            ApiError::Validation { message, field }
        } else {
            ApiError::InvalidJson { message, field }
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidJson {
        message: format!("trailing characters after the JSON document: {e}"),
        field: None,
    })?;
    Ok(value)
}

/// YAML body: parsed to JSON first (so depth and the same field errors apply).
fn parse_yaml<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_norway::from_slice(bytes).map_err(|e| ApiError::InvalidJson {
            message: format!("invalid YAML: {e}"),
            field: None,
        })?;
    let text = serde_json::to_vec(&value).map_err(|e| ApiError::InvalidJson {
        message: format!("YAML is not representable as JSON: {e}"),
        field: None,
    })?;
    parse_json(&text, max_depth)
}

/// A JSON body (`Content-Type: application/json`).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        content_format(&req, false)?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes, state.opts.max_json_depth).map(Json)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`), for
/// requests whose fields are all optional (`cancel`, `execute`, `heartbeat`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let has_type = req.headers().contains_key(CONTENT_TYPE);
        if !has_type {
            let bytes = read_body(req, state).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(T::default()));
            }
            return Err(ApiError::UnsupportedMediaType(
                "missing Content-Type: expected application/json".into(),
            ));
        }
        content_format(&req, false)?;
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes, state.opts.max_json_depth).map(OptionalJson)
    }
}

/// A JSON or YAML body (`application/yaml`), for workflow definitions.
#[derive(Debug)]
pub struct JsonOrYaml<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonOrYaml<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let format = content_format(&req, true)?;
        let bytes = read_body(req, state).await?;
        match format {
            Format::Json => parse_json(&bytes, state.opts.max_json_depth),
            Format::Yaml => parse_yaml(&bytes, state.opts.max_json_depth),
        }
        .map(JsonOrYaml)
    }
}

/// Query parameters, read strictly: each route names what it takes with the
/// typed getters, then [`Query::finish`] refuses anything left over.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    used: Vec<bool>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://q/?{raw}"))
            .map(|u| {
                u.query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some((k, _)) = pairs
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::validation(
                "a query parameter contains a NUL character",
                k.replace('\0', ""),
            ));
        }
        if pairs.len() > 256 {
            return Err(ApiError::Validation {
                message: "too many query parameters (at most 256)".into(),
                field: None,
            });
        }
        let used = vec![false; pairs.len()];
        Ok(Query { pairs, used })
    }
}

impl Query {
    fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if k == name {
                self.used[i] = true;
                out.push(v.clone());
            }
        }
        out
    }

    /// A single-valued string parameter (given twice → 400).
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut v = self.take_all(name);
        match v.len() {
            0 => Ok(None),
            1 => {
                let s = v.pop().unwrap_or_default();
                if s.is_empty() {
                    return Err(ApiError::validation(
                        format!("query parameter {name} is empty"),
                        name,
                    ));
                }
                if s.len() > 1024 {
                    return Err(ApiError::validation(
                        format!("query parameter {name} is too long"),
                        name,
                    ));
                }
                Ok(Some(s))
            }
            _ => Err(ApiError::validation(
                format!("query parameter {name} is given more than once"),
                name,
            )),
        }
    }

    /// A list: repeatable and/or comma-separated (`?types=a,b&types=c`).
    pub fn list(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for v in self.take_all(name) {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    return Err(ApiError::validation(
                        format!("query parameter {name} has an empty item"),
                        name,
                    ));
                }
                out.push(part.to_owned());
            }
        }
        if out.len() > 100 {
            return Err(ApiError::validation(
                format!("query parameter {name} has more than 100 items"),
                name,
            ));
        }
        Ok(out)
    }

    /// An unsigned integer.
    pub fn u64(&mut self, name: &str) -> Result<Option<u64>, ApiError> {
        self.string(name)?
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    ApiError::validation(
                        format!("query parameter {name} must be a non-negative integer, got {s:?}"),
                        name,
                    )
                })
            })
            .transpose()
    }

    /// `limit` (default `default`, at most `max`) and `offset` (default 0).
    pub fn page(&mut self, default: usize, max: usize) -> Result<(usize, usize), ApiError> {
        let limit = self.u64("limit")?.unwrap_or(default as u64);
        if limit == 0 || limit > max as u64 {
            return Err(ApiError::validation(
                format!("limit must be 1-{max}"),
                "limit",
            ));
        }
        let offset = self.u64("offset")?.unwrap_or(0);
        if offset > 1_000_000_000 {
            return Err(ApiError::validation("offset is too large", "offset"));
        }
        Ok((limit as usize, offset as usize))
    }

    /// Refuse parameters the route does not take.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) {
            None => Ok(()),
            Some(((k, _), _)) => Err(ApiError::validation(
                format!("unknown query parameter {k:?}"),
                k.clone(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_escaped_or_raw() {
        assert!(check_no_nul(br#"{"a":"x\u0000y"}"#).is_err());
        assert!(check_no_nul(b"{\"a\":\"x\0\"}").is_err());
        assert!(check_no_nul(br#"{"a":"\u0001 and u0000"}"#).is_ok());
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(check_json_depth(br#"{"a":"[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_json_depth(b"[[[]]]", 2).is_err());
        assert!(check_json_depth(br#"{"a":"\"[[[["}"#, 1).is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        steps: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        id: String,
    }

    #[test]
    fn errors_name_the_field_and_tell_syntax_from_data() {
        let e = parse_json::<Outer>(
            br#"{"steps":[{"id":"a"},{"id":"b","dependancies":[]}]}"#,
            64,
        )
        .unwrap_err();
        match e {
            ApiError::Validation { field, message } => {
                assert_eq!(field.as_deref(), Some("steps[1].dependancies"));
                assert!(message.contains("dependancies"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let e = parse_json::<Outer>(br#"{"steps":[{"id":7}]}"#, 64).unwrap_err();
        assert!(matches!(e, ApiError::Validation { field: Some(f), .. } if f == "steps[0].id"));
        let e = parse_json::<Outer>(br#"{"steps":[{"id":"#, 64).unwrap_err();
        assert!(matches!(e, ApiError::InvalidJson { .. }));
        let e = parse_json::<Outer>(br#"{"steps":[]} x"#, 64).unwrap_err();
        assert!(matches!(e, ApiError::InvalidJson { .. }));
    }
}

/// The route's single path parameter (an id).
#[derive(Debug)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Validation {
                message: format!("bad path: {}", e.body_text()),
                field: None,
            })?;
        let (name, value) = params
            .iter()
            .next()
            .ok_or_else(|| ApiError::Internal("route without a path parameter".into()))?;
        // axum has percent-decoded it already (and refused invalid UTF-8).
        let decoded = value.to_owned();
        if decoded.is_empty() || decoded.len() > 256 || decoded.contains('\0') {
            return Err(ApiError::validation(
                format!("path parameter {name} must be 1-256 characters, without NUL"),
                name,
            ));
        }
        Ok(PathId(decoded))
    }
}
