//! The media types the edge serves, by extension.

/// What kind of object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A manifest (HLS playlist or DASH MPD): short freshness, token propagation.
    Manifest,
    /// A segment, init segment, subtitle or other immutable object.
    Segment,
}

/// The content type and kind of `path`, or `None` when the edge does not serve that extension.
pub fn classify(path: &str) -> Option<(&'static str, MediaKind)> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "m3u8" => ("application/vnd.apple.mpegurl", MediaKind::Manifest),
        "mpd" => ("application/dash+xml", MediaKind::Manifest),
        "ts" => ("video/mp2t", MediaKind::Segment),
        "m4s" => ("video/iso.segment", MediaKind::Segment),
        "mp4" => ("video/mp4", MediaKind::Segment),
        "vtt" => ("text/vtt; charset=utf-8", MediaKind::Segment),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown() {
        assert_eq!(
            classify("/a/index.M3U8"),
            Some(("application/vnd.apple.mpegurl", MediaKind::Manifest))
        );
        assert_eq!(classify("/a/seg_001.ts").unwrap().1, MediaKind::Segment);
        assert_eq!(classify("/a/passwd"), None);
        assert_eq!(classify("/a/x.php"), None);
    }
}
