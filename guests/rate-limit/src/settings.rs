//! The policy's config for one request's route, parsed and checked.

use crate::gcra::Limit;

/// Most requests one key may be allowed at once.
const MAX_BURST: u64 = 1_000_000;
/// Most read-compute-CAS retries on a lost race.
const MAX_CAS_RETRIES: u32 = 1000;

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyBy {
    /// The context's `sub`, else the client address.
    Subject,
    /// The client address.
    Client,
    /// The route and the subject (else the client address): one budget per route.
    RouteSubject,
}

/// Where the state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// This edge process (`local` kv scope).
    Local,
    /// Every edge (`shared` kv scope), falling back to `local` when it is unavailable.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) limit: Limit,
    pub(crate) key_by: KeyBy,
    pub(crate) mode: Mode,
    pub(crate) cas_retries: u32,
    /// The route has its own `rate.<route>` / `burst.<route>`, so its state is kept apart.
    pub(crate) route_override: bool,
}

/// `N/s`, `N/m` or `N/h`: the count and the period in microseconds.
pub(crate) fn parse_rate(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("rate is `N/s`, `N/m` or `N/h` with N >= 1, not {text:?}");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let period_us: u64 = match unit.trim() {
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(bad());
    }
    if count > period_us {
        return Err(format!(
            "rate {text:?} is above one request per microsecond"
        ));
    }
    Ok((count, period_us))
}

fn whole<T: std::str::FromStr>(value: &str, key: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{key}` is not a whole number: {value:?}"))
}

impl Settings {
    /// The settings for a request on `route`; `get` reads a config key. Empty values count as
    /// unset.
    pub(crate) fn parse(
        get: impl Fn(&str) -> Option<String>,
        route: &str,
    ) -> Result<Settings, String> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let route_rate = get(&format!("rate.{route}"));
        let route_burst = get(&format!("burst.{route}"));
        let rate = match &route_rate {
            Some(r) => r.clone(),
            None => get("rate").ok_or("`rate` is required")?,
        };
        let (count, period_us) = parse_rate(&rate)?;
        let interval_us = period_us.div_ceil(count);
        // A route's own rate brings its own default burst; a global `burst` applies to the
        // global rate only.
        let burst = match (&route_burst, &route_rate, get("burst")) {
            (Some(b), _, _) => whole(b, &format!("burst.{route}"))?,
            (None, Some(_), _) | (None, None, None) => count,
            (None, None, Some(b)) => whole(&b, "burst")?,
        };
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(format!("burst must be 1 to {MAX_BURST}, not {burst}"));
        }
        let key_by = match get("key").as_deref().map(str::trim) {
            None | Some("subject") => KeyBy::Subject,
            Some("client") => KeyBy::Client,
            Some("route_subject") => KeyBy::RouteSubject,
            Some(other) => {
                return Err(format!(
                    "`key` is `subject`, `client` or `route_subject`, not {other:?}"
                ));
            }
        };
        let mode = match get("mode").as_deref().map(str::trim) {
            None | Some("local") => Mode::Local,
            Some("global") => Mode::Global,
            Some(other) => return Err(format!("`mode` is `local` or `global`, not {other:?}")),
        };
        let cas_retries = match get("cas_retries") {
            None => 16,
            Some(v) => whole(&v, "cas_retries")?,
        };
        if cas_retries > MAX_CAS_RETRIES {
            return Err(format!("`cas_retries` is at most {MAX_CAS_RETRIES}"));
        }
        Ok(Settings {
            limit: Limit { interval_us, burst },
            key_by,
            mode,
            cas_retries,
            route_override: route_rate.is_some() || route_burst.is_some(),
        })
    }

    /// The kv key of the budget a request spends: `gcra:<route>:sub:<subject>` or
    /// `gcra:<route>:ip:<address>`, with `<route>` empty unless the budget is per route. The route
    /// name is escaped (`%` and `:`) so that no two budgets can share a key.
    pub(crate) fn state_key(&self, route: &str, subject: Option<&str>, client: &str) -> String {
        let subject = subject.filter(|s| !s.is_empty());
        let id = match (self.key_by, subject) {
            (KeyBy::Client, _) | (_, None) => format!("ip:{client}"),
            (_, Some(sub)) => format!("sub:{sub}"),
        };
        let route = if self.key_by == KeyBy::RouteSubject || self.route_override {
            route.replace('%', "%25").replace(':', "%3A")
        } else {
            String::new()
        };
        format!("gcra:{route}:{id}")
    }
}
