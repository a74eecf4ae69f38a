//! What the registry accepts as an agent definition (API.md "Agents").
//!
//! Every refusal is `VALIDATION_FAILED` with `details.field` naming the offending
//! field, so the API can point the caller at it.

use std::collections::HashSet;

use crate::Error;
use crate::model::{RegisteredAgent, Transport, TypeSpec, validate_id};

/// Longest agent `type`.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest `endpoint` URL.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// The type names of a simple `field -> type` map (each may carry a `?` suffix:
/// optional).
pub const TYPE_NAMES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "any",
];

/// Parses a simple-map type: `Some((name, optional))` for `string`, `integer?`, ...
fn parse_type_name(s: &str) -> Option<(&'static str, bool)> {
    let (base, optional) = match s.strip_suffix('?') {
        Some(base) => (base, true),
        None => (s, false),
    };
    TYPE_NAMES
        .iter()
        .find(|t| **t == base)
        .map(|t| (*t, optional))
}

/// Checks an agent definition: see [`super::AgentRegistry::validate_agent`].
pub(super) fn validate_agent(agent: &RegisteredAgent) -> crate::Result<()> {
    validate_id("agent", &agent.id).map_err(|e| e.field("id"))?;
    validate_type(&agent.agent_type)?;

    let mut seen = HashSet::with_capacity(agent.capabilities.len());
    for cap in &agent.capabilities {
        validate_id("capability", &cap.id).map_err(|e| e.field("capabilities"))?;
        if !seen.insert(cap.id.as_str()) {
            return Err(
                Error::validation(format!("duplicate capability id {:?}", cap.id))
                    .field("capabilities"),
            );
        }
        if let Some(comp) = &cap.compensation {
            validate_id("compensation capability", comp).map_err(|e| e.field("capabilities"))?;
        }
        validate_type_spec(&cap.inputs, &cap.id, "inputs")?;
        validate_type_spec(&cap.outputs, &cap.id, "outputs")?;
    }

    if let Some(endpoint) = &agent.endpoint {
        validate_endpoint(endpoint).map_err(|e| e.field("endpoint"))?;
    }
    if agent.transport == Some(Transport::Http) && agent.endpoint.is_none() {
        return Err(Error::validation("transport \"http\" requires an endpoint").field("endpoint"));
    }
    if agent.max_concurrency == Some(0) {
        return Err(Error::validation("maxConcurrency must be at least 1").field("maxConcurrency"));
    }
    Ok(())
}

fn validate_type(t: &str) -> crate::Result<()> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(format!(
            "invalid agent type {t:?}: expected 1-{MAX_TYPE_LEN} characters of [A-Za-z0-9._-]"
        ))
        .field("type"))
    }
}

/// A JSON Schema (recognised by [`TypeSpec::is_json_schema`], the rule the input
/// check uses too) is accepted as is; a simple map must name a type for every field.
fn validate_type_spec(spec: &TypeSpec, cap_id: &str, which: &str) -> crate::Result<()> {
    if spec.is_json_schema() {
        return Ok(());
    }
    for (name, value) in &spec.0 {
        let valid = value.as_str().and_then(parse_type_name).is_some();
        if !valid {
            let field = format!("capabilities.{cap_id}.{which}.{name}");
            return Err(Error::validation(format!(
                "{field}: {value} is not a type (expected one of {}, optionally with a `?` suffix, \
                 or a JSON Schema object)",
                TYPE_NAMES.join(" ")
            ))
            .field(field));
        }
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host, an optional port and path, without
/// credentials (a secret belongs in `inboundSecret`, which is never shown or logged,
/// not in an endpoint that is).
fn validate_endpoint(url: &str) -> crate::Result<()> {
    let bad = |why: &str| {
        Err(Error::validation(format!(
            "invalid endpoint {url:?}: {why}"
        )))
    };
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(Error::validation(format!(
            "invalid endpoint: longer than {MAX_ENDPOINT_LEN} characters"
        )));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("contains whitespace or control characters");
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        _ => return bad("expected an http:// or https:// URL"),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.contains('@') {
        return bad("credentials are not allowed in the endpoint; use inboundSecret");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unterminated IPv6 address");
        };
        let addr_ok = !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !addr_ok {
            return bad("invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return bad("unexpected characters after the IPv6 address"),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("missing host");
    }
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'%' | b':'));
    if !host_ok {
        return bad("invalid host");
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535);
        if !valid {
            return bad("invalid port");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::AgentCapability;

    fn agent(v: serde_json::Value) -> RegisteredAgent {
        serde_json::from_value(v).unwrap()
    }

    fn field_of(r: crate::Result<()>) -> String {
        match r {
            Err(Error::Invalid { code, details, .. }) => {
                assert_eq!(code.as_str(), "VALIDATION_FAILED");
                details.field.unwrap_or_default()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn cap(id: &str, inputs: serde_json::Value) -> AgentCapability {
        serde_json::from_value(json!({"id": id, "inputs": inputs})).unwrap()
    }

    #[test]
    fn accepts_the_originals_example() {
        let a = agent(json!({
            "id": "sentinel-1", "type": "sentinel", "name": "Sentinel Agent",
            "capabilities": [{"id": "sign", "inputs": {"data": "string", "n": "integer?"},
                              "outputs": {"signature": "string"}, "tags": ["crypto"]}],
            "endpoint": "http://127.0.0.1:9101", "transport": "http", "maxConcurrency": 16
        }));
        validate_agent(&a).unwrap();
    }

    #[test]
    fn refuses_bad_id_and_type() {
        let mut a = agent(json!({"id": "a", "type": "t"}));
        a.id = "has space".into();
        assert_eq!(field_of(validate_agent(&a)), "id");
        a.id = "ok".into();
        for t in ["", "with space", "a:b", &"t".repeat(65)] {
            a.agent_type = t.into();
            assert_eq!(field_of(validate_agent(&a)), "type", "{t:?}");
        }
        a.agent_type = "my-type_2.x".into();
        validate_agent(&a).unwrap();
    }

    #[test]
    fn refuses_bad_or_duplicate_capability_ids() {
        let mut a = agent(json!({"id": "a", "type": "t"}));
        a.capabilities = vec![cap("x y", json!({}))];
        assert_eq!(field_of(validate_agent(&a)), "capabilities");
        a.capabilities = vec![cap("sign", json!({})), cap("sign", json!({}))];
        assert_eq!(field_of(validate_agent(&a)), "capabilities");
        a.capabilities = vec![cap("sign", json!({})), cap("verify", json!({}))];
        validate_agent(&a).unwrap();
    }

    #[test]
    fn type_specs() {
        let mut a = agent(json!({"id": "a", "type": "t"}));
        for ok in [
            json!({"data": "string", "count": "number?", "x": "any"}),
            json!({"type": "object", "properties": {"data": {"type": "string"}}}),
            json!({"properties": {"a": {}}}),
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema"}),
            json!({"required": ["a"], "a": 5}),
            json!({"required": "boolean"}),
            json!({"type": "object"}),
        ] {
            a.capabilities = vec![cap("c", ok.clone())];
            validate_agent(&a).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            json!({"data": "str"}),
            json!({"data": 5}),
            json!({"data": "string??"}),
            json!({"data": {"type": "string"}}),
        ] {
            a.capabilities = vec![cap("c", bad.clone())];
            assert_eq!(
                field_of(validate_agent(&a)),
                "capabilities.c.inputs.data",
                "{bad}"
            );
        }
        a.capabilities =
            vec![serde_json::from_value(json!({"id": "c", "outputs": {"sig": "bytes"}})).unwrap()];
        assert_eq!(field_of(validate_agent(&a)), "capabilities.c.outputs.sig");
        assert_eq!(parse_type_name("integer?"), Some(("integer", true)));
        assert_eq!(parse_type_name("?"), None);
    }

    #[test]
    fn endpoints() {
        for ok in [
            "http://127.0.0.1:9101",
            "https://agent.example.com",
            "HTTPS://agent.example.com/base/path?x=1",
            "http://[::1]:8080/",
            "http://localhost",
            "http://my_host:1",
        ] {
            validate_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "127.0.0.1:9101",
            "ftp://host",
            "http://",
            "http:///path",
            "http://:80",
            "http://host:",
            "http://host:99999",
            "http://host:80x",
            "http://user:pw@host",
            "http://ho st",
            "http://[::1",
            "http://[zz]",
            "http://[::1]x",
            "http://host\n",
            "http://hóst",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("http://h/{}", "p".repeat(MAX_ENDPOINT_LEN));
        assert!(validate_endpoint(&long).is_err());
    }

    #[test]
    fn transport_and_concurrency() {
        let mut a = agent(json!({"id": "a", "type": "t", "transport": "http"}));
        assert_eq!(field_of(validate_agent(&a)), "endpoint");
        a.endpoint = Some("not a url".into());
        assert_eq!(field_of(validate_agent(&a)), "endpoint");
        a.endpoint = Some("http://h:1".into());
        validate_agent(&a).unwrap();
        a.transport = Some(Transport::Poll);
        validate_agent(&a).unwrap();
        a.max_concurrency = Some(0);
        assert_eq!(field_of(validate_agent(&a)), "maxConcurrency");
        a.max_concurrency = Some(1);
        validate_agent(&a).unwrap();
    }
}
