//! Signed-URL policy: admits a request only with a valid HMAC-SHA256 token for its path.
//!
//! Config (`[policies.NAME.config]`):
//! - `secret` (required): the HMAC key, the same the edge signs with (`${SIGNED_URL_SECRET}`).
//! - `param` (default `token`): the query parameter carrying the token.
//! - `require_client_binding` (default `false`): refuse tokens not bound to a client address.
//!
//! On success it asks the edge to propagate the token into the manifests it serves, so players
//! fetch variant playlists and segments with it. Denials are 403 with a reason code from
//! [`edge_urlsig::Rejection::reason`]; a missing secret is 503 `policy_misconfigured`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

use edge::policy::types::{Allow, Decision, Deny, Request};
use edge::policy::{clock, config};
use edge_urlsig::{Grant, Key, Rejection};
use std::sync::{Mutex, OnceLock};

/// Tokens whose signature was already checked, with what they grant (and, for bound tokens, the
/// address they authenticated for). Authentication is a pure function of the key, the token and
/// that address, so remembering it keeps the policy stateless in effect: expiry, scope and client
/// are still checked on every request. A viewer's segment requests then skip the HMAC.
const MEMO_SLOTS: usize = 16;

struct Memo {
    slots: Vec<(String, String, Grant)>,
    next: usize,
}

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(|| {
        Mutex::new(Memo {
            slots: Vec::with_capacity(MEMO_SLOTS),
            next: 0,
        })
    })
}

fn authenticate(key: &Key, token: &str, client_addr: &str) -> Result<Grant, Rejection> {
    let mut memo = memo().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, grant)) = memo
        .slots
        .iter()
        .find(|(t, c, g)| t == token && (g.client_addr.is_none() || c == client_addr))
    {
        return Ok(grant.clone());
    }
    let grant = key.authenticate(token, client_addr)?;
    let entry = (token.to_owned(), client_addr.to_owned(), grant.clone());
    if memo.slots.len() < MEMO_SLOTS {
        memo.slots.push(entry);
    } else {
        let i = memo.next;
        memo.slots[i] = entry;
        memo.next = (i + 1) % MEMO_SLOTS;
    }
    Ok(grant)
}

struct Settings {
    key: Option<Key>,
    param: String,
    require_binding: bool,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings {
        key: config::get("secret")
            .filter(|s| !s.is_empty())
            .map(|s| Key::new(s.as_bytes())),
        param: config::get("param").unwrap_or_else(|| "token".into()),
        require_binding: config::get("require_client_binding").is_some_and(|v| v == "true"),
    })
}

/// Finds the one token in `query`. Two different values for the parameter are refused: which
/// one a cache or an origin would honour is ambiguous.
fn find_token<'q>(query: &'q str, param: &str) -> Result<std::borrow::Cow<'q, str>, Rejection> {
    let mut found: Option<std::borrow::Cow<'q, str>> = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == param {
            match &found {
                Some(prev) if *prev != v => return Err(Rejection::Malformed),
                _ => found = Some(v),
            }
        }
    }
    found.ok_or(Rejection::Missing)
}

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Deny {
        status,
        reason: reason.into(),
        headers: Vec::new(),
    })
}

struct SignedUrl;

impl exports::edge::policy::decide::Guest for SignedUrl {
    fn decide(req: Request) -> Decision {
        let s = settings();
        let Some(key) = &s.key else {
            return deny(503, "policy_misconfigured");
        };
        let token = match find_token(&req.query, &s.param) {
            Ok(t) => t,
            Err(r) => return deny(403, r.reason()),
        };
        let now = clock::now_millis() / 1000;
        let verdict = authenticate(key, &token, &req.client_addr).and_then(|grant| {
            grant.authorize(&req.path, &req.client_addr, now)?;
            Ok(grant)
        });
        match verdict {
            Ok(grant) if s.require_binding && grant.client_addr.is_none() => {
                deny(403, "client_binding_required")
            }
            Ok(_) => Decision::Allow(Allow {
                response_headers: Vec::new(),
                context: Vec::new(),
                propagate_query: vec![(s.param.clone(), token.into_owned())],
            }),
            Err(r) => deny(403, r.reason()),
        }
    }
}

export!(SignedUrl);
