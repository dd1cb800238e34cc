//! The kit against the real guests of `guests/`: fixtures in a temporary directory are blessed,
//! then pass, and a changed golden file is caught with a diff.

use edge_guest_artifacts::{AUTH_JWT, SIGNED_URL, SUBSCRIPTION, path};
use edge_policy_kit::{DEFAULT_NOW_MS, Error, Mode, TestRun, Verdict, test_module};
use std::path::Path;

const SECRET: &str = "kit-test-secret-0123456789abcdef";
const NOW_S: u64 = DEFAULT_NOW_MS / 1000;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn golden(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.golden.json"))).unwrap()
}

fn verdict<'a>(run: &'a TestRun, name: &str) -> &'a Verdict {
    &run.results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no result for {name}"))
        .verdict
}

/// Blesses `dir`, checks that every fixture was written, then that a second run passes.
fn bless_then_pass(module: &str, dir: &Path) {
    let blessed = test_module(&path(module), dir, Mode::Bless).unwrap();
    let report: Vec<String> = blessed.results.iter().map(ToString::to_string).collect();
    assert!(blessed.passed(), "{}", report.join("\n"));
    assert!(
        blessed
            .results
            .iter()
            .all(|r| matches!(r.verdict, Verdict::Blessed(_))),
        "{}",
        report.join("\n")
    );
    let checked = test_module(&path(module), dir, Mode::Check).unwrap();
    let report: Vec<String> = checked.results.iter().map(ToString::to_string).collect();
    assert!(checked.passed(), "{}", report.join("\n"));
    assert!(report.iter().all(|r| r.starts_with("ok ")), "{report:?}");
}

#[test]
fn signed_url_bless_pass_and_a_changed_golden_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let token = edge_urlsig::Key::new(SECRET.as_bytes()).sign(&edge_urlsig::Grant {
        expires: NOW_S + 60,
        scope: "/vod/m1/".into(),
        client_addr: None,
    });
    let config = format!("[config]\nsecret = \"{SECRET}\"\n");
    write(
        dir,
        "valid.toml",
        &format!("{config}[request]\npath = \"/vod/m1/index.m3u8\"\nquery = \"token={token}\"\n"),
    );
    // Two minutes later by the fixture's clock: the guest reads the kit's clock.
    write(
        dir,
        "expired.toml",
        &format!(
            "now_ms = {}\n{config}[request]\npath = \"/vod/m1/index.m3u8\"\nquery = \"token={token}\"\n",
            DEFAULT_NOW_MS + 120_000
        ),
    );
    write(
        dir,
        "missing.toml",
        &format!("{config}[request]\npath = \"/vod/m1/index.m3u8\"\n"),
    );
    bless_then_pass(SIGNED_URL, dir);
    assert!(
        golden(dir, "valid").contains(&format!("[\"token\", \"{token}\"]")),
        "{}",
        golden(dir, "valid")
    );
    assert!(golden(dir, "expired").contains("\"expired_token\""));
    assert!(golden(dir, "missing").contains("\"missing_token\""));

    let changed = golden(dir, "expired").replace("expired_token", "bad_signature");
    write(dir, "expired.golden.json", &changed);
    let run = test_module(&path(SIGNED_URL), dir, Mode::Check).unwrap();
    assert!(!run.passed());
    assert_eq!(run.summary(), "3 fixtures: 2 passed, 1 failed");
    match verdict(&run, "expired") {
        Verdict::Mismatch { diff, .. } => {
            assert!(
                diff.contains("- ") && diff.contains("\"bad_signature\""),
                "{diff}"
            );
            assert!(
                diff.contains("+ ") && diff.contains("\"expired_token\""),
                "{diff}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(verdict(&run, "valid"), &Verdict::Passed);
    let text = run
        .results
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("FAIL expired: the decision differs from"),
        "{text}"
    );

    // A fixture without a golden file fails in check mode.
    std::fs::remove_file(dir.join("missing.golden.json")).unwrap();
    let run = test_module(&path(SIGNED_URL), dir, Mode::Check).unwrap();
    assert!(matches!(
        verdict(&run, "missing"),
        Verdict::MissingGolden(_)
    ));
}

#[test]
fn auth_jwt_with_an_hs256_token() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let claims = serde_json::json!({ "sub": "u1", "exp": NOW_S + 3600, "tier": "gold" });
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let config = format!("[config]\nsecret = \"{SECRET}\"\nforward_claims = \"tier\"\n");
    let request = |extra: &str| {
        format!(
            "{config}[request]\npath = \"/premium/a.m3u8\"\nheaders = {{ authorization = \"Bearer {token}\" }}\n{extra}"
        )
    };
    write(dir, "valid.toml", &request(""));
    write(
        dir,
        "expired.toml",
        &format!("now_ms = {}\n{}", (NOW_S + 7200) * 1000, request("")),
    );
    write(
        dir,
        "missing.toml",
        &format!("{config}[request]\npath = \"/premium/a.m3u8\"\n"),
    );
    bless_then_pass(AUTH_JWT, dir);
    let valid = golden(dir, "valid");
    assert!(valid.contains("\"decision\": \"allow\""), "{valid}");
    assert!(valid.contains("[\"sub\", \"u1\"]"), "{valid}");
    assert!(valid.contains("[\"jwt.tier\", \"gold\"]"), "{valid}");
    let expired = golden(dir, "expired");
    assert!(expired.contains("\"status\": 401"), "{expired}");
    assert!(expired.contains("\"reason\": \"expired\""), "{expired}");
    assert!(golden(dir, "missing").contains("\"missing_token\""));
}

#[test]
fn subscription_with_scripted_http_and_kv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let url = "http://users.test/api/v1/users/u1/subscription";
    let head = "[config]\nurl = \"http://users.test\"\non_error = \"closed\"\n[request]\npath = \"/premium/a.m3u8\"\ncontext = { sub = \"u1\" }\n";
    write(
        dir,
        "active.toml",
        &format!("{head}[[http]]\nurl = \"{url}\"\nbody = '{{\"active\":true}}'\n"),
    );
    write(
        dir,
        "inactive.toml",
        &format!("{head}[[http]]\nurl = \"{url}\"\nstatus = 404\n"),
    );
    write(
        dir,
        "timeout.toml",
        &format!("{head}[[http]]\nurl = \"{url}\"\nerror = \"timeout\"\n"),
    );
    // A fresh cached answer: no request at all.
    write(
        dir,
        "cached.toml",
        &format!("{head}[kv]\n\"sub:u1\" = '{{\"active\":true,\"at_ms\":{DEFAULT_NOW_MS}}}'\n"),
    );
    // The origin is allowed (scripted) but this user's URL is not: answered `failed`, reported.
    write(
        dir,
        "unscripted.toml",
        &format!(
            "{}[[http]]\nurl = \"{url}\"\n",
            head.replace("sub = \"u1\"", "sub = \"u2\"")
        ),
    );
    bless_then_pass(SUBSCRIPTION, dir);
    let active = golden(dir, "active");
    assert!(
        active.contains("[\"subscription\", \"active\"]"),
        "{active}"
    );
    assert!(
        active.contains(&format!(
            "{{\"method\": \"GET\", \"url\": \"{url}\", \"answer\": \"200\"}}"
        )),
        "{active}"
    );
    assert!(golden(dir, "inactive").contains("\"no_active_subscription\""));
    let timeout = golden(dir, "timeout");
    assert!(
        timeout.contains("\"subscription_unavailable\""),
        "{timeout}"
    );
    assert!(timeout.contains("\"answer\": \"timeout\""), "{timeout}");
    let cached = golden(dir, "cached");
    assert!(cached.contains("\"decision\": \"allow\""), "{cached}");
    assert!(cached.contains("\"outbound\": []"), "{cached}");
    let unscripted = golden(dir, "unscripted");
    assert!(unscripted.contains("users/u2/subscription"), "{unscripted}");
    assert!(
        unscripted.contains("unscripted (answered failed)"),
        "{unscripted}"
    );

    let run = test_module(&path(SUBSCRIPTION), dir, Mode::Check).unwrap();
    let note = run
        .results
        .iter()
        .find(|r| r.name == "unscripted")
        .unwrap()
        .to_string();
    assert!(
        note.contains("note: GET http://users.test/api/v1/users/u2/subscription has no scripted"),
        "{note}"
    );
}

#[test]
fn a_bad_fixture_fails_alone_and_a_bad_module_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "good.toml", "[request]\npath = \"/a\"\n");
    write(dir, "bad.toml", "[request]\npath = \"a\"\n");
    let run = test_module(&path(SIGNED_URL), dir, Mode::Bless).unwrap();
    assert!(!run.passed());
    assert!(matches!(verdict(&run, "good"), Verdict::Blessed(_)));
    match verdict(&run, "bad") {
        Verdict::Error(e) => assert!(
            e.contains("bad.toml: `request.path`: must start with /"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!dir.join("bad.golden.json").exists());

    let not_wasm = dir.join("good.toml");
    let err = test_module(&not_wasm, dir, Mode::Check).unwrap_err();
    assert!(matches!(err, Error::Load(_)), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = test_module(&path(SIGNED_URL), empty.path(), Mode::Check).unwrap_err();
    assert!(matches!(err, Error::NoFixtures(_)), "{err}");
}
