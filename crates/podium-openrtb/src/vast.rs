//! VAST 4.2 writer: an InLine ad, or an ad pod of them, that validates against the IAB's
//! `vast_4.2.xsd` (namespace `http://www.iab.com/VAST`, elements qualified).
//!
//! Elements are written in the schema's order, URLs as CDATA, text and attributes escaped, and
//! characters XML 1.0 cannot carry are dropped. This module writes linear video InLine ads only:
//! no wrappers, companions, non-linear ads, icons or verification.

use podium_core::Micros;
use std::fmt::Write as _;

/// `AdSystem` Podium writes by default.
pub const AD_SYSTEM: &str = "Podium";

/// `Category@authority` for IAB taxonomy categories (as in the IAB's own VAST 4.2 samples).
pub const IAB_CATEGORY_AUTHORITY: &str = "https://www.iabtechlab.com/categoryauthority";

/// How a media file is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VastDelivery {
    /// Downloaded over HTTP as it plays.
    #[default]
    Progressive,
    /// Streamed (HLS, DASH).
    Streaming,
}

/// One rendition of the creative.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VastMedia {
    /// Where the file is.
    pub url: String,
    /// Its MIME type (`video/mp4`).
    pub mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Average bitrate in kbit/s, if known.
    pub bitrate: Option<u32>,
    /// Progressive or streaming.
    pub delivery: VastDelivery,
}

/// A playback event a tracking URL fires on (VAST 4.2 `Tracking@event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VastEvent {
    /// The player loaded the ad.
    Loaded,
    /// The creative is first shown.
    CreativeView,
    /// Playback started.
    Start,
    /// 25 % played.
    FirstQuartile,
    /// 50 % played.
    Midpoint,
    /// 75 % played.
    ThirdQuartile,
    /// Played to the end.
    Complete,
    /// Sound turned off.
    Mute,
    /// Sound turned back on.
    Unmute,
    /// Paused.
    Pause,
    /// Resumed after a pause.
    Resume,
    /// Rewound.
    Rewind,
    /// Skipped by the viewer.
    Skip,
    /// Player went full screen.
    PlayerExpand,
    /// Player left full screen.
    PlayerCollapse,
    /// The viewer closed the linear ad.
    CloseLinear,
}

impl VastEvent {
    /// The event's name in VAST.
    pub fn as_str(self) -> &'static str {
        match self {
            VastEvent::Loaded => "loaded",
            VastEvent::CreativeView => "creativeView",
            VastEvent::Start => "start",
            VastEvent::FirstQuartile => "firstQuartile",
            VastEvent::Midpoint => "midpoint",
            VastEvent::ThirdQuartile => "thirdQuartile",
            VastEvent::Complete => "complete",
            VastEvent::Mute => "mute",
            VastEvent::Unmute => "unmute",
            VastEvent::Pause => "pause",
            VastEvent::Resume => "resume",
            VastEvent::Rewind => "rewind",
            VastEvent::Skip => "skip",
            VastEvent::PlayerExpand => "playerExpand",
            VastEvent::PlayerCollapse => "playerCollapse",
            VastEvent::CloseLinear => "closeLinear",
        }
    }
}

/// A creative's id in a registry (`UniversalAdId`, e.g. Ad-ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniversalAdId {
    /// The registry (`Ad-ID`, `clearcast.co.uk`).
    pub registry: String,
    /// The id in it.
    pub id: String,
}

/// One InLine linear video ad.
#[derive(Clone, Debug, PartialEq)]
pub struct VastAd {
    /// `Ad@id`.
    pub id: String,
    /// Position in an ad pod, from 1; `None` for a stand-alone ad.
    pub sequence: Option<u32>,
    /// `AdSystem`: who served it ([`AD_SYSTEM`] by default).
    pub ad_system: String,
    /// `AdTitle`.
    pub title: String,
    /// `Advertiser`: the advertiser's name or domain.
    pub advertiser: Option<String>,
    /// `Category`: an IAB category code (authority [`IAB_CATEGORY_AUTHORITY`]).
    pub category: Option<String>,
    /// `AdServingId`: the id that ties this serving of the ad to its logs across parties.
    pub ad_serving_id: String,
    /// `Pricing`, as a USD CPM.
    pub price: Option<Micros>,
    /// `Error` URLs.
    pub error_urls: Vec<String>,
    /// `Impression` URLs (at least one is written: `about:blank` when there are none, as the
    /// schema asks).
    pub impression_urls: Vec<String>,
    /// `Creative@id`.
    pub creative_id: String,
    /// `UniversalAdId` (required by VAST 4.2; `unknown`/`unknown` is written when absent, as
    /// the specification says).
    pub universal_ad_id: Option<UniversalAdId>,
    /// Length of the creative, seconds.
    pub duration_s: u32,
    /// Renditions; an ad without any is left out of the document (VAST requires a MediaFile).
    pub media: Vec<VastMedia>,
    /// Tracking URLs by event.
    pub tracking: Vec<(VastEvent, String)>,
    /// Landing page.
    pub click_through: Option<String>,
    /// Click tracking URLs.
    pub click_tracking: Vec<String>,
}

impl Default for VastAd {
    fn default() -> Self {
        Self {
            id: String::new(),
            sequence: None,
            ad_system: AD_SYSTEM.to_owned(),
            title: String::new(),
            advertiser: None,
            category: None,
            ad_serving_id: String::new(),
            price: None,
            error_urls: Vec::new(),
            impression_urls: Vec::new(),
            creative_id: String::new(),
            universal_ad_id: None,
            duration_s: 0,
            media: Vec::new(),
            tracking: Vec::new(),
            click_through: None,
            click_tracking: Vec::new(),
        }
    }
}

const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
const VAST_OPEN: &str = "<VAST version=\"4.2\" xmlns=\"http://www.iab.com/VAST\">";

/// A VAST 4.2 document holding `ads` in order (an ad pod when they carry sequences). Ads
/// without a media file are left out; with none left it is the empty VAST (no `Ad`), which
/// players read as no fill.
pub fn vast_document(ads: &[VastAd]) -> String {
    let mut x = String::with_capacity(2048 * ads.len().max(1));
    x.push_str(HEADER);
    x.push_str(VAST_OPEN);
    x.push('\n');
    for ad in ads.iter().filter(|a| !a.media.is_empty()) {
        write_ad(&mut x, ad);
    }
    x.push_str("</VAST>\n");
    x
}

/// A VAST 4.2 document with no ad: the no-fill answer, with the `Error` URL the player should
/// call (VAST error 303, no ad) when given.
pub fn empty_vast(error_url: Option<&str>) -> String {
    let mut x = String::new();
    x.push_str(HEADER);
    x.push_str(VAST_OPEN);
    x.push('\n');
    if let Some(u) = error_url {
        x.push_str("  ");
        cdata_element(&mut x, "Error", &[], u);
    }
    x.push_str("</VAST>\n");
    x
}

fn write_ad(x: &mut String, ad: &VastAd) {
    let seq = ad.sequence.map(|s| s.to_string());
    let mut attrs: Vec<(&str, &str)> = vec![("id", &ad.id)];
    if let Some(s) = &seq {
        attrs.push(("sequence", s));
    }
    open(x, 1, "Ad", &attrs);
    open(x, 2, "InLine", &[]);
    // AdDefinitionBase_type: AdSystem, Error*, Extensions?, Impression+, Pricing?, ...
    indent(x, 3);
    text_element(
        x,
        "AdSystem",
        &[("version", env!("CARGO_PKG_VERSION"))],
        if ad.ad_system.is_empty() {
            AD_SYSTEM
        } else {
            &ad.ad_system
        },
    );
    for u in &ad.error_urls {
        indent(x, 3);
        cdata_element(x, "Error", &[], u);
    }
    if ad.impression_urls.is_empty() {
        indent(x, 3);
        cdata_element(x, "Impression", &[], "about:blank");
    }
    for u in &ad.impression_urls {
        indent(x, 3);
        cdata_element(x, "Impression", &[], u);
    }
    if let Some(p) = ad.price {
        indent(x, 3);
        text_element(
            x,
            "Pricing",
            &[("model", "CPM"), ("currency", "USD")],
            &format!("{p}"),
        );
    }
    // Inline_type: AdServingId, AdTitle, AdVerifications?, Advertiser?, Category*, Creatives.
    indent(x, 3);
    text_element(x, "AdServingId", &[], &ad.ad_serving_id);
    indent(x, 3);
    text_element(x, "AdTitle", &[], &ad.title);
    if let Some(a) = &ad.advertiser {
        indent(x, 3);
        text_element(x, "Advertiser", &[], a);
    }
    if let Some(c) = &ad.category {
        indent(x, 3);
        text_element(x, "Category", &[("authority", IAB_CATEGORY_AUTHORITY)], c);
    }
    open(x, 3, "Creatives", &[]);
    open(
        x,
        4,
        "Creative",
        &[("id", &ad.creative_id), ("sequence", "1"), ("adId", &ad.id)],
    );
    // Creative_Inline_type: ..., Linear?, ..., UniversalAdId+.
    open(x, 5, "Linear", &[]);
    // Linear_Base_type (TrackingEvents?) then Linear_Inline_type (Duration, MediaFiles,
    // VideoClicks?).
    if !ad.tracking.is_empty() {
        open(x, 6, "TrackingEvents", &[]);
        for (event, url) in &ad.tracking {
            indent(x, 7);
            cdata_element(x, "Tracking", &[("event", event.as_str())], url);
        }
        close(x, 6, "TrackingEvents");
    }
    indent(x, 6);
    text_element(x, "Duration", &[], &clock(ad.duration_s));
    open(x, 6, "MediaFiles", &[]);
    for m in &ad.media {
        let (w, h) = (m.width.to_string(), m.height.to_string());
        let bitrate = m.bitrate.map(|b| b.to_string());
        let mut attrs: Vec<(&str, &str)> = vec![
            (
                "delivery",
                match m.delivery {
                    VastDelivery::Progressive => "progressive",
                    VastDelivery::Streaming => "streaming",
                },
            ),
            ("type", &m.mime),
            ("width", &w),
            ("height", &h),
        ];
        if let Some(b) = &bitrate {
            attrs.push(("bitrate", b));
        }
        indent(x, 7);
        cdata_element(x, "MediaFile", &attrs, &m.url);
    }
    close(x, 6, "MediaFiles");
    if ad.click_through.is_some() || !ad.click_tracking.is_empty() {
        // VideoClicks_type: ClickTracking*, ClickThrough?, CustomClick*.
        open(x, 6, "VideoClicks", &[]);
        for u in &ad.click_tracking {
            indent(x, 7);
            cdata_element(x, "ClickTracking", &[], u);
        }
        if let Some(u) = &ad.click_through {
            indent(x, 7);
            cdata_element(x, "ClickThrough", &[], u);
        }
        close(x, 6, "VideoClicks");
    }
    close(x, 5, "Linear");
    indent(x, 5);
    match &ad.universal_ad_id {
        Some(u) => text_element(x, "UniversalAdId", &[("idRegistry", &u.registry)], &u.id),
        None => text_element(x, "UniversalAdId", &[("idRegistry", "unknown")], "unknown"),
    }
    close(x, 4, "Creative");
    close(x, 3, "Creatives");
    close(x, 2, "InLine");
    close(x, 1, "Ad");
}

/// `HH:MM:SS` for `xs:time`, which stops at 23:59:59.
fn clock(s: u32) -> String {
    let s = s.min(24 * 3600 - 1);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn indent(x: &mut String, depth: usize) {
    for _ in 0..depth {
        x.push_str("  ");
    }
}

fn open(x: &mut String, depth: usize, name: &str, attrs: &[(&str, &str)]) {
    indent(x, depth);
    start_tag(x, name, attrs);
    x.push('\n');
}

fn close(x: &mut String, depth: usize, name: &str) {
    indent(x, depth);
    let _ = writeln!(x, "</{name}>");
}

fn start_tag(x: &mut String, name: &str, attrs: &[(&str, &str)]) {
    x.push('<');
    x.push_str(name);
    for (k, v) in attrs {
        x.push(' ');
        x.push_str(k);
        x.push_str("=\"");
        escape(x, v, true);
        x.push('"');
    }
    x.push('>');
}

fn text_element(x: &mut String, name: &str, attrs: &[(&str, &str)], text: &str) {
    start_tag(x, name, attrs);
    escape(x, text, false);
    let _ = writeln!(x, "</{name}>");
}

fn cdata_element(x: &mut String, name: &str, attrs: &[(&str, &str)], url: &str) {
    start_tag(x, name, attrs);
    x.push_str("<![CDATA[");
    // A CDATA section cannot hold "]]>": end the section between "]]" and ">" and reopen it.
    // (After `uri` there is none left; this keeps the writer safe if that ever changes.)
    x.push_str(&uri(url).replace("]]>", "]]]]><![CDATA[>"));
    x.push_str("]]>");
    let _ = writeln!(x, "</{name}>");
}

/// A URL as `xs:anyURI` accepts it (libxml2 checks it as an RFC 3986 URI reference): every
/// character RFC 3986 does not allow is percent-encoded (UTF-8), as are `[` and `]` (allowed
/// only around an IPv6 host, which Podium's URLs do not use), a `%` that does not start an
/// escape, a second `#`, a `:` that would make a bad scheme or port, and an `@` in user info.
///
/// VAST macros are therefore written `%5BERRORCODE%5D`; players that expand only the bracketed
/// form will not expand them, which is the price of a document the 4.2 schema accepts.
fn uri(url: &str) -> String {
    structure(&encode_chars(url))
}

fn encode_chars(url: &str) -> String {
    let bytes = url.trim().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut seen_fragment = false;
    let chars = url.trim().char_indices().filter(|&(_, c)| xml_char(c));
    for (i, c) in chars {
        let keep = match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => true,
            '-' | '.' | '_' | '~' | ':' | '/' | '?' | '@' | '!' | '$' | '&' | '\'' | '(' | ')'
            | '*' | '+' | ',' | ';' | '=' => true,
            '%' => {
                bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit()
            }
            '#' => !std::mem::replace(&mut seen_fragment, true),
            _ => false,
        };
        if keep {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Whether XML 1.0 can carry `c` at all (escaped or not).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn escape(x: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '&' => x.push_str("&amp;"),
            '<' => x.push_str("&lt;"),
            '>' => x.push_str("&gt;"),
            '"' if attribute => x.push_str("&quot;"),
            '\'' if attribute => x.push_str("&apos;"),
            // Attribute values are whitespace-normalised by parsers unless written as references.
            '\t' if attribute => x.push_str("&#9;"),
            '\n' if attribute => x.push_str("&#10;"),
            '\r' => x.push_str("&#13;"),
            c if xml_char(c) => x.push(c),
            _ => {}
        }
    }
}

/// Percent-encodes the `:` and `@` that would make an encoded URL's scheme, port or user info
/// invalid.
fn structure(enc: &str) -> String {
    let first_end = enc.find(['/', '?', '#']).unwrap_or(enc.len());
    let Some(colon) = enc[..first_end].find(':') else {
        return enc.to_owned();
    };
    let scheme = &enc[..colon];
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        // A relative reference: its first segment cannot hold a colon.
        return format!(
            "{}{}",
            enc[..first_end].replace(':', "%3A"),
            &enc[first_end..]
        );
    }
    let rest = &enc[colon + 1..];
    let Some(after) = rest.strip_prefix("//") else {
        return enc.to_owned();
    };
    let auth_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(auth_end);
    let (user, host_port) = match authority.rfind('@') {
        Some(a) => (
            Some(authority[..a].replace('@', "%40")),
            &authority[a + 1..],
        ),
        None => (None, authority),
    };
    let (host, port) = match host_port.rfind(':') {
        Some(c) if host_port[c + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&host_port[..c], Some(&host_port[c + 1..]))
        }
        _ => (host_port, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(u) = user {
        out.push_str(&u);
        out.push('@');
    }
    out.push_str(&host.replace(':', "%3A"));
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_and_caps() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(30), "00:00:30");
        assert_eq!(clock(3725), "01:02:05");
        assert_eq!(clock(u32::MAX), "23:59:59");
    }

    #[test]
    fn escapes_text_attributes_and_cdata() {
        let mut s = String::new();
        escape(&mut s, "a&b<c>\"'\u{1}", true);
        assert_eq!(s, "a&amp;b&lt;c&gt;&quot;&apos;");
        let mut s = String::new();
        cdata_element(&mut s, "U", &[], " x]]>y ");
        assert_eq!(s, "<U><![CDATA[x%5D%5D%3Ey]]></U>\n");
    }

    #[test]
    fn urls_are_percent_encoded_where_uris_forbid() {
        assert_eq!(
            uri("https://a.example/p?q=1&r=%20#f"),
            "https://a.example/p?q=1&r=%20#f"
        );
        assert_eq!(
            uri("https://a.example/?e=[ERRORCODE]"),
            "https://a.example/?e=%5BERRORCODE%5D"
        );
        assert_eq!(uri("a b<\"é"), "a%20b%3C%22%C3%A9");
        assert_eq!(uri("x%zz%4"), "x%25zz%254");
        assert_eq!(uri("p#a#b"), "p#a%23b");
        assert_eq!(uri("1x:y/z:w"), "1x%3Ay/z:w");
        assert_eq!(
            uri("https://h.example:8080/a:b"),
            "https://h.example:8080/a:b"
        );
        assert_eq!(uri("https://h.example:zz/"), "https://h.example%3Azz/");
        assert_eq!(
            uri("https://u:p@w@h.example/"),
            "https://u:p%40w@h.example/"
        );
    }
}
