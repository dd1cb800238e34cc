//! Strict, error-collecting deserialisation of TOML sections.

use crate::{ConfigError, Errors};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` as a TOML table, or records the syntax error.
pub(crate) fn parse_table(file: &Path, text: &str, errors: &mut Errors) -> Option<toml::Table> {
    match text.parse::<toml::Table>() {
        Ok(t) => Some(t),
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            errors.push(ConfigError::new(
                file,
                "",
                format!("invalid TOML: {at}{message}"),
            ));
            None
        }
    }
}

/// Keys earlier versions accepted, and what replaced them.
const REMOVED: &[(&str, &str)] = &[
    (
        "origin.max_object",
        "objects of any size are streamed; nothing is read whole (see cache.slice)",
    ),
    (
        "cache.max_object",
        "objects of any size are cached, in slices of cache.slice bytes",
    ),
];

/// Deserialises `value` (found at `field`) into `T`, recording every unknown key and the first type
/// error. Returns `None` when a type error was found.
pub(crate) fn decode<T: DeserializeOwned>(
    file: &Path,
    field: &str,
    value: toml::Value,
    errors: &mut Errors,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    for key in unknown {
        let full = if field.is_empty() {
            key
        } else {
            format!("{field}.{key}")
        };
        let message = match REMOVED.iter().find(|(name, _)| *name == full) {
            Some((_, why)) => format!("removed: {why}"),
            None => "unknown field".to_owned(),
        };
        errors.push(ConfigError::new(file, full, message));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let (field, message) = split_serde_error(field, &e.to_string());
            errors.push(ConfigError::new(file, field, message));
            None
        }
    }
}

/// Deserialises each known top-level section of `table` separately, so that a type error in one
/// section does not hide the errors of the others; unknown top-level sections are errors.
pub(crate) fn take<T: DeserializeOwned + Default>(
    file: &Path,
    table: &mut toml::Table,
    key: &str,
    errors: &mut Errors,
) -> T {
    match table.remove(key) {
        None => T::default(),
        Some(v) => decode(file, key, v, errors).unwrap_or_default(),
    }
}

/// Records each key left in `table` as unknown.
pub(crate) fn reject_rest(file: &Path, table: toml::Table, errors: &mut Errors) {
    for key in table.keys() {
        errors.push(ConfigError::new(file, key.clone(), "unknown section"));
    }
}

/// TOML's deserialisation errors end with "in `key`" lines naming the nested field: move that
/// into the field path and keep the message on one line.
fn split_serde_error(field: &str, message: &str) -> (String, String) {
    let mut path = field.to_owned();
    let mut text = Vec::new();
    for line in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix("in `").and_then(|l| l.strip_suffix('`')) {
            Some(key) if path.is_empty() => path = key.to_owned(),
            Some(key) => path = format!("{path}.{key}"),
            None => text.push(line),
        }
    }
    (path, text.join("; "))
}
