use serde_json::json;

use super::*;

fn secrets(values: &[Value]) -> Secrets {
    let mut s = Secrets::default();
    values.iter().for_each(|v| s.add(v));
    s
}

fn masked(s: &Secrets, mut v: Value) -> Value {
    s.mask(&mut v);
    v
}

#[test]
fn copies_are_masked_wherever_they_are() {
    let s = secrets(&[json!("tok-123456")]);
    let v = masked(
        &s,
        json!({"copy": "tok-123456", "list": ["a", "tok-123456"],
               "deep": {"x": [{"y": "tok-123456"}]}, "other": "fine"}),
    );
    assert_eq!(
        v,
        json!({"copy": "***", "list": ["a", "***"],
               "deep": {"x": [{"y": "***"}]}, "other": "fine"})
    );
}

#[test]
fn occurrences_inside_longer_strings_are_replaced() {
    let s = secrets(&[json!("tok-123456"), json!(987654)]);
    let v = masked(
        &s,
        json!({"auth": "Bearer tok-123456", "twice": "tok-123456/tok-123456",
               "msg": "pin 987654 refused"}),
    );
    assert_eq!(
        v,
        json!({"auth": "Bearer ***", "twice": "***/***", "msg": "pin *** refused"})
    );
}

#[test]
fn the_longest_value_is_replaced_first() {
    // One value contains the other: the longer one goes whole.
    let s = secrets(&[json!("abcd"), json!("abcdefgh")]);
    assert_eq!(masked(&s, json!("x abcdefgh y")), json!("x *** y"));
    assert_eq!(masked(&s, json!("x abcd y")), json!("x *** y"));
}

#[test]
fn short_values_are_masked_whole_but_not_inside_strings() {
    let s = secrets(&[json!("abc"), json!(42)]);
    const { assert!(MIN_EMBEDDED_CHARS == 4) };
    let v = masked(
        &s,
        json!({"a": "abc", "b": 42, "c": "42", "d": "abcdef", "e": "the 42nd", "f": 420}),
    );
    assert_eq!(
        v,
        json!({"a": "***", "b": "***", "c": "***", "d": "abcdef", "e": "the 42nd", "f": 420})
    );
    // Four characters is enough.
    let s = secrets(&[json!("abcd")]);
    assert_eq!(masked(&s, json!("xabcdx")), json!("x***x"));
}

#[test]
fn numbers_and_their_text_match_each_other() {
    // `${steps.s.outputs.pin}` inside a string turns a number into its text.
    let s = secrets(&[json!(123456)]);
    assert_eq!(
        masked(&s, json!([123456, "123456", "id-123456", 1234567])),
        json!(["***", "***", "id-***", 1234567])
    );
    let s = secrets(&[json!("123456")]);
    assert_eq!(masked(&s, json!([123456])), json!(["***"]));
}

#[test]
fn nested_sensitive_values_count_whole_and_by_leaf() {
    let s = secrets(&[json!({"key": "k-secret-1", "ttl": 3600, "ok": true, "n": null})]);
    let v = masked(
        &s,
        json!({"whole": {"key": "k-secret-1", "ttl": 3600, "ok": true, "n": null},
               "leaf": "k-secret-1", "ttl": 3600, "in": "key=k-secret-1",
               "flag": true, "nothing": null}),
    );
    assert_eq!(
        v,
        json!({"whole": "***", "leaf": "***", "ttl": "***", "in": "key=***",
               // Booleans and null are not tracked as copies.
               "flag": true, "nothing": null})
    );
    let s = secrets(&[json!(["a-long-1", "b-long-2"])]);
    assert_eq!(
        masked(
            &s,
            json!({"all": ["a-long-1", "b-long-2"], "one": ["b-long-2"]})
        ),
        json!({"all": "***", "one": ["***"]})
    );
}

#[test]
fn empty_values_and_the_mask_itself_are_not_tracked() {
    let s = secrets(&[json!(""), json!(MASK), json!(true), json!(null)]);
    assert!(s.is_empty());
    assert_eq!(
        masked(&s, json!({"a": "", "b": true})),
        json!({"a": "", "b": true})
    );
}

#[test]
fn error_messages_are_masked() {
    let s = secrets(&[json!("tok-123456")]);
    let mut m = "agent said: tok-123456 is expired".to_owned();
    s.mask_text(&mut m);
    assert_eq!(m, "agent said: *** is expired");
    let mut whole = "tok-123456".to_owned();
    s.mask_text(&mut whole);
    assert_eq!(whole, "***");
}

fn execution() -> WorkflowExecution {
    let err = json!({"code": "AGENT_ERROR", "message": "bad token tok-123456",
                     "details": {"got": "tok-123456"}, "timestamp": 1});
    serde_json::from_value(json!({
        "id": "e1", "workflowId": "w", "revision": 1, "status": "failed", "createdAt": 1,
        "stepExecutions": {
            "s1": {"stepId": "s1", "status": "completed", "retryCount": 0,
                   "inputs": {"user": "alice"},
                   "outputs": {"secret": "tok-123456", "copy": "tok-123456",
                               "nested": {"key": {"inner": "k-secret-1"}},
                               "empty": null, "user": "alice"}},
            "s2": {"stepId": "s2", "status": "failed", "retryCount": 1,
                   "inputs": {"auth": "Bearer tok-123456", "k": "k-secret-1"},
                   "error": err.clone(),
                   "attempts": [{"attempt": 1, "startedAt": 1, "error": err.clone()}]},
            "s3": {"stepId": "s3", "status": "completed", "retryCount": 0,
                   "outputs": {"secret": "not-sensitive-here"}}
        },
        "context": {"executionId": "e1", "workflowId": "w", "correlationId": "c",
                    "variables": {"given": "tok-123456"},
                    "stepOutputs": {"s1": {"secret": "tok-123456", "copy": "tok-123456"}}},
        "outputs": {"s1": {"secret": "tok-123456"}},
        "result": {"all": {"secret": "tok-123456", "copy": "tok-123456"}, "t": "tok-123456"},
        "error": err,
        "rollbackLog": [{"stepId": "s1", "action": "compensate", "status": "failed",
                         "inputs": {"outputs": {"secret": "tok-123456"}}}],
        "cancelReason": "because tok-123456"
    }))
    .unwrap()
}

fn mask(e: WorkflowExecution, keys: &Keys) -> Value {
    let mut e = e;
    let s = take_execution(&mut e, keys);
    mask_execution(&mut e, &s);
    serde_json::to_value(e).unwrap()
}

fn by_step() -> Keys {
    let idx = SensitiveIndex::of(&[("issue", &["secret", "nested", "empty"])]);
    let caps: HashMap<String, String> = [("s1", "issue"), ("s2", "use"), ("s3", "other")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    Keys::of(&idx, Some(&caps), &execution())
}

#[test]
fn an_execution_is_masked_everywhere_a_value_went() {
    let v = mask(execution(), &by_step());
    assert!(
        !v.to_string().contains("tok-123456"),
        "{}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    assert!(!v.to_string().contains("k-secret-1"), "{v}");
    let s1 = &v["stepExecutions"]["s1"]["outputs"];
    assert_eq!(s1["secret"], "***");
    assert_eq!(s1["copy"], "***");
    assert_eq!(s1["nested"], "***");
    assert_eq!(s1["empty"], "***", "under a sensitive key, whatever it is");
    assert_eq!(s1["user"], "alice");
    let s2 = &v["stepExecutions"]["s2"];
    assert_eq!(s2["inputs"]["auth"], "Bearer ***");
    assert_eq!(s2["inputs"]["k"], "***");
    assert_eq!(s2["error"]["message"], "bad token ***");
    assert_eq!(s2["error"]["details"]["got"], "***");
    assert_eq!(s2["attempts"][0]["error"]["message"], "bad token ***");
    assert_eq!(s2["error"]["code"], "AGENT_ERROR");
    // s3's capability does not declare `secret`.
    assert_eq!(
        v["stepExecutions"]["s3"]["outputs"]["secret"],
        "not-sensitive-here"
    );
    assert_eq!(v["context"]["stepOutputs"]["s1"]["copy"], "***");
    assert_eq!(v["context"]["variables"]["given"], "***");
    assert_eq!(v["result"]["all"], json!({"secret": "***", "copy": "***"}));
    assert_eq!(v["result"]["t"], "***");
    assert_eq!(v["error"]["message"], "bad token ***");
    assert_eq!(v["cancelReason"], "because ***");
    // Ids, statuses and times are left alone.
    assert_eq!(v["id"], "e1");
    assert_eq!(v["stepExecutions"]["s2"]["retryCount"], 1);
}

#[test]
fn without_the_revision_every_declared_key_is_masked() {
    let idx = SensitiveIndex::of(&[("issue", &["secret"])]);
    let v = mask(execution(), &Keys::of(&idx, None, &execution()));
    assert_eq!(v["stepExecutions"]["s3"]["outputs"]["secret"], "***");
    assert_eq!(v["stepExecutions"]["s1"]["outputs"]["copy"], "***");
}

#[test]
fn a_fallback_is_masked_by_both_steps_declarations() {
    let mut e = execution();
    let s3 = e.step_executions.get_mut("s3").unwrap();
    s3.fallback_step = Some("s1".into());
    let idx = SensitiveIndex::of(&[("issue", &["secret"])]);
    let caps: HashMap<String, String> = [("s1", "issue"), ("s3", "other")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let keys = Keys::of(&idx, Some(&caps), &e);
    let v = mask(e, &keys);
    assert_eq!(v["stepExecutions"]["s3"]["outputs"]["secret"], "***");
}

#[test]
fn an_event_payload_gives_up_its_own_outputs() {
    let idx = SensitiveIndex::of(&[("issue", &["secret"])]);
    let any = Keys::Any(idx.all.clone());
    // A step's outputs, and outputs by step id (`workflow:completed`).
    for mut p in [
        json!({"stepId": "s1", "outputs": {"secret": "tok-123456", "copy": "tok-123456"}}),
        json!({"outputs": {"s1": {"secret": "tok-123456", "copy": "tok-123456"}},
               "result": {"all": {"secret": "tok-123456", "copy": "tok-123456"}}}),
        json!({"custom": {"outputs": {"secret": "tok-123456"}}, "note": "see tok-123456"}),
    ] {
        let mut s = Secrets::default();
        take_payload(&mut p, &any, &mut s);
        s.mask(&mut p);
        assert!(!p.to_string().contains("tok-123456"), "{p}");
    }
    // Per step: only the step's own capability's keys.
    let caps: HashMap<String, String> = [("s1", "issue"), ("s3", "other")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let keys = Keys::of(&idx, Some(&caps), &execution());
    let mut p = json!({"stepId": "s3", "outputs": {"secret": "public-value"}});
    let mut s = Secrets::default();
    take_payload(&mut p, &keys, &mut s);
    assert!(s.is_empty());
    assert_eq!(p["outputs"]["secret"], "public-value");
}
