//! Tokens minted with jsonwebtoken itself, checked against every denial reason, with a fake edge
//! for the JWKS cache.

mod claims;
mod jwks_url;
mod keys;
mod tokens;

use crate::jwks::{Env, JWKS_KV_TTL_MS};
use crate::reject::Reject;
use crate::settings::{KEYS, Settings};
use crate::verify::{Claims, authenticate};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "test-secret-at-least-32-bytes-long!!";
const RSA1_PRIVATE: &str = include_str!("../../testdata/rsa1_private.pem");
const RSA1_PUBLIC: &str = include_str!("../../testdata/rsa1_public.pem");
const RSA2_PRIVATE: &str = include_str!("../../testdata/rsa2_private.pem");
const EC_PRIVATE: &str = include_str!("../../testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../testdata/ec_public.pem");
const ED_PRIVATE: &str = include_str!("../../testdata/ed_private.pem");
const ED_PUBLIC: &str = include_str!("../../testdata/ed_public.pem");

type Answer = Result<(u16, Vec<u8>), String>;

/// A fake edge: a clock, a local kv with TTLs, and queued HTTP answers.
#[derive(Default)]
struct FakeEnv {
    now_ms: Cell<u64>,
    kv: RefCell<HashMap<String, (String, u64)>>,
    answers: RefCell<VecDeque<Answer>>,
    fetches: Cell<usize>,
}

impl FakeEnv {
    fn new() -> Self {
        let env = FakeEnv::default();
        env.now_ms.set(NOW * 1000);
        env
    }
    fn answer(&self, status: u16, body: &str) {
        self.answers
            .borrow_mut()
            .push_back(Ok((status, body.as_bytes().to_vec())));
    }
    fn fail(&self) {
        self.answers.borrow_mut().push_back(Err("refused".into()));
    }
    fn advance_secs(&self, secs: u64) {
        self.now_ms.set(self.now_ms.get() + secs * 1000);
    }
}

impl Env for FakeEnv {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }
    fn kv_get(&self, key: &str) -> Option<String> {
        let kv = self.kv.borrow();
        let (value, expires) = kv.get(key)?;
        (*expires > self.now_ms.get()).then(|| value.clone())
    }
    fn kv_set(&self, key: &str, value: &str, ttl_ms: u64) {
        let expires = self.now_ms.get() + ttl_ms;
        self.kv
            .borrow_mut()
            .insert(key.into(), (value.into(), expires));
    }
    fn kv_take(&self, key: &str, value: &str, ttl_ms: u64) -> bool {
        if self.kv_get(key).is_some() {
            return false;
        }
        self.kv_set(key, value, ttl_ms);
        true
    }
    fn http_get(&self, _url: &str) -> Result<(u16, Vec<u8>), String> {
        self.fetches.set(self.fetches.get() + 1);
        self.answers
            .borrow_mut()
            .pop_front()
            .unwrap_or(Err("no answer queued".into()))
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

fn config(pairs: &[(&str, &str)]) -> Settings {
    parse(pairs).unwrap_or_else(|e| panic!("config {pairs:?}: {e}"))
}

fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "alice", "exp": NOW + 600 });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn mint(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("mint")
}

fn hs(claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn rsa_key(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa key")
}

fn check_with(env: &FakeEnv, s: &Settings, token: &str) -> Result<Claims, Reject> {
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    authenticate(env, s, &headers, "")
}

fn check(s: &Settings, token: &str) -> Result<Claims, Reject> {
    check_with(&FakeEnv::new(), s, token)
}

fn reason(result: Result<Claims, Reject>) -> &'static str {
    match result {
        Ok(_) => "allowed",
        Err(r) => r.reason(),
    }
}

fn hs_settings() -> Settings {
    config(&[("secret", SECRET)])
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
    jwk.common.key_id = kid.map(str::to_owned);
    serde_json::to_value(jwk).expect("jwk json")
}

fn two_rsa_jwks() -> String {
    json!({ "keys": [
        jwk(&rsa_key(RSA1_PRIVATE), Algorithm::RS256, Some("k1")),
        jwk(&rsa_key(RSA2_PRIVATE), Algorithm::RS256, Some("k2")),
    ]})
    .to_string()
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
