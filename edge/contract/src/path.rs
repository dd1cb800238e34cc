//! Request path normalisation: the only way a viewer's path becomes an object key.

/// Why a path was refused (each maps to 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("path must start with /")]
    NotAbsolute,
    /// Longer than [`MAX_PATH`].
    #[error("path too long")]
    TooLong,
    /// A `.` or `..` segment, literal or percent-encoded.
    #[error("path traversal")]
    Traversal,
    /// An encoded `/` or `\`, or a literal `\`: would let a segment hide a separator.
    #[error("encoded path separator")]
    EncodedSeparator,
    /// A NUL or other control character.
    #[error("control character in path")]
    ControlCharacter,
    /// Percent-encoding that does not decode to UTF-8.
    #[error("invalid percent-encoding")]
    InvalidEncoding,
}

impl PathError {
    /// Short reason code for the error body.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path_not_absolute",
            Self::TooLong => "path_too_long",
            Self::Traversal => "path_traversal",
            Self::EncodedSeparator => "encoded_separator",
            Self::ControlCharacter => "control_character",
            Self::InvalidEncoding => "invalid_encoding",
        }
    }
}

/// Longest raw path accepted.
pub const MAX_PATH: usize = 2048;

/// Decodes and checks a raw request path. Repeated slashes collapse; `.`/`..` segments, encoded
/// separators, backslashes, control characters and invalid UTF-8 are refused rather than
/// resolved, so no spelling of a path can reach outside the origin's tree.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSeparator);
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::InvalidEncoding)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if decoded.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(PathError::Traversal);
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths() {
        assert_eq!(
            normalize("/vod/movies/m1/index.m3u8").unwrap(),
            "/vod/movies/m1/index.m3u8"
        );
        assert_eq!(normalize("//vod///movies/m1/").unwrap(), "/vod/movies/m1/");
        assert_eq!(normalize("/vod/a%20b.ts").unwrap(), "/vod/a b.ts");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/vod/..x/y").unwrap(), "/vod/..x/y");
    }

    #[test]
    fn hostile_paths() {
        for (raw, err) in [
            ("/vod/../etc/passwd", PathError::Traversal),
            ("/vod/./x", PathError::Traversal),
            ("/vod/%2e%2e/etc/passwd", PathError::Traversal),
            ("/vod/%2E%2e/x", PathError::Traversal),
            ("/vod/.%2e/x", PathError::Traversal),
            ("/vod/..", PathError::Traversal),
            ("/vod/%2f..%2fetc", PathError::EncodedSeparator),
            ("/vod/a%2Fb", PathError::EncodedSeparator),
            ("/vod/a%5cb", PathError::EncodedSeparator),
            ("/vod/..\\..\\x", PathError::EncodedSeparator),
            ("/vod/a%00.ts", PathError::ControlCharacter),
            ("/vod/a%0a.ts", PathError::ControlCharacter),
            ("/vod/%ff%fe", PathError::InvalidEncoding),
            ("vod/x", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(raw), Err(err), "{raw}");
        }
        assert_eq!(
            normalize(&format!("/{}", "a".repeat(MAX_PATH))),
            Err(PathError::TooLong)
        );
    }
}
