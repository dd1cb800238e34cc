//! The lookup against a fake edge: cache states, service answers, failures and fallbacks.

use crate::edge::policy::kv::{Error as KvError, Scope};
use crate::edge::policy::outbound_http::Error as HttpError;
use crate::lookup::{Age, Entry, Host, Verdict, age, check, interpret};
use crate::settings::{KEYS, OnError, Settings, parse_timeout};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

const NOW: u64 = 1_700_000_000_000;

type Answer = Result<(u16, Vec<u8>), HttpError>;
/// A request the fake user service received: URL, headers, timeout.
type Sent = (String, Vec<(String, String)>, u32);

#[derive(Default)]
struct FakeHost {
    shared: RefCell<HashMap<String, (String, u64)>>,
    local: RefCell<HashMap<String, (String, u64)>>,
    shared_down: Cell<bool>,
    answers: RefCell<VecDeque<Answer>>,
    requests: RefCell<Vec<Sent>>,
    counters: RefCell<HashMap<String, u64>>,
}

impl FakeHost {
    fn answer(&self, answer: Answer) {
        self.answers.borrow_mut().push_back(answer);
    }
    fn ok(&self, status: u16, body: &str) {
        self.answer(Ok((status, body.as_bytes().to_vec())));
    }
    fn store(&self, scope: Scope) -> &RefCell<HashMap<String, (String, u64)>> {
        match scope {
            Scope::Shared => &self.shared,
            Scope::Local => &self.local,
        }
    }
    fn put(&self, user: &str, active: bool, at_ms: u64) {
        let value = serde_json::to_string(&Entry { active, at_ms }).expect("json");
        self.shared
            .borrow_mut()
            .insert(format!("sub:{user}"), (value, u64::MAX));
    }
    fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }
    fn calls(&self) -> usize {
        self.requests.borrow().len()
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        NOW
    }
    fn kv_get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError> {
        if scope == Scope::Shared && self.shared_down.get() {
            return Err(KvError::Unavailable("redis down".into()));
        }
        Ok(self.store(scope).borrow().get(key).map(|(v, _)| v.clone()))
    }
    fn kv_set(&self, scope: Scope, key: &str, value: &str, ttl_ms: u64) -> Result<(), KvError> {
        if scope == Scope::Shared && self.shared_down.get() {
            return Err(KvError::Unavailable("redis down".into()));
        }
        self.store(scope)
            .borrow_mut()
            .insert(key.into(), (value.into(), ttl_ms));
        Ok(())
    }
    fn get(&self, url: &str, headers: Vec<(String, String)>, timeout_ms: u32) -> Answer {
        self.requests
            .borrow_mut()
            .push((url.into(), headers, timeout_ms));
        self.answers
            .borrow_mut()
            .pop_front()
            .unwrap_or(Err(HttpError::Failed("no answer queued".into())))
    }
    fn count(&self, counter: &str) {
        *self
            .counters
            .borrow_mut()
            .entry(counter.into())
            .or_default() += 1;
    }
    fn warn(&self, _message: &str) {}
}

fn parse(pairs: &[(&str, &str)]) -> Result<Settings, String> {
    let values: Vec<Option<String>> = KEYS
        .iter()
        .map(|k| {
            pairs
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| (*v).to_owned())
        })
        .collect();
    Settings::parse(&values)
}

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![("url", "http://users.internal:8080/")];
    pairs.extend_from_slice(extra);
    parse(&pairs).expect("valid config")
}

#[test]
fn timeouts_parse_like_the_env_var() {
    assert_eq!(parse_timeout("500ms"), Ok(500));
    assert_eq!(parse_timeout("2s"), Ok(2000));
    assert_eq!(parse_timeout("2"), Ok(2000));
    assert_eq!(parse_timeout(" 1.5 "), Ok(1500));
    assert_eq!(parse_timeout("0.25s"), Ok(250));
    assert_eq!(parse_timeout("0"), Ok(0));
    for bad in ["", "fast", "-1", "2m", "1e12", "NaN", "ms"] {
        assert!(parse_timeout(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn config_defaults_and_errors() {
    let s = settings(&[]);
    assert_eq!(s.url, "http://users.internal:8080");
    assert_eq!(s.timeout_ms, 2000);
    assert_eq!(
        (s.cache_ttl_ms, s.inactive_ttl_ms, s.stale_max_ms),
        (300_000, 60_000, 3_600_000)
    );
    assert_eq!(s.on_error, OnError::Stale);
    assert_eq!(s.subject_key, "sub");
    assert_eq!(s.kv_ttl_ms(), 3_600_000);
    let short = settings(&[
        ("stale_max", "0"),
        ("cache_ttl", "10"),
        ("inactive_ttl", "5"),
    ]);
    assert_eq!(short.kv_ttl_ms(), 10_000);
    assert!(parse(&[]).is_err());
    assert!(parse(&[("url", "")]).is_err());
    assert!(parse(&[("url", "users.internal")]).is_err());
    for bad in [
        ("on_error", "open"),
        ("cache_ttl", "-5"),
        ("timeout", "soon"),
        ("path", "/x"),
    ] {
        assert!(parse(&[("url", "http://u"), bad]).is_err(), "{bad:?}");
    }
}

#[test]
fn path_template_is_expanded_and_encoded() {
    let s = settings(&[]);
    assert_eq!(
        s.lookup_url("alice"),
        "http://users.internal:8080/api/v1/users/alice/subscription"
    );
    assert_eq!(
        s.lookup_url("a b/c?d#e%f"),
        "http://users.internal:8080/api/v1/users/a%20b%2Fc%3Fd%23e%25f/subscription"
    );
    assert_eq!(
        s.lookup_url(".."),
        "http://users.internal:8080/api/v1/users/%2E%2E/subscription"
    );
    assert_eq!(
        s.lookup_url("é-_~"),
        "http://users.internal:8080/api/v1/users/%C3%A9-_~/subscription"
    );
    let custom = settings(&[("path", "/subs?user={user_id}")]);
    assert_eq!(
        custom.lookup_url("u@x"),
        "http://users.internal:8080/subs?user=u%40x"
    );
}

#[test]
fn answers_of_the_user_service() {
    let body = |b: &str| b.as_bytes().to_vec();
    assert_eq!(
        interpret(Ok((200, body(r#"{"active": true, "plan": "gold"}"#)))),
        Ok(true)
    );
    assert_eq!(
        interpret(Ok((200, body(r#"{"active": false}"#)))),
        Ok(false)
    );
    assert_eq!(interpret(Ok((404, body("not found")))), Ok(false));
    for bad in [
        Ok((200, body("{"))),
        Ok((200, body(r#"{"active": "yes"}"#))),
        Ok((200, body(r#"{"plan": "gold"}"#))),
        Ok((500, body(r#"{"active": true}"#))),
        Ok((302, Vec::new())),
        Err(HttpError::Timeout),
        Err(HttpError::TooLarge),
        Err(HttpError::Failed("reset".into())),
        Err(HttpError::Denied("not allowed".into())),
    ] {
        assert!(interpret(bad).is_err());
    }
}

#[test]
fn entry_ages() {
    let s = settings(&[]);
    let at = |active, ago_s: u64| Entry {
        active,
        at_ms: NOW - ago_s * 1000,
    };
    assert_eq!(age(&at(true, 299), NOW, &s), Age::Fresh);
    assert_eq!(age(&at(true, 300), NOW, &s), Age::Stale);
    assert_eq!(age(&at(false, 59), NOW, &s), Age::Fresh);
    assert_eq!(age(&at(false, 60), NOW, &s), Age::Stale);
    assert_eq!(age(&at(true, 3599), NOW, &s), Age::Stale);
    assert_eq!(age(&at(true, 3600), NOW, &s), Age::Expired);
    // A clock behind another edge's: the entry counts as brand new.
    assert_eq!(
        age(
            &Entry {
                active: true,
                at_ms: NOW + 5000
            },
            NOW,
            &s
        ),
        Age::Fresh
    );
}

#[test]
fn fresh_hit_decides_without_asking() {
    let host = FakeHost::default();
    host.put("alice", true, NOW - 10_000);
    host.put("bob", false, NOW - 10_000);
    let s = settings(&[]);
    assert_eq!(check(&host, &s, "alice", None), Verdict::Active);
    assert_eq!(check(&host, &s, "bob", None), Verdict::Inactive);
    assert_eq!(host.calls(), 0);
    assert_eq!(host.counter("cache_hit"), 2);
}

#[test]
fn miss_asks_and_stores() {
    let host = FakeHost::default();
    let s = settings(&[("timeout", "750ms"), ("forward_header", "Authorization")]);
    host.ok(200, r#"{"active": true}"#);
    let forward = Some(("authorization".to_owned(), "Bearer t".to_owned()));
    assert_eq!(check(&host, &s, "alice", forward), Verdict::Active);
    let (url, headers, timeout) = host.requests.borrow()[0].clone();
    assert_eq!(
        url,
        "http://users.internal:8080/api/v1/users/alice/subscription"
    );
    assert!(headers.contains(&("authorization".into(), "Bearer t".into())));
    assert_eq!(timeout, 750);
    let (value, ttl) = host.shared.borrow()["sub:alice"].clone();
    assert_eq!(value, r#"{"active":true,"at_ms":1700000000000}"#);
    assert_eq!(ttl, 3_600_000);
    assert_eq!(host.counter("cache_miss"), 1);
    // Now fresh: no second call.
    assert_eq!(check(&host, &s, "alice", None), Verdict::Active);
    assert_eq!(host.calls(), 1);

    host.ok(404, "");
    assert_eq!(check(&host, &s, "carol", None), Verdict::Inactive);
    assert!(
        host.shared.borrow()["sub:carol"]
            .0
            .contains("\"active\":false")
    );
}

#[test]
fn stale_answers_are_refreshed_first() {
    let host = FakeHost::default();
    host.put("alice", true, NOW - 400_000);
    host.ok(200, r#"{"active": false}"#);
    assert_eq!(
        check(&host, &settings(&[]), "alice", None),
        Verdict::Inactive
    );
    assert_eq!(host.counter("stale_served"), 0);
}

#[test]
fn errors_serve_stale_or_fail_closed() {
    let errors: Vec<fn() -> Answer> = vec![
        || Ok((500, Vec::new())),
        || Ok((200, b"<html>".to_vec())),
        || Err(HttpError::Timeout),
        || Err(HttpError::Failed("refused".into())),
    ];
    for error in errors {
        // Stale entry, on_error = stale: the last known answer.
        let host = FakeHost::default();
        host.put("alice", true, NOW - 1_000_000);
        host.answer(error());
        assert_eq!(check(&host, &settings(&[]), "alice", None), Verdict::Active);
        assert_eq!(host.counter("stale_served"), 1);
        assert_eq!(host.counter("service_error"), 1);

        // Same entry, on_error = closed.
        let host = FakeHost::default();
        host.put("alice", true, NOW - 1_000_000);
        host.answer(error());
        let closed = settings(&[("on_error", "closed")]);
        assert_eq!(check(&host, &closed, "alice", None), Verdict::Unavailable);
        assert_eq!(host.counter("stale_served"), 0);

        // Entry older than stale_max, or none at all.
        let host = FakeHost::default();
        host.put("alice", true, NOW - 3_600_000);
        host.answer(error());
        assert_eq!(
            check(&host, &settings(&[]), "alice", None),
            Verdict::Unavailable
        );
        host.answer(error());
        assert_eq!(
            check(&host, &settings(&[]), "bob", None),
            Verdict::Unavailable
        );
    }
    // A stale inactive answer still denies.
    let host = FakeHost::default();
    host.put("bob", false, NOW - 120_000);
    host.answer(Err(HttpError::Timeout));
    assert_eq!(check(&host, &settings(&[]), "bob", None), Verdict::Inactive);
}

#[test]
fn shared_store_down_falls_back_to_local() {
    let host = FakeHost::default();
    host.shared_down.set(true);
    host.ok(200, r#"{"active": true}"#);
    let s = settings(&[]);
    assert_eq!(check(&host, &s, "alice", None), Verdict::Active);
    assert_eq!(host.counter("kv_fallback"), 1);
    assert!(host.local.borrow().contains_key("sub:alice"));
    assert_eq!(check(&host, &s, "alice", None), Verdict::Active);
    assert_eq!(host.calls(), 1);
    assert_eq!(host.counter("cache_hit"), 1);
}

#[test]
fn garbage_in_the_cache_is_a_miss() {
    let host = FakeHost::default();
    host.shared
        .borrow_mut()
        .insert("sub:alice".into(), ("not json".into(), 0));
    host.ok(200, r#"{"active": true}"#);
    assert_eq!(check(&host, &settings(&[]), "alice", None), Verdict::Active);
    assert_eq!(host.calls(), 1);
}

#[test]
fn context_lookup_takes_the_last_value() {
    let pairs = vec![
        ("sub".to_owned(), "first".to_owned()),
        ("x".to_owned(), "y".to_owned()),
        ("sub".to_owned(), "second".to_owned()),
    ];
    assert_eq!(crate::last(&pairs, "sub"), Some("second"));
    assert_eq!(crate::last(&pairs, "user"), None);
}
