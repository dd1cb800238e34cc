//! PEM and inline JWKS keys, kid selection, and config errors.

use super::*;

#[test]
fn asymmetric_algorithms_with_pem_keys() {
    let c = claims(json!({}));
    let rs = mint(Algorithm::RS256, Some("any"), &rsa_key(RSA1_PRIVATE), &c);
    let rsa = config(&[("public_key_pem", RSA1_PUBLIC)]);
    assert_eq!(reason(check(&rsa, &rs)), "allowed");
    let rs2 = mint(Algorithm::RS256, None, &rsa_key(RSA2_PRIVATE), &c);
    assert_eq!(reason(check(&rsa, &rs2)), "invalid_signature");
    let ps = mint(Algorithm::PS256, None, &rsa_key(RSA1_PRIVATE), &c);
    assert_eq!(reason(check(&rsa, &ps)), "algorithm_not_allowed");
    let rsa_ps = config(&[("public_key_pem", RSA1_PUBLIC), ("algorithms", "PS256")]);
    assert_eq!(reason(check(&rsa_ps, &ps)), "allowed");

    let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key");
    let es = mint(Algorithm::ES256, None, &ec_key, &c);
    let ec = config(&[("public_key_pem", EC_PUBLIC)]);
    assert_eq!(reason(check(&ec, &es)), "allowed");
    // An RSA-only key set has no key for an ES256 token.
    assert_eq!(reason(check(&rsa, &es)), "unknown_key");

    let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed key");
    let ed = config(&[("public_key_pem", ED_PUBLIC)]);
    assert_eq!(
        reason(check(&ed, &mint(Algorithm::EdDSA, None, &ed_key, &c))),
        "allowed"
    );
}

#[test]
fn jwks_kid_selection() {
    let s = config(&[("jwks", &two_rsa_jwks())]);
    let c = claims(json!({}));
    let by = |kid: Option<&str>, pem: &str| mint(Algorithm::RS256, kid, &rsa_key(pem), &c);
    assert_eq!(reason(check(&s, &by(Some("k1"), RSA1_PRIVATE))), "allowed");
    assert_eq!(reason(check(&s, &by(Some("k2"), RSA2_PRIVATE))), "allowed");
    assert_eq!(
        reason(check(&s, &by(Some("k1"), RSA2_PRIVATE))),
        "invalid_signature"
    );
    assert_eq!(
        reason(check(&s, &by(Some("k3"), RSA1_PRIVATE))),
        "unknown_key"
    );
    // No kid and two candidate keys: ambiguous.
    assert_eq!(reason(check(&s, &by(None, RSA1_PRIVATE))), "unknown_key");
    // The kid of an RSA key does not make it an EC key.
    let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key");
    let es = mint(Algorithm::ES256, Some("k1"), &ec_key, &c);
    assert_eq!(reason(check(&s, &es)), "unknown_key");
    // One key and no kid: that key.
    let one = json!({ "keys": [jwk(&rsa_key(RSA1_PRIVATE), Algorithm::RS256, None)] });
    let one = config(&[("jwks", &one.to_string())]);
    assert_eq!(reason(check(&one, &by(None, RSA1_PRIVATE))), "allowed");
}

#[test]
fn jwks_skips_keys_it_must_not_or_cannot_use() {
    let mut enc = jwk(&rsa_key(RSA2_PRIVATE), Algorithm::RS256, Some("enc"));
    enc["use"] = json!("enc");
    let doc = json!({ "keys": [
        { "kty": "oct", "k": base64_url(SECRET), "kid": "hmac" },
        { "kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short" },
        { "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "bad-ec" },
        { "kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB", "kid": "oaep" },
        { "kty": "weird" },
        enc,
        jwk(&rsa_key(RSA1_PRIVATE), Algorithm::RS256, Some("k1")),
    ]});
    let keys = crate::keys::KeySet::from_jwks(&doc.to_string()).expect("one usable key");
    assert_eq!(keys.len(), 1);
    // A JWKS `oct` key never verifies HS256 tokens.
    let s = config(&[("jwks", &doc.to_string()), ("algorithms", "RS256")]);
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let forged = mint(Algorithm::HS256, Some("hmac"), &key, &claims(json!({})));
    assert_eq!(reason(check(&s, &forged)), "algorithm_not_allowed");
    let ed = mint(
        Algorithm::EdDSA,
        Some("short"),
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed"),
        &claims(json!({})),
    );
    let ed_allowed = config(&[("jwks", &doc.to_string()), ("algorithms", "EdDSA")]);
    assert_eq!(reason(check(&ed_allowed, &ed)), "unknown_key");
}

#[test]
fn misconfigurations_are_reported() {
    for bad in [
        vec![],
        vec![("secret", "")],
        vec![("public_key_pem", "not a pem")],
        vec![("public_key_pem", RSA1_PRIVATE)],
        vec![("public_key_pem", RSA1_PUBLIC), ("jwks", "{}")],
        vec![("jwks", "{\"keys\": []}")],
        vec![("jwks", "[")],
        vec![("jwks_url", "ftp://idp")],
        vec![("secret", SECRET), ("algorithms", "HS256,XS999")],
        vec![("secret", SECRET), ("algorithms", "none")],
        vec![("secret", SECRET), ("algorithms", "RS256")],
        vec![("secret", SECRET), ("leeway", "-1")],
        vec![("secret", SECRET), ("max_token_bytes", "0")],
        vec![
            ("secret", SECRET),
            ("header", ""),
            ("query_param", ""),
            ("subprotocol_prefix", ""),
        ],
    ] {
        assert!(parse(&bad).is_err(), "{bad:?} should be refused");
    }
    let both = config(&[("secret", SECRET), ("jwks_url", "https://idp/jwks")]);
    let algs = [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    assert_eq!(both.algorithms, algs);
    assert_eq!(Reject::PolicyMisconfigured.status(), 503);
}
