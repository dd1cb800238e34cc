//! Claims judged at the edge's time; statuses and the context of an allow.

use super::*;

#[test]
fn expiry_and_not_before_honour_the_leeway() {
    let s = hs_settings(); // leeway 30 s
    let at = |exp: u64| hs(&json!({ "sub": "a", "exp": exp }));
    assert_eq!(reason(check(&s, &at(NOW - 31))), "expired");
    assert_eq!(reason(check(&s, &at(NOW - 30))), "allowed");
    assert_eq!(reason(check(&s, &at(NOW - 10))), "allowed");
    let strict = config(&[("secret", SECRET), ("leeway", "0")]);
    assert_eq!(reason(check(&strict, &at(NOW - 1))), "expired");
    let nbf = |nbf: u64| hs(&claims(json!({ "nbf": nbf })));
    assert_eq!(reason(check(&s, &nbf(NOW + 31))), "not_yet_valid");
    assert_eq!(reason(check(&s, &nbf(NOW + 30))), "allowed");
    assert_eq!(reason(check(&strict, &nbf(NOW + 1))), "not_yet_valid");
    let text_exp = hs(&json!({ "sub": "a", "exp": "tomorrow" }));
    assert_eq!(reason(check(&s, &text_exp)), "malformed_token");
    let float_exp = hs(&json!({ "sub": "a", "exp": (NOW + 5) as f64 + 0.5 }));
    assert_eq!(reason(check(&s, &float_exp)), "allowed");
}

#[test]
fn issuer_and_audience() {
    let s = config(&[
        ("secret", SECRET),
        ("issuer", "https://idp.example"),
        ("audience", "edge, player"),
    ]);
    let with = |extra: Value| hs(&claims(extra));
    let iss = "https://idp.example";
    assert_eq!(
        reason(check(&s, &with(json!({ "iss": iss, "aud": "player" })))),
        "allowed"
    );
    assert_eq!(
        reason(check(
            &s,
            &with(json!({ "iss": iss, "aud": ["x", "edge"] }))
        )),
        "allowed"
    );
    assert_eq!(
        reason(check(&s, &with(json!({ "iss": "evil", "aud": "edge" })))),
        "invalid_issuer"
    );
    assert_eq!(
        reason(check(&s, &with(json!({ "aud": "edge" })))),
        "invalid_issuer"
    );
    assert_eq!(
        reason(check(&s, &with(json!({ "iss": iss, "aud": "api" })))),
        "invalid_audience"
    );
    assert_eq!(
        reason(check(&s, &with(json!({ "iss": iss, "aud": [] })))),
        "invalid_audience"
    );
    assert_eq!(
        reason(check(&s, &with(json!({ "iss": iss })))),
        "invalid_audience"
    );
    // Without `audience`, any (or no) `aud` is fine.
    assert_eq!(
        reason(check(&hs_settings(), &with(json!({ "aud": "api" })))),
        "allowed"
    );
}

#[test]
fn required_claims_and_exp_are_required() {
    let s = config(&[("secret", SECRET), ("required_claims", "sub, tenant")]);
    assert_eq!(reason(check(&s, &hs(&claims(json!({}))))), "missing_claim");
    assert_eq!(
        reason(check(&s, &hs(&claims(json!({ "tenant": null }))))),
        "missing_claim"
    );
    assert_eq!(
        reason(check(&s, &hs(&claims(json!({ "tenant": "t1" }))))),
        "allowed"
    );
    assert_eq!(
        reason(check(&hs_settings(), &hs(&json!({ "sub": "a" })))),
        "missing_claim"
    );
}

#[test]
fn statuses_and_challenges() {
    assert_eq!(Reject::MissingToken.challenge(), Some("Bearer"));
    assert_eq!(Reject::Expired.status(), 401);
    assert_eq!(
        Reject::Expired.challenge(),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(Reject::JwksUnavailable.status(), 503);
    assert_eq!(Reject::JwksUnavailable.challenge(), None);
}

#[test]
fn context_has_sub_and_forwarded_claims() {
    let s = config(&[("secret", SECRET), ("forward_claims", "tier,roles,missing")]);
    let c = check(
        &s,
        &hs(&json!({ "sub": 42, "exp": NOW + 60, "tier": "gold", "roles": ["a"] })),
    )
    .expect("valid");
    let context = crate::context(&c, &s);
    let expires = (NOW + 60 + 30).to_string();
    let expected = [
        ("sub", "42"),
        ("expires_at", expires.as_str()),
        ("jwt.tier", "gold"),
        ("jwt.roles", "[\"a\"]"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    assert_eq!(context, expected);
}
