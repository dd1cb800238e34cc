use crate::*;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use edge_guest_artifacts::AUTH_JWT;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use openssl::{ec, nid::Nid, pkey::PKey, rsa::Rsa};
use serde_json::json;

struct Keys {
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    rsa2_private: Vec<u8>,
    ec_private: Vec<u8>,
    ec_public: Vec<u8>,
    ed_private: Vec<u8>,
    ed_public: Vec<u8>,
    jwks: String,
}

/// Keys generated at test time: RSA (two, for a JWKS), P-256 and Ed25519.
fn keys() -> Keys {
    let rsa = Rsa::generate(2048).unwrap();
    let rsa2 = Rsa::generate(2048).unwrap();
    let ec_group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = PKey::from_ec_key(ec::EcKey::generate(&ec_group).unwrap()).unwrap();
    let ed = PKey::generate_ed25519().unwrap();
    let jwk = |r: &Rsa<openssl::pkey::Private>, kid: &str| {
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
               "n": B64.encode(r.n().to_vec()), "e": B64.encode(r.e().to_vec())})
    };
    let jwks = json!({"keys": [jwk(&rsa, "one"), jwk(&rsa2, "two")]}).to_string();
    Keys {
        rsa_private: rsa.private_key_to_pem().unwrap(),
        rsa_public: PKey::from_rsa(rsa.clone())
            .unwrap()
            .public_key_to_pem()
            .unwrap(),
        rsa2_private: rsa2.private_key_to_pem().unwrap(),
        ec_private: ec.private_key_to_pem_pkcs8().unwrap(),
        ec_public: ec.public_key_to_pem().unwrap(),
        ed_private: ed.private_key_to_pem_pkcs8().unwrap(),
        ed_public: ed.public_key_to_pem().unwrap(),
        jwks,
    }
}

const SECRET: &str = "jwt-test-secret-of-32-bytes-long";

fn claims(clock: &TestClock, extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sub": "user-1", "exp": clock.secs() + 600, "iss": "https://auth.test", "aud": "edge"});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn hs(clock: &TestClock, extra: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims(clock, extra),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, c: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, c, key).unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_attacks_get_401_with_a_reason_and_valid_tokens_pass() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rsa.pub"), &k.rsa_public).unwrap();
    std::fs::write(dir.path().join("ec.pub"), &k.ec_public).unwrap();
    std::fs::write(dir.path().join("ed.pub"), &k.ed_public).unwrap();
    std::fs::write(dir.path().join("jwks.json"), &k.jwks).unwrap();
    let set = policy_set(
        dir.path(),
        &format!(
            r#"
[policies.hs]
module = "{m}"
headers = ["authorization"]
config = {{ secret = "{SECRET}", issuer = "https://auth.test", audience = "edge", required_claims = "sub", leeway = "30", max_token_bytes = "4096", forward_claims = "plan" }}

[policies.rs]
module = "{m}"
headers = ["authorization"]
config = {{ algorithms = "RS256" }}
config_files = {{ public_key_pem = "rsa.pub" }}

[policies.es]
module = "{m}"
headers = ["authorization"]
config = {{ algorithms = "ES256" }}
config_files = {{ public_key_pem = "ec.pub" }}

[policies.ed]
module = "{m}"
headers = ["authorization"]
config = {{ algorithms = "EdDSA" }}
config_files = {{ public_key_pem = "ed.pub" }}

[policies.jwks]
module = "{m}"
headers = ["authorization"]
config = {{ algorithms = "RS256" }}
config_files = {{ jwks = "jwks.json" }}

[[routes]]
name = "hs"
paths = ["/hs/**"]
chain = ["hs"]
[[routes]]
name = "rs"
paths = ["/rs/**"]
chain = ["rs"]
[[routes]]
name = "es"
paths = ["/es/**"]
chain = ["es"]
[[routes]]
name = "ed"
paths = ["/ed/**"]
chain = ["ed"]
[[routes]]
name = "jwks"
paths = ["/jwks/**"]
chain = ["jwks"]
"#,
            m = module(AUTH_JWT)
        ),
    );
    let clock = TestClock::at_now();
    let s = setup(clock.clone(), Kv::memory(1000), TrustedKeys::default());
    let router = s.runtime.load(&set).unwrap();
    let ask = |path: &'static str, token: Option<String>| {
        let router = &router;
        async move {
            let auth = token.map(|t| bearer(&t));
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            run(router, path, &headers, "203.0.113.9").await
        }
    };

    // Valid tokens of every algorithm family.
    let ok = ask("/hs/a.m3u8", Some(hs(&clock, json!({"plan": "gold"})))).await;
    assert_eq!(verdict(&ok), (200, String::new()));
    assert_eq!(context(&ok, "sub").as_deref(), Some("user-1"));
    assert_eq!(context(&ok, "jwt.plan").as_deref(), Some("gold"));
    let c = claims(&clock, json!({}));
    let rs = signed(
        Algorithm::RS256,
        None,
        &EncodingKey::from_rsa_pem(&k.rsa_private).unwrap(),
        &c,
    );
    assert_eq!(verdict(&ask("/rs/a", Some(rs.clone())).await).0, 200);
    let es = signed(
        Algorithm::ES256,
        None,
        &EncodingKey::from_ec_pem(&k.ec_private).unwrap(),
        &c,
    );
    assert_eq!(verdict(&ask("/es/a", Some(es)).await).0, 200);
    let ed = signed(
        Algorithm::EdDSA,
        None,
        &EncodingKey::from_ed_pem(&k.ed_private).unwrap(),
        &c,
    );
    assert_eq!(verdict(&ask("/ed/a", Some(ed)).await).0, 200);
    // JWKS: the key is chosen by kid; an unknown kid is refused.
    let two = signed(
        Algorithm::RS256,
        Some("two"),
        &EncodingKey::from_rsa_pem(&k.rsa2_private).unwrap(),
        &c,
    );
    assert_eq!(verdict(&ask("/jwks/a", Some(two)).await).0, 200);
    let wrong_kid = signed(
        Algorithm::RS256,
        Some("one"),
        &EncodingKey::from_rsa_pem(&k.rsa2_private).unwrap(),
        &c,
    );
    assert_eq!(
        verdict(&ask("/jwks/a", Some(wrong_kid)).await),
        (401, "invalid_signature".into())
    );
    let unknown = signed(
        Algorithm::RS256,
        Some("three"),
        &EncodingKey::from_rsa_pem(&k.rsa_private).unwrap(),
        &c,
    );
    assert_eq!(
        verdict(&ask("/jwks/a", Some(unknown)).await),
        (401, "unknown_key".into())
    );

    // The attack list.
    let header = |h: serde_json::Value| B64.encode(h.to_string());
    let body = B64.encode(c.to_string());
    let none = format!("{}.{body}.", header(json!({"alg": "none", "typ": "JWT"})));
    // Algorithm confusion: an HS256 token whose HMAC key is the RSA public key PEM.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&k.rsa_public),
    )
    .unwrap();
    // Correctly signed, but the claims are not JSON.
    let unsigned = format!(
        "{}.{}",
        header(json!({"alg": "HS256"})),
        B64.encode("{not json")
    );
    let mac = jsonwebtoken::crypto::sign(
        unsigned.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let garbage_claims = format!("{unsigned}.{mac}");
    // A valid RS256 token with one signature character changed (still valid base64url).
    let mut tampered = rs.clone().into_bytes();
    let i = tampered.len() - 20;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("/hs/a", None, "missing_token"),
        ("/rs/a", Some(none), "unsupported_algorithm"),
        ("/rs/a", Some(confused), "algorithm_not_allowed"),
        ("/hs/a", Some("not.a-token".into()), "malformed_token"),
        ("/hs/a", Some("%%%.###.$$$".into()), "malformed_token"),
        ("/hs/a", Some(garbage_claims.clone()), "malformed_token"),
        ("/hs/a", Some("a".repeat(5000)), "token_too_large"),
        (
            "/hs/a",
            Some(hs(&clock, json!({"exp": clock.secs() - 120}))),
            "expired",
        ),
        (
            "/hs/a",
            Some(hs(&clock, json!({"nbf": clock.secs() + 120}))),
            "not_yet_valid",
        ),
        (
            "/hs/a",
            Some(hs(&clock, json!({"iss": "https://evil.test"}))),
            "invalid_issuer",
        ),
        (
            "/hs/a",
            Some(hs(&clock, json!({"aud": "someone-else"}))),
            "invalid_audience",
        ),
        (
            "/hs/a",
            Some(hs(&clock, json!({"sub": null}))),
            "missing_claim",
        ),
        (
            "/hs/a",
            Some(hs(&clock, json!({"exp": null}))),
            "missing_claim",
        ),
        ("/rs/a", Some(tampered), "invalid_signature"),
    ];
    for (path, token, reason) in cases {
        let shown = token.clone().unwrap_or_default();
        let o = ask(path, token).await;
        assert_eq!(
            verdict(&o),
            (401, reason.to_owned()),
            "{path} {}",
            &shown[..shown.len().min(60)]
        );
        assert!(
            crate::header(&o, "www-authenticate").is_some(),
            "{reason}: no www-authenticate"
        );
    }
    // Within the leeway, an expired token still passes; the clock moves with the edge's clock.
    assert_eq!(
        verdict(&ask("/hs/a", Some(hs(&clock, json!({"exp": clock.secs() - 10})))).await).0,
        200
    );
    // A token verified once (and remembered by the guest) still expires on time.
    let token = hs(&clock, json!({}));
    assert_eq!(verdict(&ask("/hs/a", Some(token.clone())).await).0, 200);
    clock.advance(Duration::from_secs(700));
    assert_eq!(
        verdict(&ask("/hs/a", Some(token)).await),
        (401, "expired".into())
    );
    // The query parameter works for players that cannot set headers.
    let q = format!("/hs/a.ts?access_token={}", hs(&clock, json!({})));
    let q: &'static str = Box::leak(q.into_boxed_str());
    assert_eq!(verdict(&ask(q, None).await).0, 200);
}
