//! Fixture files: defaults, and what a malformed one reports (every problem at once, each with
//! its file and field).

use edge_policy_kit::{DEFAULT_NOW_MS, Fixture, ScriptedAnswer};
use std::{net::IpAddr, path::Path};

const FILE: &str = "fixtures/bad.toml";

fn errors(text: &str) -> Vec<String> {
    Fixture::parse(Path::new(FILE), text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_minimal_fixture_gets_the_documented_defaults() {
    let f = Fixture::parse(Path::new("dir/allow.toml"), "[request]\npath = \"/a\"\n").unwrap();
    assert_eq!(f.name, "allow");
    assert_eq!(f.golden_path(), Path::new("dir/allow.golden.json"));
    assert_eq!(f.now_ms, DEFAULT_NOW_MS);
    assert_eq!(f.request.method, "GET");
    assert_eq!(f.request.query, "");
    assert_eq!(f.request.client_addr, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(f.request.route, "fixture");
    assert!(f.config.is_empty() && f.kv.is_empty() && f.http.is_empty());
}

#[test]
fn a_full_fixture_parses() {
    let text = r#"
now_ms = 1700000001000
[config]
header = "x-api-key"
limit = 5
[request]
method = "post"
path = "/vod/a.m3u8"
query = "?a=1"
client_addr = "2001:db8::1"
route = "vod"
headers = { "X-Api-Key" = "k", accept = ["a", "b"] }
context = { sub = "u1" }
[kv]
"sub:u1" = '{"active":true}'
[[http]]
url = "http://USERS.test:80/api?x=1"
body = "{}"
headers = { "Content-Type" = "application/json" }
[[http]]
method = "POST"
url = "https://keys.test/jwks"
error = "timeout"
"#;
    let f = Fixture::parse(Path::new("full.toml"), text).unwrap();
    assert_eq!(f.now_ms, 1_700_000_001_000);
    assert_eq!(f.config["limit"], "5");
    assert_eq!(f.request.method, "POST");
    assert_eq!(f.request.query, "a=1");
    assert_eq!(
        f.request.headers,
        [
            ("accept".to_owned(), "a".to_owned()),
            ("accept".to_owned(), "b".to_owned()),
            ("x-api-key".to_owned(), "k".to_owned()),
        ]
    );
    assert_eq!(f.request.context, [("sub".to_owned(), "u1".to_owned())]);
    assert_eq!(f.kv["sub:u1"], r#"{"active":true}"#);
    // URLs are normalised as the host normalises the guest's (lower-case host, no default port).
    assert_eq!(f.http[0].url, "http://users.test/api?x=1");
    assert_eq!(f.http[0].method, "GET");
    assert_eq!(
        f.http[0].answer,
        ScriptedAnswer::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        }
    );
    assert_eq!(f.http[1].answer, ScriptedAnswer::Timeout);
}

#[test]
fn every_error_names_the_file_and_the_field() {
    let errs = errors(
        r#"
now_ms = "soon"
surprise = 1
[config]
header = ["x"]
[request]
methd = "GET"
client_addr = "localhost"
headers = { "x_api" = "k", "x-ok" = 1 }
[kv]
"sub:u1" = { active = true }
[[http]]
method = "DELETE"
status = 200
error = "timeout"
[[http]]
url = "ftp://x.test/"
status = 99
"#,
    );
    let want = [
        "`now_ms`: must be a non-negative integer (milliseconds)",
        "`config.header`: must be a string, number or boolean",
        "`request.path`: missing",
        "`request.client_addr`: must be an IPv4 or IPv6 address",
        "`request.headers.x_api`: not a header name (letters, digits and `-`)",
        "`request.headers.x-ok`: must be a string",
        "`request.methd`: unknown field",
        "`kv.sub:u1`: must be a string, number or boolean",
        "`http[0].method`: must be GET or POST",
        "`http[0].url`: missing",
        "`http[0].status`: cannot be set together with `error`",
        "`http[1].url`: must be an absolute http:// or https:// URL",
        "`http[1].status`: must be an HTTP status (100 to 599)",
        "`surprise`: unknown field",
    ];
    for w in want {
        let full = format!("{FILE}: {w}");
        assert!(
            errs.iter().any(|e| e.starts_with(&full)),
            "missing {full:?} in\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), want.len(), "{}", errs.join("\n"));
}

#[test]
fn syntax_errors_name_the_file_and_the_line() {
    let errs = errors("[request]\npath = \"/a\"\nheaders = {\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(&format!("{FILE}: invalid TOML: line 3")),
        "{}",
        errs[0]
    );
}

#[test]
fn a_missing_request_and_a_missing_file_are_reported() {
    assert_eq!(
        errors("now_ms = 1\n"),
        [format!(
            "{FILE}: `request.path`: missing (every fixture needs a [request] with a path)"
        )]
    );
    let err = Fixture::load(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/x.toml: cannot read"),
        "{err}"
    );
}
