use crate::{ConfigError, Errors, section};
use bytesize::ByteSize;
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

/// A policies file: named policies (a WebAssembly module plus its config and limits) and the routes
/// that bind path patterns to ordered chains of them.
///
/// ```toml
/// [policies.signed-url]
/// module = "../guests/target/wasm32-wasip2/release/signed_url.wasm"  # relative to this file
/// fail = "closed"                         # what a trap or timeout means: "closed" (deny) | "open" (allow)
/// [policies.signed-url.config]             # handed to the guest; `${VAR}` is resolved by the edge
/// secret = "${SIGNED_URL_SECRET}"
///
/// [[routes]]
/// name = "vod"
/// paths = ["/vod/**"]                      # glob patterns on the normalised path
/// chain = ["signed-url"]                   # run in order; the first deny ends the chain
/// ```
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// The file this was loaded from.
    pub source: PathBuf,
    /// Policies by name.
    pub policies: BTreeMap<String, PolicySpec>,
    /// Routes, matched in file order; the first whose pattern matches wins.
    pub routes: Vec<RouteSpec>,
    /// Policies left out because a variable they `require` is unset: (name, missing variables).
    /// They are in no chain; the edge logs a warning for each.
    pub skipped: Vec<(String, Vec<String>)>,
}

/// One `[policies.NAME]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct PolicySpec {
    /// Name (the table key).
    #[serde(skip)]
    pub name: String,
    /// The component (`.wasm`), resolved against the policies file's directory.
    pub module: PathBuf,
    /// Pin: `sha256:<hex>` (a prefix of at least 32 hex digits). The module file must hash to it,
    /// or loading fails; without a pin, whatever the file holds is loaded (and reported as the
    /// running version).
    #[serde(default)]
    pub version: Option<String>,
    /// What the request gets when the guest traps, runs past its deadline or exceeds its memory.
    #[serde(default)]
    pub fail: FailMode,
    /// Status of a fail-closed answer. Default 503.
    #[serde(default = "default_fail_status")]
    pub fail_status: u16,
    /// Overrides `[wasm].deadline` for this policy (it can only be lower or equal).
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Overrides `[wasm].memory_limit` for this policy (it can only be lower or equal).
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Instance reuse strategy. Default `pooled`.
    #[serde(default)]
    pub isolation: Isolation,
    /// Request headers (lower-case) the guest may see; others are never passed.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Key/value config the guest reads with `config.get`. Scalars become strings; `${VAR}`
    /// placeholders are resolved from the variables the edge provides.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Config values read from files (resolved against the policies file's directory) at load and
    /// on every reload, e.g. `config_files = { jwks = "keys/jwks.json" }`.
    #[serde(default)]
    pub config_files: BTreeMap<String, PathBuf>,
    /// Origins (`scheme://host[:port]`) the guest may call through `outbound-http`; nothing else.
    /// `${VAR}` placeholders are resolved like config values.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// Longest outbound HTTP call. Default `2s`.
    #[serde(default = "default_outbound_timeout", with = "humantime_serde")]
    pub outbound_timeout: Duration,
    /// Largest outbound response body. Default 1 MiB.
    #[serde(default = "default_outbound_max_body")]
    pub outbound_max_body: ByteSize,
    /// Total time one `decide` call may spend waiting in host calls (kv, outbound HTTP), on top of
    /// its `deadline` for guest code. Default `3s`.
    #[serde(default = "default_host_budget", with = "humantime_serde")]
    pub host_budget: Duration,
    /// A candidate version taking part of the traffic.
    #[serde(default)]
    pub canary: Option<crate::CanarySpec>,
    /// Variables this policy needs (`requires = ["USER_SERVICE_URL"]`). When any is unset or
    /// empty, the policy is left out of every chain (and not checked further) with a warning at
    /// load: a development edge without a user service skips the subscription check.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The resolved config (placeholders replaced, files read), filled in by [`PolicySet::load`].
    #[serde(skip)]
    pub resolved_config: BTreeMap<String, String>,
}

fn default_outbound_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_outbound_max_body() -> ByteSize {
    ByteSize::mib(1)
}

fn default_host_budget() -> Duration {
    Duration::from_secs(3)
}

const fn default_fail_status() -> u16 {
    503
}

/// A policy's fail mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// A failing policy denies the request with its `fail_status`.
    #[default]
    Closed,
    /// A failing policy lets the request through (counted in metrics and logged).
    Open,
}

/// How policy instances are reused between requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Instances are kept in a pool and reused for up to `[wasm].max_reuse` requests; an instance
    /// that trapped is discarded. Guests must be stateless (see `wit/decide.wit`).
    #[default]
    Pooled,
    /// A fresh instance for every request: nothing can leak between requests, at ~18 µs each.
    Fresh,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteSpec {
    /// Route name, reported to policies and in metrics.
    pub name: String,
    /// Glob patterns on the normalised request path (`/vod/**`).
    pub paths: Vec<String>,
    /// Policy names run in order for matching requests (may be empty: no policy).
    #[serde(default)]
    pub chain: Vec<String>,
}

impl PolicySet {
    /// Loads and validates a policies file. `vars` provides the values of `${VAR}` placeholders.
    /// Module files are checked to exist here; whether they are valid components is checked by the
    /// policy runtime.
    pub fn load(path: &Path, vars: &HashMap<String, String>) -> Result<Self, Errors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(path, &text, vars),
            Err(e) => Err(Errors(vec![ConfigError::new(
                path,
                "",
                format!("cannot read: {e}"),
            )])),
        }
    }

    /// Parses `text` as if read from `file`.
    pub fn from_toml_str(
        file: &Path,
        text: &str,
        vars: &HashMap<String, String>,
    ) -> Result<Self, Errors> {
        let mut errors = Errors::default();
        let mut table = section::parse_table(file, text, &mut errors).unwrap_or_default();
        let mut set = Self {
            source: file.to_path_buf(),
            ..Self::default()
        };
        // Names of every policy table, even those that failed to decode, so that routes naming
        // them are not reported a second time.
        let mut declared = std::collections::BTreeSet::new();
        match table.remove("policies") {
            None => {}
            Some(toml::Value::Table(t)) => {
                declared.extend(t.keys().cloned());
                for (name, v) in t {
                    let field = format!("policies.{name}");
                    if let Some(mut spec) =
                        section::decode::<PolicySpec>(file, &field, v, &mut errors)
                    {
                        spec.name = name.clone();
                        set.policies.insert(name, spec);
                    }
                }
            }
            Some(_) => errors.push(ConfigError::new(
                file,
                "policies",
                "must be a table of policies",
            )),
        }
        match table.remove("routes") {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, v) in items.into_iter().enumerate() {
                    if let Some(r) =
                        section::decode::<RouteSpec>(file, &format!("routes[{i}]"), v, &mut errors)
                    {
                        set.routes.push(r);
                    }
                }
            }
            Some(_) => errors.push(ConfigError::new(
                file,
                "routes",
                "must be an array of tables ([[routes]])",
            )),
        }
        section::reject_rest(file, table, &mut errors);
        set.skip_unmet(vars);
        set.validate(vars, &declared, &mut errors);
        errors.into_result(set)
    }

    /// Takes policies whose `requires` are not all set out of the set and of every chain.
    fn skip_unmet(&mut self, vars: &HashMap<String, String>) {
        let unmet: Vec<(String, Vec<String>)> = self
            .policies
            .values()
            .filter_map(|s| {
                let missing: Vec<String> = s
                    .requires
                    .iter()
                    .filter(|v| vars.get(*v).is_none_or(|x| x.is_empty()))
                    .cloned()
                    .collect();
                (!missing.is_empty()).then(|| (s.name.clone(), missing))
            })
            .collect();
        for (name, _) in &unmet {
            self.policies.remove(name);
            for r in &mut self.routes {
                r.chain.retain(|n| n != name);
            }
        }
        self.skipped = unmet;
    }

    /// The module path of `spec`, resolved against this file's directory.
    pub fn module_path(&self, spec: &PolicySpec) -> PathBuf {
        self.resolve(&spec.module)
    }

    /// `path` resolved against this file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.source.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Every file this set depends on: itself, modules (and their `.sig` files), config files.
    /// Hot reload watches these.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.source.clone()];
        for spec in self.policies.values() {
            let mut modules = vec![self.module_path(spec)];
            if let Some(c) = &spec.canary {
                modules.push(self.resolve(&c.module));
            }
            for m in modules {
                out.push(signature_path(&m));
                out.push(m);
            }
            out.extend(spec.config_files.values().map(|p| self.resolve(p)));
        }
        out
    }

    fn validate(
        &mut self,
        vars: &HashMap<String, String>,
        declared: &std::collections::BTreeSet<String>,
        errors: &mut Errors,
    ) {
        let file = self.source.clone();
        let mut bad = |field: String, msg: String| errors.push(ConfigError::new(&file, field, msg));
        let paths: Vec<(String, PathBuf)> = self
            .policies
            .values()
            .map(|s| (s.name.clone(), self.module_path(s)))
            .collect();
        for (name, path) in paths {
            if !path.is_file() {
                bad(
                    format!("policies.{name}.module"),
                    format!("module file {} does not exist", path.display()),
                );
            }
        }
        let source = self.source.clone();
        let resolve = |p: &Path| match source.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };
        for (name, spec) in &mut self.policies {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bad(
                    format!("policies.{name}"),
                    "name must be letters, digits, `-` or `_`".into(),
                );
            }
            if !(400..=599).contains(&spec.fail_status) {
                bad(
                    format!("policies.{name}.fail_status"),
                    "must be a 4xx or 5xx status".into(),
                );
            }
            if spec.deadline.is_some_and(|d| d.is_zero()) {
                bad(
                    format!("policies.{name}.deadline"),
                    "must be greater than zero".into(),
                );
            }
            for h in &spec.headers {
                if h.is_empty()
                    || h.bytes()
                        .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
                {
                    bad(
                        format!("policies.{name}.headers"),
                        format!("{h:?} is not a lower-case header name"),
                    );
                }
            }
            if let Some(v) = &spec.version
                && let Err(msg) = check_version(v)
            {
                bad(format!("policies.{name}.version"), msg);
            }
            for origin in &mut spec.outbound {
                match interpolate(origin, vars).and_then(|o| check_origin(&o).map(|()| o)) {
                    Ok(o) => *origin = o,
                    Err(msg) => bad(format!("policies.{name}.outbound"), msg),
                }
            }
            if spec.outbound_timeout.is_zero() || spec.host_budget.is_zero() {
                bad(
                    format!("policies.{name}"),
                    "outbound_timeout and host_budget must be greater than zero".into(),
                );
            }
            if let Some(c) = &spec.canary {
                let field = format!("policies.{name}.canary");
                if !resolve(&c.module).is_file() {
                    bad(
                        format!("{field}.module"),
                        format!(
                            "module file {} does not exist",
                            resolve(&c.module).display()
                        ),
                    );
                }
                if let Some(v) = &c.version
                    && let Err(msg) = check_version(v)
                {
                    bad(format!("{field}.version"), msg);
                }
                if c.weight > 100 {
                    bad(
                        format!("{field}.weight"),
                        "must be a percentage, 0 to 100".into(),
                    );
                }
                let r = &c.rollback;
                if r.window < Duration::from_secs(1) {
                    bad(
                        format!("{field}.rollback.window"),
                        "must be at least 1s".into(),
                    );
                }
                for (k, v) in [
                    ("trap_rate", r.trap_rate),
                    ("error_rate", r.error_rate),
                    ("deny_rate", r.deny_rate),
                ] {
                    if !(0.0..=1.0).contains(&v) {
                        bad(
                            format!("{field}.rollback.{k}"),
                            "must be a fraction between 0 and 1".into(),
                        );
                    }
                }
            }
            for (key, file) in &spec.config_files {
                let field = format!("policies.{name}.config_files.{key}");
                if spec.config.contains_key(key) {
                    bad(field, "also set in `config`; set it in one place".into());
                    continue;
                }
                match std::fs::read_to_string(resolve(file)) {
                    Ok(text) => {
                        spec.resolved_config.insert(key.clone(), text);
                    }
                    Err(e) => bad(
                        field,
                        format!("cannot read {}: {e}", resolve(file).display()),
                    ),
                }
            }
            for (key, value) in &spec.config {
                let field = format!("policies.{name}.config.{key}");
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                        value.to_string()
                    }
                    _ => {
                        bad(field, "must be a string, number or boolean".into());
                        continue;
                    }
                };
                match interpolate(&text, vars) {
                    Ok(v) => {
                        spec.resolved_config.insert(key.clone(), v);
                    }
                    Err(msg) => bad(field, msg),
                }
            }
        }
        let mut seen = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(j) = seen.insert(r.name.clone(), i) {
                bad(
                    format!("routes[{i}].name"),
                    format!("duplicate route name {:?} (also routes[{j}])", r.name),
                );
            }
            if r.paths.is_empty() {
                bad(
                    format!("routes[{i}].paths"),
                    "needs at least one pattern".into(),
                );
            }
            for p in &r.paths {
                if !p.starts_with('/') {
                    bad(
                        format!("routes[{i}].paths"),
                        format!("pattern {p:?} must start with /"),
                    );
                } else if let Err(e) = globset::Glob::new(p) {
                    bad(
                        format!("routes[{i}].paths"),
                        format!("bad pattern {p:?}: {e}"),
                    );
                }
            }
            for name in &r.chain {
                if !declared.contains(name) {
                    bad(
                        format!("routes[{i}].chain"),
                        format!("unknown policy {name:?}"),
                    );
                }
            }
        }
    }
}

/// Where the signature of `module` is expected: `MODULE.sig` beside it.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// A pin needs 32 hex digits (128 bits): no second preimage of a prefix can be ground out.
fn check_version(v: &str) -> Result<(), String> {
    match v.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() >= 32 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{v:?} is not `sha256:<hex>` with 32 to 64 hex digits (`edge policy validate` prints a module's version)"
        )),
    }
}

fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("{origin:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{origin:?} must be an origin, scheme://host[:port], without path or credentials"
        ));
    }
    Ok(())
}

/// Replaces each `${NAME}` in `text` with `vars[NAME]`, `${NAME:-default}` with `default` when
/// `NAME` is unset or empty; `$$` is a literal `$`.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unterminated placeholder in {text:?}"))?;
            let (name, default) = match r[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&r[..end], None),
            };
            let value = match (vars.get(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v.as_str(),
                (None, Some(d)) => d,
                (None, None) if vars.contains_key(name) => "",
                (None, None) => return Err(format!("unknown variable ${{{name}}}")),
            };
            out.push_str(value);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(interpolate("${A}-$$-$b", &vars).unwrap(), "x-$-$b");
        assert!(
            interpolate("${B}", &vars)
                .unwrap_err()
                .contains("unknown variable ${B}")
        );
        assert!(interpolate("${A", &vars).is_err());
        assert_eq!(interpolate("${B:-2s}/${A:-y}", &vars).unwrap(), "2s/x");
    }

    #[test]
    fn unmet_requirements_leave_the_policy_out_of_every_chain() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies.toml");
        let text = r#"
            [policies.auth]
            module = "Cargo.toml"
            config = { secret = "${JWT_SECRET_KEY}" }
            [policies.subscription]
            module = "Cargo.toml"
            requires = ["USER_SERVICE_URL"]
            config = { url = "${USER_SERVICE_URL}" }
            [[routes]]
            name = "api"
            paths = ["/api/**"]
            chain = ["auth", "subscription"]
        "#;
        let mut vars = HashMap::from([("JWT_SECRET_KEY".to_string(), "k".repeat(32))]);
        let set = PolicySet::from_toml_str(&file, text, &vars).unwrap();
        assert_eq!(set.routes[0].chain, ["auth"]);
        assert!(!set.policies.contains_key("subscription"));
        assert_eq!(
            set.skipped,
            [(
                "subscription".to_string(),
                vec!["USER_SERVICE_URL".to_string()]
            )]
        );

        vars.insert("USER_SERVICE_URL".into(), "http://127.0.0.1:1".into());
        let set = PolicySet::from_toml_str(&file, text, &vars).unwrap();
        assert_eq!(set.routes[0].chain, ["auth", "subscription"]);
        assert!(set.skipped.is_empty());
    }
}
