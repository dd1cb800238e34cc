//! The fetched JWKS: caching, refresh turns, failures.

use super::*;

fn remote_settings() -> Settings {
    config(&[
        ("jwks_url", "https://idp.example/jwks"),
        ("jwks_ttl", "300"),
        ("jwks_min_refresh", "30"),
    ])
}

#[test]
fn jwks_url_is_fetched_once_and_cached() {
    let s = remote_settings();
    let env = FakeEnv::new();
    let token = mint(
        Algorithm::RS256,
        Some("k1"),
        &rsa_key(RSA1_PRIVATE),
        &claims(json!({})),
    );
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(env.fetches.get(), 1);
    let stored: Value = serde_json::from_str(&env.kv_get("jwks").expect("cached")).expect("json");
    assert_eq!(stored["fetched_at_ms"], json!(NOW * 1000));
    assert_eq!(env.kv.borrow()["jwks"].1, NOW * 1000 + JWKS_KV_TTL_MS);
    // Older than jwks_ttl: refreshed; a failed refresh keeps the cached document.
    env.advance_secs(301);
    env.fail();
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(env.fetches.get(), 2);
    // The failed attempt holds off further fetches for jwks_min_refresh.
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(env.fetches.get(), 2);
    env.advance_secs(31);
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(env.fetches.get(), 3);
}

#[test]
fn a_stale_copy_is_refreshed_by_one_request_only() {
    let s = remote_settings();
    let env = FakeEnv::new();
    let token = mint(
        Algorithm::RS256,
        Some("k1"),
        &rsa_key(RSA1_PRIVATE),
        &claims(json!({})),
    );
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    env.advance_secs(400);
    // Another request holds the refresh turn: this one serves the stale copy without fetching.
    env.kv_set("jwks_refresh", "x", 10_000);
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    assert_eq!(env.fetches.get(), 1);
    // A copy fetched from another URL (config changed) is not used.
    let moved = config(&[("jwks_url", "https://idp2.example/jwks")]);
    assert_eq!(reason(check_with(&env, &moved, &token)), "jwks_unavailable");
    env.advance_secs(11);
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &moved, &token)), "allowed");
    assert_eq!(env.fetches.get(), 2);
}

#[test]
fn unknown_kid_refetches_at_most_once_per_min_refresh() {
    let s = remote_settings();
    let env = FakeEnv::new();
    let one = json!({ "keys": [jwk(&rsa_key(RSA1_PRIVATE), Algorithm::RS256, Some("k1"))] });
    env.answer(200, &one.to_string());
    let k1 = mint(
        Algorithm::RS256,
        Some("k1"),
        &rsa_key(RSA1_PRIVATE),
        &claims(json!({})),
    );
    let k2 = mint(
        Algorithm::RS256,
        Some("k2"),
        &rsa_key(RSA2_PRIVATE),
        &claims(json!({})),
    );
    assert_eq!(reason(check_with(&env, &s, &k1)), "allowed");
    // Rotated at the provider, but the last fetch was just now: no refetch yet.
    assert_eq!(reason(check_with(&env, &s, &k2)), "unknown_key");
    assert_eq!(env.fetches.get(), 1);
    env.advance_secs(31);
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &s, &k2)), "allowed");
    assert_eq!(env.fetches.get(), 2);
    let k9 = mint(
        Algorithm::RS256,
        Some("k9"),
        &rsa_key(RSA2_PRIVATE),
        &claims(json!({})),
    );
    assert_eq!(reason(check_with(&env, &s, &k9)), "unknown_key");
    assert_eq!(reason(check_with(&env, &s, &k9)), "unknown_key");
    assert_eq!(env.fetches.get(), 2);
}

#[test]
fn jwks_unavailable_without_any_document() {
    let s = remote_settings();
    let env = FakeEnv::new();
    let token = mint(
        Algorithm::RS256,
        Some("k1"),
        &rsa_key(RSA1_PRIVATE),
        &claims(json!({})),
    );
    env.answer(500, "oops");
    assert_eq!(reason(check_with(&env, &s, &token)), "jwks_unavailable");
    // Throttled: the next request does not fetch again.
    assert_eq!(reason(check_with(&env, &s, &token)), "jwks_unavailable");
    assert_eq!(env.fetches.get(), 1);
    env.advance_secs(30);
    env.answer(200, "{\"keys\": \"nope\"}");
    assert_eq!(reason(check_with(&env, &s, &token)), "jwks_unavailable");
    env.advance_secs(30);
    env.answer(200, &two_rsa_jwks());
    assert_eq!(reason(check_with(&env, &s, &token)), "allowed");
    // HS256 needs no JWKS and is not allowed here anyway.
    assert_eq!(
        reason(check_with(&env, &s, &hs(&claims(json!({}))))),
        "algorithm_not_allowed"
    );
}
