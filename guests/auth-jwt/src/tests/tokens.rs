//! Finding the token, its header and its signature; hostile input.

use super::*;

#[test]
fn hs256_token_is_admitted_with_its_claims() {
    let got = check(&hs_settings(), &hs(&claims(json!({}))));
    assert_eq!(got.expect("valid").get("sub"), Some(&json!("alice")));
}

#[test]
fn token_sources_header_then_query_or_subprotocol() {
    let s = hs_settings();
    let env = FakeEnv::new();
    let token = hs(&claims(json!({})));
    assert_eq!(reason(authenticate(&env, &s, &[], "")), "missing_token");
    let query = format!("a=1&access_token={token}");
    assert_eq!(reason(authenticate(&env, &s, &[], &query)), "allowed");
    let lower = vec![("authorization".to_owned(), format!("bEaReR   {token}"))];
    assert_eq!(reason(authenticate(&env, &s, &lower, "")), "allowed");
    // Another scheme carries no bearer token: the query is used instead.
    let bare = vec![("authorization".to_owned(), "Bearer ".to_owned())];
    assert_eq!(reason(authenticate(&env, &s, &bare, "")), "missing_token");
    let basic = vec![("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned())];
    assert_eq!(reason(authenticate(&env, &s, &basic, "")), "missing_token");
    assert_eq!(reason(authenticate(&env, &s, &basic, &query)), "allowed");
    let twice = format!("access_token={token}&access_token=x");
    assert_eq!(
        reason(authenticate(&env, &s, &[], &twice)),
        "malformed_token"
    );
    let no_query = config(&[("secret", SECRET), ("query_param", "")]);
    assert_eq!(
        reason(authenticate(&env, &no_query, &[], &query)),
        "missing_token"
    );
    // An offered WebSocket subprotocol carries it too (browsers cannot set headers).
    let offered = |v: &str| vec![("Sec-WebSocket-Protocol".to_owned(), v.to_owned())];
    let ws = offered(&format!("signaling, access_token.{token}"));
    assert_eq!(reason(authenticate(&env, &s, &ws, "")), "allowed");
    assert_eq!(reason(authenticate(&env, &s, &ws, &query)), "allowed");
    let other = offered("signaling, access_token.x.y.z");
    assert_eq!(
        reason(authenticate(&env, &s, &other, &query)),
        "malformed_token"
    );
    // A header token beside a different subprotocol token is ambiguous; beside the same one
    // (or beside a different query token) the header's is used.
    let both = |header: &str, protocols: &str| {
        let mut h = offered(protocols);
        h.push(("authorization".to_owned(), format!("Bearer {header}")));
        h
    };
    let same = both(&token, &format!("signaling, access_token.{token}"));
    assert_eq!(reason(authenticate(&env, &s, &same, "")), "allowed");
    let differ = both(&token, "signaling, access_token.x.y.z");
    assert_eq!(
        reason(authenticate(&env, &s, &differ, "")),
        "malformed_token"
    );
    let stale_query = both(&token, "signaling");
    assert_eq!(
        reason(authenticate(&env, &s, &stale_query, "access_token=x.y.z")),
        "allowed"
    );
    let bare = offered("signaling, access_token.");
    assert_eq!(reason(authenticate(&env, &s, &bare, "")), "missing_token");
    let off = config(&[("secret", SECRET), ("subprotocol_prefix", "")]);
    assert_eq!(reason(authenticate(&env, &off, &ws, "")), "missing_token");
    let custom = config(&[("secret", SECRET), ("header", "X-Token")]);
    let raw = vec![("x-token".to_owned(), token.clone())];
    assert_eq!(reason(authenticate(&env, &custom, &raw, "")), "allowed");
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let s = config(&[("secret", SECRET), ("max_token_bytes", "64")]);
    assert_eq!(
        reason(check(&s, &hs(&claims(json!({}))))),
        "token_too_large"
    );
    assert_eq!(
        reason(check(&hs_settings(), &"a".repeat(9000))),
        "token_too_large"
    );
}

#[test]
fn alg_none_and_unknown_algorithms_are_unsupported() {
    let s = hs_settings();
    let payload = base64_url(&claims(json!({})).to_string());
    for alg in ["none", "None", "HS1", "RS1"] {
        let header = base64_url(&json!({ "alg": alg, "typ": "JWT" }).to_string());
        assert_eq!(
            reason(check(&s, &format!("{header}.{payload}."))),
            "unsupported_algorithm"
        );
        assert_eq!(
            reason(check(&s, &format!("{header}.{payload}.c2ln"))),
            "unsupported_algorithm"
        );
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let forged = mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(RSA1_PUBLIC.as_bytes()),
        &claims(json!({})),
    );
    // Public key only: HS256 is not even an allowed algorithm.
    let public_only = config(&[("public_key_pem", RSA1_PUBLIC)]);
    assert_eq!(
        reason(check(&public_only, &forged)),
        "algorithm_not_allowed"
    );
    // Told to accept HS256 too, it still verifies HS256 with the secret, never the PEM.
    let both = config(&[
        ("secret", SECRET),
        ("public_key_pem", RSA1_PUBLIC),
        ("algorithms", "HS256,RS256"),
    ]);
    assert_eq!(reason(check(&both, &forged)), "invalid_signature");
    // And an HS256-only policy cannot be configured without a secret.
    assert!(parse(&[("public_key_pem", RSA1_PUBLIC), ("algorithms", "HS256")]).is_err());
}

#[test]
fn broken_tokens_are_malformed() {
    let s = hs_settings();
    let good = hs(&claims(json!({})));
    let (head, rest) = good.split_once('.').expect("dots");
    for bad in [
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        format!("!!!{head}.{rest}"),
        format!("{}.{rest}", base64_url("{not json")),
        format!("{}.{rest}", base64_url("[1,2]")),
        format!("{}.{rest}", base64_url(r#"{"typ":"JWT"}"#)),
    ] {
        assert_eq!(reason(check(&s, &bad)), "malformed_token", "{bad}");
    }
    // Garbage claims under a valid signature.
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let message = format!(
        "{}.{}",
        base64_url(r#"{"alg":"HS256"}"#),
        base64_url("not json")
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("sign");
    assert_eq!(
        reason(check(&s, &format!("{message}.{sig}"))),
        "malformed_token"
    );
    // A signature that is not base64url.
    assert_eq!(
        reason(check(&s, &format!("{message}.@@@@"))),
        "malformed_token"
    );
}

#[test]
fn tampered_or_truncated_tokens_are_refused() {
    let s = hs_settings();
    let good = hs(&claims(json!({})));
    let truncated = &good[..good.len() - 4];
    let got = reason(check(&s, truncated));
    assert!(
        ["invalid_signature", "malformed_token"].contains(&got),
        "{got}"
    );
    let other = mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another secret"),
        &claims(json!({})),
    );
    assert_eq!(reason(check(&s, &other)), "invalid_signature");
    let (head, rest) = good.split_once('.').expect("dots");
    let (_, sig) = rest.split_once('.').expect("dots");
    let payload = base64_url(&claims(json!({ "sub": "mallory" })).to_string());
    assert_eq!(
        reason(check(&s, &format!("{head}.{payload}.{sig}"))),
        "invalid_signature"
    );
}

#[test]
fn hostile_inputs_never_panic() {
    let s = config(&[
        ("secret", SECRET),
        ("jwks", &two_rsa_jwks()),
        ("algorithms", "HS256,RS256,ES256,EdDSA"),
    ]);
    let header = |h: Value| base64_url(&h.to_string());
    let inputs = [
        String::new(),
        ".".repeat(2),
        "..".repeat(2000),
        "\u{0}\u{ff}.\u{1}.\u{2}".to_owned(),
        format!("{}..", header(json!({ "alg": "EdDSA" }))),
        format!(
            "{}.e30.AAAA",
            header(json!({ "alg": "RS256", "kid": "k1" }))
        ),
        format!(
            "{}.e30.AAAA",
            header(json!({ "alg": "ES256", "jwk": { "kty": "EC" } }))
        ),
        format!("{}.e30.", header(json!({ "alg": "HS256", "crit": ["x"] }))),
        format!("{}.bnVsbA.", header(json!({ "alg": 7 }))),
        format!("{}.W10.", header(json!(null))),
    ];
    for input in inputs {
        let got = check(&s, &input);
        assert!(got.is_err(), "{input:?} was admitted");
    }
}
