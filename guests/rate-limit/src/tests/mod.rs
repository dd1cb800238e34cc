//! GCRA math, config and keys; the CAS loop and the responses in `store`.

mod store;

use crate::gcra::{Limit, Outcome, admit, ceil_secs, ttl_ms};
use crate::settings::{KeyBy, Mode, Settings, parse_rate};
use std::collections::HashMap;

const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS * 1000;
const SEC: u64 = 1_000_000;

fn settings(pairs: &[(&str, &str)], route: &str) -> Result<Settings, String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::parse(|k| map.get(k).cloned(), route)
}

fn limit(per_sec: u64, burst: u64) -> Limit {
    Limit {
        interval_us: SEC / per_sec,
        burst,
    }
}

/// Feeds requests at `now` through `admit`, keeping the TAT like the store would.
fn run(tat: &mut Option<u64>, now: u64, l: &Limit) -> Outcome {
    let outcome = admit(*tat, now, l);
    if let Outcome::Allow { new_tat, .. } = outcome {
        *tat = Some(new_tat);
    }
    outcome
}

#[test]
fn burst_is_admitted_then_refused_then_refilled() {
    let l = limit(10, 3); // T = 100 ms
    let mut tat = None;
    let remaining: Vec<_> = (0..3)
        .map(|_| match run(&mut tat, NOW, &l) {
            Outcome::Allow { remaining, .. } => remaining,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(remaining, [2, 1, 0]);
    assert_eq!(
        run(&mut tat, NOW, &l),
        Outcome::Deny {
            retry_after_us: 100_000,
            reset_us: 300_000
        }
    );
    // 40 ms later: still 60 ms to wait.
    assert!(matches!(
        run(&mut tat, NOW + 40_000, &l),
        Outcome::Deny {
            retry_after_us: 60_000,
            ..
        }
    ));
    // One interval later, exactly one more.
    assert!(matches!(
        run(&mut tat, NOW + 100_000, &l),
        Outcome::Allow { remaining: 0, .. }
    ));
    assert!(matches!(
        run(&mut tat, NOW + 100_000, &l),
        Outcome::Deny { .. }
    ));
    // Long idle: the full burst is back, never more.
    let later = NOW + 60 * SEC;
    let admitted = (0..10)
        .filter(|_| matches!(run(&mut tat, later, &l), Outcome::Allow { .. }))
        .count();
    assert_eq!(admitted, 3);
}

#[test]
fn steady_rate_over_a_period() {
    // 5/s with a burst of 1: one every 200 ms, so 5 per second at most.
    let l = limit(5, 1);
    let mut tat = None;
    let admitted = (0..1000)
        .filter(|i| matches!(run(&mut tat, NOW + i * 1000, &l), Outcome::Allow { .. }))
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn reset_and_ttl_values() {
    let l = limit(1, 2);
    let first = admit(None, NOW, &l);
    assert_eq!(
        first,
        Outcome::Allow {
            new_tat: NOW + SEC,
            remaining: 1,
            reset_us: SEC
        }
    );
    assert_eq!(ceil_secs(1), 1);
    assert_eq!(ceil_secs(SEC), 1);
    assert_eq!(ceil_secs(SEC + 1), 2);
    assert_eq!(ttl_ms(0), 1);
    assert_eq!(ttl_ms(1), 1);
    assert_eq!(ttl_ms(1500), 2);
}

#[test]
fn impossible_tats_are_clamped() {
    let l = limit(10, 3);
    // Far in the future (corrupt, or another edge's clock): treated as a spent burst.
    assert!(matches!(
        admit(Some(u64::MAX), NOW, &l),
        Outcome::Deny {
            retry_after_us: 100_000,
            reset_us: 300_000
        }
    ));
    // In the past: an idle key.
    assert!(matches!(
        admit(Some(5), NOW, &l),
        Outcome::Allow { remaining: 2, .. }
    ));
}

#[test]
fn rates_parse() {
    assert_eq!(parse_rate("10/s"), Ok((10, SEC)));
    assert_eq!(parse_rate(" 600 / m "), Ok((600, 60 * SEC)));
    assert_eq!(parse_rate("1/h"), Ok((1, 3600 * SEC)));
    for bad in [
        "",
        "10",
        "0/s",
        "-1/s",
        "10/d",
        "10/sec",
        "x/s",
        "2000000/s",
    ] {
        assert!(parse_rate(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn config_defaults_overrides_and_errors() {
    let s = settings(&[("rate", "10/s")], "vod").expect("valid");
    assert_eq!(s.limit, limit(10, 10));
    assert_eq!(
        (s.key_by, s.mode, s.cas_retries),
        (KeyBy::Subject, Mode::Local, 16)
    );
    assert!(!s.route_override);
    // 7/s does not divide a second: the interval rounds up, never admitting more than 7/s.
    let seven = settings(&[("rate", "7/s"), ("burst", "1")], "vod").expect("valid");
    assert_eq!(
        seven.limit,
        Limit {
            interval_us: 142_858,
            burst: 1
        }
    );

    let pairs = [
        ("rate", "10/s"),
        ("burst", "5"),
        ("rate.live", "100/m"),
        ("burst.hls", "2"),
        ("key", "client"),
        ("mode", "global"),
        ("cas_retries", "3"),
    ];
    let vod = settings(&pairs, "vod").expect("valid");
    assert_eq!((vod.limit, vod.route_override), (limit(10, 5), false));
    assert_eq!(
        (vod.key_by, vod.mode, vod.cas_retries),
        (KeyBy::Client, Mode::Global, 3)
    );
    let live = settings(&pairs, "live").expect("valid");
    assert_eq!(
        live.limit,
        Limit {
            interval_us: 600_000,
            burst: 100
        }
    );
    assert!(live.route_override);
    let hls = settings(&pairs, "hls").expect("valid");
    assert_eq!((hls.limit, hls.route_override), (limit(10, 2), true));
    // Only a route's own rate: the global `rate` may be absent.
    assert!(settings(&[("rate.live", "1/s")], "live").is_ok());

    for bad in [
        vec![],
        vec![("rate", "")],
        vec![("rate", "ten/s")],
        vec![("rate", "10/s"), ("burst", "0")],
        vec![("rate", "10/s"), ("burst", "-2")],
        vec![("rate", "10/s"), ("burst", "99999999")],
        vec![("rate", "10/s"), ("key", "user")],
        vec![("rate", "10/s"), ("mode", "cluster")],
        vec![("rate", "10/s"), ("cas_retries", "many")],
        vec![("rate", "10/s"), ("rate.vod", "fast")],
    ] {
        assert!(settings(&bad, "vod").is_err(), "{bad:?}");
    }
}

#[test]
fn state_keys() {
    let subject = settings(&[("rate", "1/s")], "vod").expect("valid");
    assert_eq!(
        subject.state_key("vod", Some("alice"), "10.0.0.1"),
        "gcra::sub:alice"
    );
    assert_eq!(
        subject.state_key("vod", None, "10.0.0.1"),
        "gcra::ip:10.0.0.1"
    );
    assert_eq!(subject.state_key("vod", Some(""), "::1"), "gcra::ip:::1");
    let client = settings(&[("rate", "1/s"), ("key", "client")], "vod").expect("valid");
    assert_eq!(
        client.state_key("vod", Some("alice"), "10.0.0.1"),
        "gcra::ip:10.0.0.1"
    );
    let per_route = settings(&[("rate", "1/s"), ("key", "route_subject")], "a:b").expect("valid");
    assert_eq!(
        per_route.state_key("a:b", Some("alice"), "x"),
        "gcra:a%3Ab:sub:alice"
    );
    assert_eq!(per_route.state_key("50%", None, "x"), "gcra:50%25:ip:x");
    // A route with its own rate never shares the default budget.
    let pairs = [("rate", "1/s"), ("rate.live", "5/s")];
    let live = settings(&pairs, "live").expect("valid");
    let vod = settings(&pairs, "vod").expect("valid");
    assert_eq!(
        live.state_key("live", Some("alice"), "x"),
        "gcra:live:sub:alice"
    );
    assert_eq!(vod.state_key("vod", Some("alice"), "x"), "gcra::sub:alice");
}
