use crate::{Error, Splice};

/// `m3u8-rs` decides whether `body` is a playlist at all; the splice points are found line by
/// line so that rendering is lossless: `m3u8-rs`'s writer drops tags it attaches to no segment (a
/// trailing LL-HLS `EXT-X-PRELOAD-HINT`) and renormalises others, and a player must get back
/// exactly what the origin wrote, plus the parameters.
pub(crate) fn prepare(body: &[u8]) -> Result<Vec<Splice>, Error> {
    m3u8_rs::parse_playlist_res(body)
        .map_err(|e| Error::Hls(e.to_string().chars().take(120).collect()))?;
    let text = std::str::from_utf8(body).map_err(|e| Error::Hls(e.to_string()))?;
    let mut splices = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        if content.starts_with("#EXT") {
            if let Some(start) = find_attr(content, "URI=\"")
                && let Some(len) = content[start..].find('"')
            {
                splices.extend(Splice::for_uri(
                    offset + start,
                    &content[start..start + len],
                ));
            }
        } else if !content.starts_with('#') && !content.trim().is_empty() {
            let start = content.len() - content.trim_start().len();
            splices.extend(Splice::for_uri(offset + start, content.trim()));
        }
        offset += line.len();
    }
    Ok(splices)
}

/// Start of the value of attribute `key` (which ends with `="`): only at the start of the
/// attribute list or after a comma, so `XURI="` does not match `URI="`.
fn find_attr(line: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find(key).map(|i| i + from) {
        if matches!(line.as_bytes().get(i.wrapping_sub(1)), Some(b':' | b',')) {
            return Some(i + key.len());
        }
        from = i + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    fn p() -> Vec<(String, String)> {
        vec![("token".into(), "T".into())]
    }

    #[test]
    fn master_playlist() {
        let m = "#EXTM3U\n#EXT-X-VERSION:3\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"audio/index.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,CODECS=\"avc1.64001e,mp4a.40.2\",AUDIO=\"a\"\n\
            v0/index.m3u8\n\
            #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI=\"v0/iframes.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=300000\nhttps://other.example/v1/index.m3u8\n";
        let out =
            String::from_utf8(crate::propagate(crate::Kind::Hls, m.as_bytes(), &p()).unwrap())
                .unwrap();
        assert!(out.contains("\nv0/index.m3u8?token=T\n"), "{out}");
        assert!(out.contains("URI=\"audio/index.m3u8?token=T\""), "{out}");
        assert!(out.contains("URI=\"v0/iframes.m3u8?token=T\""), "{out}");
        assert!(
            out.contains("\nhttps://other.example/v1/index.m3u8\n"),
            "{out}"
        );
        assert!(out.contains("RESOLUTION=640x360"), "{out}");
    }

    #[test]
    fn media_playlist() {
        let m = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
            #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init.mp4\"\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\",IV=0x00000000000000000000000000000001\n\
            #EXTINF:2.000000,\nseg_000.m4s\n#EXTINF:2.000000,\nseg_001.m4s\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_002.part0.m4s\"\n#EXT-X-ENDLIST\n";
        let out =
            String::from_utf8(crate::propagate(crate::Kind::Hls, m.as_bytes(), &p()).unwrap())
                .unwrap();
        for want in [
            "seg_000.m4s?token=T",
            "seg_001.m4s?token=T",
            "URI=\"init.mp4?token=T\"",
            "URI=\"key.bin?token=T\"",
            "URI=\"seg_002.part0.m4s?token=T\"",
            "#EXT-X-ENDLIST",
        ] {
            assert!(out.contains(want), "missing {want} in\n{out}");
        }
        assert_eq!(out.replace("?token=T", ""), m, "nothing else changes");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(crate::propagate(crate::Kind::Hls, b"<html>", &p()).is_err());
    }
}
