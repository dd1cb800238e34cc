use crate::{Error, with_params};
use quick_xml::{
    Reader, Writer,
    events::{BytesStart, Event},
};

/// Elements whose URI attributes are rewritten, and those attributes.
const URI_ATTRS: &[(&[u8], &[&[u8]])] = &[
    (b"SegmentTemplate", &[b"media", b"initialization", b"index"]),
    (b"SegmentURL", &[b"media", b"index"]),
    (b"Initialization", &[b"sourceURL"]),
    (b"RepresentationIndex", &[b"sourceURL"]),
];

/// Checks that `body` is well-formed XML and tells whether any `BaseURL` is absolute: relative
/// segment URIs under it resolve to another host, so the token must not be added anywhere.
pub(crate) fn check(body: &[u8]) -> Result<bool, Error> {
    let mut reader = Reader::from_reader(body);
    let mut buf = Vec::new();
    let (mut in_base, mut foreign) = (false, false);
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| Error::Dash(e.to_string()))?
        {
            Event::Eof => return Ok(foreign),
            Event::Start(e) => in_base = e.local_name().as_ref() == b"BaseURL",
            Event::End(_) => in_base = false,
            Event::Text(t) if in_base => {
                let url = t.unescape().map_err(|e| Error::Dash(e.to_string()))?;
                let url = url.trim();
                foreign |= crate::is_absolute(url);
            }
            _ => {}
        }
        buf.clear();
    }
}

pub(crate) fn propagate(body: &[u8], params: &[(String, String)]) -> Result<Vec<u8>, Error> {
    let mut reader = Reader::from_reader(body);
    let mut writer = Writer::new(Vec::with_capacity(body.len() + 256));
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| Error::Dash(e.to_string()))?;
        let out = match event {
            Event::Eof => break,
            Event::Start(e) => Event::Start(rewrite(&e, params)?),
            Event::Empty(e) => Event::Empty(rewrite(&e, params)?),
            other => other,
        };
        writer
            .write_event(out)
            .map_err(|e| Error::Dash(e.to_string()))?;
        buf.clear();
    }
    Ok(writer.into_inner())
}

fn rewrite(e: &BytesStart<'_>, params: &[(String, String)]) -> Result<BytesStart<'static>, Error> {
    let local = e.local_name();
    let Some((_, attrs)) = URI_ATTRS.iter().find(|(name, _)| *name == local.as_ref()) else {
        return Ok(e.to_owned().into_owned());
    };
    let mut out = BytesStart::new(String::from_utf8_lossy(e.name().as_ref()).into_owned());
    for a in e.attributes() {
        let a = a.map_err(|err| Error::Dash(err.to_string()))?;
        let value = a
            .unescape_value()
            .map_err(|err| Error::Dash(err.to_string()))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        if attrs.contains(&a.key.local_name().as_ref()) {
            out.push_attribute((key.as_str(), with_params(&value, params).as_str()));
        } else {
            out.push_attribute((key.as_str(), value.as_ref()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_templates_and_urls() {
        let mpd = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet mimeType="video/mp4">
<SegmentTemplate media="chunk-$RepresentationID$-$Number%05d$.m4s" initialization="init-$RepresentationID$.m4s" startNumber="1"/>
<Representation id="0" bandwidth="800000"><SegmentList><SegmentURL media="s1.m4s"/><SegmentURL media="https://x.example/s2.m4s"/></SegmentList></Representation>
</AdaptationSet></Period></MPD>"#;
        let out =
            String::from_utf8(propagate(mpd.as_bytes(), &[("token".into(), "T".into())]).unwrap())
                .unwrap();
        assert!(
            out.contains(r#"media="chunk-$RepresentationID$-$Number%05d$.m4s?token=T""#),
            "{out}"
        );
        assert!(
            out.contains(r#"initialization="init-$RepresentationID$.m4s?token=T""#),
            "{out}"
        );
        assert!(out.contains(r#"media="s1.m4s?token=T""#), "{out}");
        assert!(out.contains(r#"media="https://x.example/s2.m4s""#), "{out}");
        assert!(out.contains(r#"bandwidth="800000""#), "{out}");
    }

    #[test]
    fn an_absolute_base_url_gets_no_token() {
        let mpd = r#"<MPD><BaseURL>https://cdn.other.example/v/</BaseURL><Period><AdaptationSet>
<SegmentTemplate media="s$Number$.m4s" initialization="init.m4s"/></AdaptationSet></Period></MPD>"#;
        let out = crate::propagate(
            crate::Kind::Dash,
            mpd.as_bytes(),
            &[("token".into(), "T".into())],
        )
        .unwrap();
        assert_eq!(out, mpd.as_bytes());
        let relative = mpd.replace("https://cdn.other.example/v/", "video/");
        let out = crate::propagate(
            crate::Kind::Dash,
            relative.as_bytes(),
            &[("token".into(), "T".into())],
        )
        .unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("s$Number$.m4s?token=T")
        );
    }

    #[test]
    fn broken_xml_is_an_error() {
        assert!(propagate(b"<MPD><Period></MPD>", &[("t".into(), "v".into())]).is_err());
    }
}
