//! From a request's headers and query to verified claims, or the first reason to refuse.

use crate::jwks::{self, Env};
use crate::reject::Reject;
use crate::settings::{PublicKeys, Settings, family};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::str::FromStr;

pub(crate) type Claims = Map<String, Value>;

/// Splits `Bearer <token>` (scheme case-insensitive). A value with another scheme carries no
/// bearer token; a value without any scheme is the token itself (custom headers).
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        Some(_) => None,
        None if value.eq_ignore_ascii_case("bearer") => None,
        None => Some(value),
    }
    .filter(|t| !t.is_empty())
}

/// The token from the configured header, else from the query parameter or an offered
/// WebSocket subprotocol (`Sec-WebSocket-Protocol: signaling, access_token.<JWT>`). Two
/// different values from the query and the subprotocols are refused: which one a later hop
/// would honour is ambiguous. So is a header token beside a different subprotocol token (the
/// subprotocol is what a browser's page chose; a header on a WebSocket handshake came from
/// elsewhere). A header token beside a different query token wins: a player's refreshed
/// header meets the URLs of a playlist fetched with the old token.
pub(crate) fn find_token<'a>(
    headers: &'a [(String, String)],
    query: &'a str,
    s: &Settings,
) -> Result<Cow<'a, str>, Reject> {
    let offered = || {
        let prefix = s.subprotocol_prefix.as_deref();
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, v)| v.split(','))
            .filter_map(move |p| p.trim().strip_prefix(prefix?))
            .filter(|t| !t.is_empty())
    };
    if !s.header.is_empty() {
        let value = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&s.header));
        if let Some(token) = value.and_then(|(_, v)| bearer(v)) {
            if offered().any(|t| t != token) {
                return Err(Reject::MalformedToken);
            }
            return Ok(Cow::Borrowed(token));
        }
    }
    let mut found: Option<Cow<'a, str>> = None;
    let mut take = |v: Cow<'a, str>| match &found {
        Some(prev) if *prev != v => Err(Reject::MalformedToken),
        _ => {
            found = Some(v);
            Ok(())
        }
    };
    if let Some(param) = &s.query_param {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == param.as_str() && !v.is_empty() {
                take(v)?;
            }
        }
    }
    for token in offered() {
        take(Cow::Borrowed(token))?;
    }
    found.ok_or(Reject::MissingToken)
}

/// The token's header. When jsonwebtoken cannot parse it, the header JSON is read here to tell
/// an algorithm it does not support (`none`, `HS1`, ...) from a broken token.
pub(crate) fn inspect_header(token: &str) -> Result<Header, Reject> {
    let mut parts = token.split('.');
    let first = parts.next().unwrap_or("");
    if parts.count() != 2 {
        return Err(Reject::MalformedToken);
    }
    if let Ok(header) = jsonwebtoken::decode_header(token) {
        return Ok(header);
    }
    let json = URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| Reject::MalformedToken)?;
    let value: Value = serde_json::from_slice(&json).map_err(|_| Reject::MalformedToken)?;
    match value.get("alg").and_then(Value::as_str) {
        Some(alg) if Algorithm::from_str(alg).is_err() => Err(Reject::UnsupportedAlgorithm),
        _ => Err(Reject::MalformedToken),
    }
}

/// Checks the signature with `key` and returns the claims (no claim is judged here).
pub(crate) fn verify_signature(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Claims, Reject> {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    match jsonwebtoken::decode::<Claims>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidClaimFormat(_) => Reject::MalformedToken,
            _ => Reject::InvalidSignature,
        }),
    }
}

fn numeric(claims: &Claims, name: &str) -> Result<Option<f64>, Reject> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or(Reject::MalformedToken),
    }
}

fn matches_any(claim: Option<&Value>, accepted: &[String]) -> bool {
    let accepted = |v: &Value| v.as_str().is_some_and(|s| accepted.iter().any(|a| a == s));
    match claim {
        Some(Value::Array(items)) => items.iter().any(accepted),
        Some(v) => accepted(v),
        None => false,
    }
}

/// Judges the claims at `now` (seconds since the epoch, the edge's clock).
pub(crate) fn check_claims(claims: &Claims, s: &Settings, now: u64) -> Result<(), Reject> {
    let present = |name: &str| !matches!(claims.get(name), None | Some(Value::Null));
    if !s.required_claims.iter().all(|c| present(c)) {
        return Err(Reject::MissingClaim);
    }
    let now = now as f64;
    let leeway = s.leeway as f64;
    if numeric(claims, "exp")?.is_some_and(|exp| exp + leeway < now) {
        return Err(Reject::Expired);
    }
    if numeric(claims, "nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Reject::NotYetValid);
    }
    if let Some(issuer) = &s.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(Reject::InvalidIssuer);
    }
    if !s.audience.is_empty() && !matches_any(claims.get("aud"), &s.audience) {
        return Err(Reject::InvalidAudience);
    }
    Ok(())
}

/// The whole check: find the token, choose the key its header asks for (HS* only ever the
/// `secret`, everything else only public keys), verify it, judge its claims at the edge's time.
pub(crate) fn authenticate(
    env: &impl Env,
    s: &Settings,
    headers: &[(String, String)],
    query: &str,
) -> Result<Claims, Reject> {
    let token = find_token(headers, query, s)?;
    if token.len() > s.max_token_bytes {
        return Err(Reject::TokenTooLarge);
    }
    let header = inspect_header(&token)?;
    let alg = header.alg;
    if !s.algorithms.contains(&alg) {
        return Err(Reject::AlgorithmNotAllowed);
    }
    let key = match (family(alg), &s.public) {
        (AlgorithmFamily::Hmac, _) => s.secret.clone().ok_or(Reject::AlgorithmNotAllowed)?,
        (_, PublicKeys::None) => return Err(Reject::AlgorithmNotAllowed),
        (_, PublicKeys::Static(keys)) => keys
            .select(alg, header.kid.as_deref())
            .cloned()
            .ok_or(Reject::UnknownKey)?,
        (_, PublicKeys::Remote(remote)) => jwks::resolve(env, remote, alg, header.kid.as_deref())?,
    };
    let claims = verify_signature(&token, &key, alg)?;
    check_claims(&claims, s, env.now_ms() / 1000)?;
    Ok(claims)
}

/// A claim as a context value: strings as they are, anything else as compact JSON.
pub(crate) fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
