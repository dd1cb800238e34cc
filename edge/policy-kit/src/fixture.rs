//! Fixture files: one request and the world it meets (see the crate docs for the format).
//!
//! Decoding is by hand rather than with serde so that every problem names its exact field
//! (`request.headers.x-api-key`, `http[1].status`), and every problem of a file is reported at once.

use edge_config::{ConfigError, Errors};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};
use toml::{Table, Value};

/// The clock of a fixture without `now_ms`: 2023-11-14T22:13:20Z.
pub const DEFAULT_NOW_MS: u64 = 1_700_000_000_000;

/// One parsed fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// The file name without `.toml`; the golden file is `NAME.golden.json` beside it.
    pub name: String,
    /// The fixture file.
    pub path: PathBuf,
    /// What `clock.now-millis` returns.
    pub now_ms: u64,
    /// The policy's config, as `config.get` returns it.
    pub config: BTreeMap<String, String>,
    /// The request the policy decides.
    pub request: FixtureRequest,
    /// Initial key-value entries (keys inside the policy's namespace), set in both scopes.
    pub kv: BTreeMap<String, String>,
    /// Scripted outbound answers, in file order.
    pub http: Vec<ScriptedExchange>,
}

/// The `[request]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureRequest {
    /// Upper-case method.
    pub method: String,
    /// Path, starting with `/`.
    pub path: String,
    /// Query string without `?`.
    pub query: String,
    /// The viewer's address.
    pub client_addr: IpAddr,
    /// The route name the policy sees.
    pub route: String,
    /// Headers (lower-case names, in name order); the policy sees all of them.
    pub headers: Vec<(String, String)>,
    /// Context from earlier policies, in key order.
    pub context: Vec<(String, String)>,
}

/// One `[[http]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedExchange {
    /// `GET` or `POST`.
    pub method: String,
    /// The URL, normalised as the host normalises the guest's URL.
    pub url: String,
    /// What the request gets.
    pub answer: ScriptedAnswer,
}

/// The answer of a scripted exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedAnswer {
    /// A complete response.
    Response {
        /// Status code.
        status: u16,
        /// Lower-case header names.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// `error = "timeout"`.
    Timeout,
    /// `error = "failed"`.
    Failed,
    /// `error = "too_large"`.
    TooLarge,
}

impl Fixture {
    /// Reads and parses the fixture at `path`.
    pub fn load(path: &Path) -> Result<Self, Errors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) => Err(Errors(vec![ConfigError::new(
                path,
                "",
                format!("cannot read: {e}"),
            )])),
        }
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Errors> {
        let mut d = Decoder {
            file: path,
            errors: Errors::default(),
        };
        let mut top = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
                    .unwrap_or_default();
                let message = e.message().trim().replace('\n', "; ");
                d.bad("", format!("invalid TOML: {line}{message}"));
                return Err(d.errors);
            }
        };
        let now_ms = match top.remove("now_ms") {
            None => DEFAULT_NOW_MS,
            Some(Value::Integer(n)) if n >= 0 => n as u64,
            Some(_) => {
                d.bad("now_ms", "must be a non-negative integer (milliseconds)");
                DEFAULT_NOW_MS
            }
        };
        let config = d.map(&mut top, "config", Decoder::scalar);
        let request = d.request(&mut top);
        let kv = d.map(&mut top, "kv", Decoder::scalar);
        let http = d.http(&mut top);
        d.rest("", top);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        d.errors.into_result(Self {
            name,
            path: path.to_owned(),
            now_ms,
            config: config.into_iter().collect(),
            request,
            kv: kv.into_iter().collect(),
            http,
        })
    }

    /// Where this fixture's golden file is.
    pub fn golden_path(&self) -> PathBuf {
        self.path
            .with_file_name(format!("{}.golden.json", self.name))
    }
}

/// Collects every problem of one file.
struct Decoder<'a> {
    file: &'a Path,
    errors: Errors,
}

impl Decoder<'_> {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, field, message.into()));
    }

    /// A string, number or boolean, as a string (as the policies file reads config).
    fn scalar(&mut self, field: &str, value: Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s),
            Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => Some(value.to_string()),
            _ => {
                self.bad(field, "must be a string, number or boolean");
                None
            }
        }
    }

    fn string(&mut self, field: &str, value: Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s),
            _ => {
                self.bad(field, "must be a string");
                None
            }
        }
    }

    /// A header value: a string, or a list of strings (the header sent several times).
    fn header_values(&mut self, field: &str, value: Value) -> Option<Vec<String>> {
        match value {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| self.string(&format!("{field}[{i}]"), v))
                .collect(),
            other => self.string(field, other).map(|s| vec![s]),
        }
    }

    fn table(&mut self, field: &str, value: Value) -> Option<Table> {
        match value {
            Value::Table(t) => Some(t),
            _ => {
                self.bad(field, "must be a table");
                None
            }
        }
    }

    /// The table at `parent.key`, decoded entry by entry with `entry`, in key order.
    fn map<T>(
        &mut self,
        parent: &mut Table,
        field: &str,
        mut entry: impl FnMut(&mut Self, &str, Value) -> Option<T>,
    ) -> Vec<(String, T)> {
        let key = field.rsplit('.').next().unwrap_or(field);
        let Some(table) = parent.remove(key).and_then(|v| self.table(field, v)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, T)> = table
            .into_iter()
            .filter_map(|(k, v)| entry(self, &format!("{field}.{k}"), v).map(|v| (k, v)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Reports every key left in `table` as unknown.
    fn rest(&mut self, prefix: &str, table: Table) {
        for key in table.keys() {
            self.bad(format!("{prefix}{key}"), "unknown field");
        }
    }

    fn request(&mut self, top: &mut Table) -> FixtureRequest {
        let mut req = FixtureRequest {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            client_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            route: "fixture".into(),
            headers: Vec::new(),
            context: Vec::new(),
        };
        let Some(mut t) = top.remove("request").and_then(|v| self.table("request", v)) else {
            self.bad(
                "request.path",
                "missing (every fixture needs a [request] with a path)",
            );
            return req;
        };
        if let Some(m) = t
            .remove("method")
            .and_then(|v| self.string("request.method", v))
        {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                self.bad("request.method", "must be an HTTP method such as GET");
            }
            req.method = m.to_ascii_uppercase();
        }
        match t.remove("path").map(|v| self.string("request.path", v)) {
            None => self.bad("request.path", "missing"),
            Some(Some(p)) if p.starts_with('/') => req.path = p,
            Some(Some(_)) => self.bad("request.path", "must start with /"),
            Some(None) => {}
        }
        if let Some(q) = t
            .remove("query")
            .and_then(|v| self.string("request.query", v))
        {
            req.query = q.strip_prefix('?').unwrap_or(&q).to_owned();
        }
        if let Some(a) = t
            .remove("client_addr")
            .and_then(|v| self.string("request.client_addr", v))
        {
            match a.parse() {
                Ok(ip) => req.client_addr = ip,
                Err(_) => self.bad("request.client_addr", "must be an IPv4 or IPv6 address"),
            }
        }
        if let Some(r) = t
            .remove("route")
            .and_then(|v| self.string("request.route", v))
        {
            req.route = r;
        }
        for (name, values) in self.map(&mut t, "request.headers", Self::header_values) {
            let lower = name.to_ascii_lowercase();
            if !is_header_name(&lower) {
                self.bad(
                    format!("request.headers.{name}"),
                    "not a header name (letters, digits and `-`)",
                );
            }
            if values
                .iter()
                .any(|v| http::HeaderValue::from_str(v).is_err())
            {
                self.bad(
                    format!("request.headers.{name}"),
                    "not a valid header value (no control characters)",
                );
            }
            req.headers
                .extend(values.into_iter().map(|v| (lower.clone(), v)));
        }
        req.headers.sort_by(|a, b| a.0.cmp(&b.0));
        req.context = self.map(&mut t, "request.context", Self::scalar);
        self.rest("request.", t);
        req
    }

    fn http(&mut self, top: &mut Table) -> Vec<ScriptedExchange> {
        let items = match top.remove("http") {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.bad("http", "must be an array of tables ([[http]])");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let field = format!("http[{i}]");
            if let Some(t) = self.table(&field, item)
                && let Some(exchange) = self.exchange(&field, t)
            {
                out.push(exchange);
            }
        }
        out
    }

    fn exchange(&mut self, field: &str, mut t: Table) -> Option<ScriptedExchange> {
        let f = |k: &str| format!("{field}.{k}");
        let method = match t.remove("method").map(|v| self.string(&f("method"), v)) {
            None => Some("GET".to_owned()),
            Some(Some(m)) if matches!(m.to_ascii_uppercase().as_str(), "GET" | "POST") => {
                Some(m.to_ascii_uppercase())
            }
            Some(Some(_)) => {
                self.bad(
                    f("method"),
                    "must be GET or POST (what outbound-http can send)",
                );
                None
            }
            Some(None) => None,
        };
        let url = match t.remove("url").map(|v| self.string(&f("url"), v)) {
            None => {
                self.bad(f("url"), "missing");
                None
            }
            Some(Some(u)) => match normalise_url(&u) {
                Ok(u) => Some(u),
                Err(msg) => {
                    self.bad(f("url"), msg);
                    None
                }
            },
            Some(None) => None,
        };
        let error = t.remove("error").and_then(|v| self.string(&f("error"), v));
        let answer = match error.as_deref() {
            Some(e) => {
                for k in ["status", "headers", "body"] {
                    if t.remove(k).is_some() {
                        self.bad(f(k), "cannot be set together with `error`");
                    }
                }
                match e {
                    "timeout" => Some(ScriptedAnswer::Timeout),
                    "failed" => Some(ScriptedAnswer::Failed),
                    "too_large" => Some(ScriptedAnswer::TooLarge),
                    _ => {
                        self.bad(
                            f("error"),
                            "must be \"timeout\", \"failed\" or \"too_large\"",
                        );
                        None
                    }
                }
            }
            None => self.response(field, &mut t),
        };
        self.rest(&format!("{field}."), t);
        Some(ScriptedExchange {
            method: method?,
            url: url?,
            answer: answer?,
        })
    }

    fn response(&mut self, field: &str, t: &mut Table) -> Option<ScriptedAnswer> {
        let status = match t.remove("status") {
            None => Some(200),
            Some(Value::Integer(s)) if (100..=599).contains(&s) => Some(s as u16),
            Some(_) => {
                self.bad(
                    format!("{field}.status"),
                    "must be an HTTP status (100 to 599)",
                );
                None
            }
        };
        let headers = self
            .map(t, &format!("{field}.headers"), Self::string)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let body = t
            .remove("body")
            .and_then(|v| self.string(&format!("{field}.body"), v))
            .unwrap_or_default();
        Some(ScriptedAnswer::Response {
            status: status?,
            headers,
            body: body.into_bytes(),
        })
    }
}

/// What the policies file accepts in a policy's `headers` list.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The URL as the host hands it to the transport (the host parses and re-serialises it).
fn normalise_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (the host refuses them)".into());
    }
    Ok(url.into())
}

/// The origin (`scheme://host[:port]`) of a normalised URL, for the policy's allow-list.
pub(crate) fn origin(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}
