//! Golden files: a decision, and the outbound requests behind it, as stable and diffable JSON.

use crate::host::OutboundCall;
use edge_policy::Outcome;
use std::fmt::Write as _;

/// What running a fixture produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The chain's verdict (one policy, failing closed).
    pub outcome: Outcome,
    /// Every outbound request the policy made, in order.
    pub calls: Vec<OutboundCall>,
}

/// The golden text of `observed`: fields in a fixed order, one pair or request per line.
pub fn render(observed: &Observed) -> String {
    let mut fields: Vec<(&str, String)> = Vec::new();
    match &observed.outcome {
        Outcome::Allow {
            response_headers,
            propagate_query,
            context,
        } => {
            fields.push(("decision", string("allow")));
            fields.push(("response_headers", pairs(response_headers)));
            fields.push(("context", pairs(context)));
            fields.push(("propagate_query", pairs(propagate_query)));
        }
        Outcome::Deny {
            status,
            reason,
            headers,
            ..
        } => {
            fields.push(("decision", string("deny")));
            fields.push(("status", status.to_string()));
            fields.push(("reason", string(reason)));
            fields.push(("headers", pairs(headers)));
        }
        Outcome::Redirect {
            status, location, ..
        } => {
            fields.push(("decision", string("redirect")));
            fields.push(("status", status.to_string()));
            fields.push(("location", string(location)));
        }
    }
    let calls = observed.calls.iter().map(|c| {
        format!(
            "{{\"method\": {}, \"url\": {}, \"answer\": {}}}",
            string(&c.method),
            string(&c.url),
            string(&c.answer.to_string())
        )
    });
    fields.push(("outbound", list(calls)));
    let mut out = String::from("{\n");
    for (i, (key, value)) in fields.iter().enumerate() {
        let comma = if i + 1 < fields.len() { "," } else { "" };
        let _ = writeln!(out, "  {}: {value}{comma}", string(key));
    }
    out.push_str("}\n");
    out
}

fn string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn pairs(items: &[(String, String)]) -> String {
    list(
        items
            .iter()
            .map(|(k, v)| format!("[{}, {}]", string(k), string(v))),
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "[]".into()
    } else {
        format!("[\n    {}\n  ]", items.join(",\n    "))
    }
}

/// Whether `golden` (a file's text) holds the same JSON value as `actual`; an error when it is
/// not JSON at all.
pub(crate) fn same(golden: &str, actual: &str) -> Result<bool, String> {
    let expected: serde_json::Value =
        serde_json::from_str(golden).map_err(|e| format!("not valid JSON: {e}"))?;
    let actual: serde_json::Value =
        serde_json::from_str(actual).map_err(|e| format!("kit bug, invalid JSON: {e}"))?;
    Ok(expected == actual)
}

/// A line diff of `old` to `new`: every line, prefixed `-` (only in old), `+` (only in new) or
/// a space (in both).
pub(crate) fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        // Too large for a quadratic diff: show both in full.
        a.iter().for_each(|l| _ = writeln!(out, "- {l}"));
        b.iter().for_each(|l| _ = writeln!(out, "+ {l}"));
        return out;
    }
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CallAnswer;

    #[test]
    fn renders_stable_json_that_compares_by_value() {
        let observed = Observed {
            outcome: Outcome::Deny {
                policy: "p".into(),
                status: 401,
                reason: "missing \"token\"".into(),
                headers: vec![("www-authenticate".into(), "Bearer".into())],
            },
            calls: vec![OutboundCall {
                method: "GET".into(),
                url: "http://a.test/x".into(),
                answer: CallAnswer::Unscripted,
            }],
        };
        let text = render(&observed);
        assert_eq!(
            text,
            r#"{
  "decision": "deny",
  "status": 401,
  "reason": "missing \"token\"",
  "headers": [
    ["www-authenticate", "Bearer"]
  ],
  "outbound": [
    {"method": "GET", "url": "http://a.test/x", "answer": "unscripted (answered failed)"}
  ]
}
"#
        );
        let compact =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap())
                .unwrap();
        assert_eq!(same(&compact, &text), Ok(true));
        assert_eq!(same(&text.replace("401", "403"), &text), Ok(false));
        assert!(same("{", &text).unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn diff_marks_changed_lines() {
        assert_eq!(diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n- b\n+ x\n  c\n");
        assert_eq!(diff("", "a\n"), "+ a\n");
    }
}
