//! Every VAST document Podium writes validates against the IAB's VAST 4.2 schema, checked by
//! xmllint (Debian's libxml2-utils). The helper is first shown to accept an IAB sample and to
//! reject a broken document, so that a passing test means something.

use podium_core::Micros;
use podium_openrtb::{
    empty_vast, vast_document, UniversalAdId, VastAd, VastDelivery, VastEvent, VastMedia,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

fn vast_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/vast")
}

/// Runs `xmllint --noout --schema vast_4.2.xsd` on `doc`; fails the test if xmllint is missing.
fn validate(doc: &str) -> Result<(), String> {
    let xsd = vast_dir().join("vast_4.2.xsd");
    assert!(
        xsd.exists(),
        "VAST 4.2 schema not found at {}",
        xsd.display()
    );
    let mut file = tempfile::Builder::new().suffix(".xml").tempfile().unwrap();
    file.write_all(doc.as_bytes()).unwrap();
    let out = match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(file.path())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xmllint is not installed: install libxml2-utils (apt-get install -y libxml2-utils) \
             to validate VAST documents against the 4.2 schema"
        ),
        Err(e) => panic!("cannot run xmllint: {e}"),
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_valid(doc: &str) {
    if let Err(e) = validate(doc) {
        panic!("invalid VAST 4.2:\n{e}\n--- document ---\n{doc}");
    }
}

/// The text content of the first element called `name`, as a parser reads it.
fn text_of(doc: &str, name: &str) -> String {
    let mut file = tempfile::Builder::new().suffix(".xml").tempfile().unwrap();
    file.write_all(doc.as_bytes()).unwrap();
    let out = Command::new("xmllint")
        .arg("--xpath")
        .arg(format!("string((//*[local-name()='{name}'])[1])"))
        .arg(file.path())
        .output()
        .expect("xmllint (libxml2-utils) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

fn ad(n: u32) -> VastAd {
    VastAd {
        id: format!("li-{n}"),
        sequence: Some(n),
        title: format!("Ad {n}"),
        advertiser: Some(format!("advertiser{n}.example")),
        category: Some("IAB2-1".into()),
        ad_serving_id: format!("req-1-{n}"),
        price: Some(Micros(12_500_000)),
        error_urls: vec![format!("https://t.example/error?ad={n}&code=[ERRORCODE]")],
        impression_urls: vec![format!("https://t.example/imp?ad={n}")],
        creative_id: format!("cr-{n}"),
        universal_ad_id: Some(UniversalAdId {
            registry: "Ad-ID".into(),
            id: format!("PODM000{n}000H"),
        }),
        duration_s: 15 * n,
        media: vec![
            VastMedia {
                url: format!("https://cdn.example/{n}/1080.mp4"),
                mime: "video/mp4".into(),
                width: 1920,
                height: 1080,
                bitrate: Some(4500),
                delivery: VastDelivery::Progressive,
            },
            VastMedia {
                url: format!("https://cdn.example/{n}/master.m3u8"),
                mime: "application/x-mpegURL".into(),
                width: 1920,
                height: 1080,
                bitrate: None,
                delivery: VastDelivery::Streaming,
            },
        ],
        tracking: [
            VastEvent::Start,
            VastEvent::FirstQuartile,
            VastEvent::Midpoint,
            VastEvent::ThirdQuartile,
            VastEvent::Complete,
        ]
        .into_iter()
        .map(|e| (e, format!("https://t.example/{}?ad={n}", e.as_str())))
        .collect(),
        click_through: Some("https://brand.example/landing".into()),
        click_tracking: vec![format!("https://t.example/click?ad={n}")],
        ..VastAd::default()
    }
}

#[test]
fn helper_accepts_an_iab_sample() {
    let sample = vast_dir().join("samples-4.2/Inline_Simple.xml");
    assert_valid(&std::fs::read_to_string(sample).unwrap());
}

#[test]
fn helper_rejects_a_broken_document() {
    // An InLine without AdServingId, AdTitle or Creatives.
    let broken = r#"<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2" xmlns="http://www.iab.com/VAST"><Ad id="1"><InLine>
<AdSystem>Podium</AdSystem><Impression><![CDATA[https://t.example/i]]></Impression>
</InLine></Ad></VAST>"#;
    assert!(validate(broken).is_err());
    // Right elements, wrong namespace.
    let unqualified = vast_document(&[ad(1)]).replace(" xmlns=\"http://www.iab.com/VAST\"", "");
    assert!(validate(&unqualified).is_err());
}

#[test]
fn pod_of_three_validates() {
    let doc = vast_document(&[ad(1), ad(2), ad(3)]);
    assert_valid(&doc);
    assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<VAST version=\"4.2\""));
    for n in 1..=3 {
        assert!(
            doc.contains(&format!("<Ad id=\"li-{n}\" sequence=\"{n}\">")),
            "{doc}"
        );
    }
    assert!(doc.contains("<Duration>00:00:45</Duration>"));
    assert!(doc.contains("<Pricing model=\"CPM\" currency=\"USD\">12.500000</Pricing>"));
}

#[test]
fn single_minimal_ad_validates() {
    let minimal = VastAd {
        id: "solo".into(),
        title: "Solo".into(),
        ad_serving_id: "srv-1".into(),
        creative_id: "cr-solo".into(),
        duration_s: 30,
        media: vec![VastMedia {
            url: "https://cdn.example/solo.mp4".into(),
            mime: "video/mp4".into(),
            width: 1280,
            height: 720,
            ..VastMedia::default()
        }],
        ..VastAd::default()
    };
    let doc = vast_document(std::slice::from_ref(&minimal));
    assert_valid(&doc);
    assert!(doc.contains("about:blank"), "an Impression is required");
    assert!(doc.contains("<UniversalAdId idRegistry=\"unknown\">unknown</UniversalAdId>"));
    assert!(
        !doc.contains("sequence=\"1\">\n    <InLine"),
        "no sequence outside a pod"
    );
    assert_eq!(text_of(&doc, "AdSystem"), "Podium");

    // An ad without media cannot be InLine: it is left out, and the document stays valid.
    let no_media = VastAd {
        media: vec![],
        ..minimal
    };
    let doc = vast_document(&[no_media]);
    assert_valid(&doc);
    assert!(!doc.contains("<Ad "));
}

#[test]
fn tricky_characters_validate_and_round_trip() {
    let nasty_url = "https://t.example/x?a=1&b=<2>&c=\"q\"&d='s'&e=]]>&f=]]]]>&g=\u{1}end";
    let mut a = ad(1);
    a.id = "id\"<&>'".into();
    a.title = "Tom & Jerry's <\"Best\"> ]]> \u{0}\u{b}ünïcödé 🎬".into();
    a.advertiser = Some("A&B <Ltd>".into());
    a.ad_serving_id = "srv&<>".into();
    a.creative_id = "cr\t\n1".into();
    a.click_through = Some(nasty_url.into());
    a.media[0].url = nasty_url.into();
    a.media[0].mime = "video/mp4; codecs=\"avc1\"".into();
    a.universal_ad_id = Some(UniversalAdId {
        registry: "reg&\"".into(),
        id: "<id>".into(),
    });
    let doc = vast_document(&[a]);
    assert_valid(&doc);
    assert_eq!(
        text_of(&doc, "ClickThrough"),
        "https://t.example/x?a=1&b=%3C2%3E&c=%22q%22&d='s'&e=%5D%5D%3E&f=%5D%5D%5D%5D%3E&g=end",
        "characters a URI cannot hold are percent-encoded, control characters dropped"
    );
    assert!(
        doc.contains("error?ad=1&code=%5BERRORCODE%5D"),
        "VAST macros are percent-encoded to stay valid anyURIs"
    );
    assert_eq!(
        text_of(&doc, "AdTitle"),
        "Tom & Jerry's <\"Best\"> ]]> ünïcödé 🎬"
    );
    assert_eq!(text_of(&doc, "Advertiser"), "A&B <Ltd>");
}

#[test]
fn empty_vast_validates() {
    let doc = empty_vast(None);
    assert_valid(&doc);
    assert!(!doc.contains("<Ad"));
    let doc = empty_vast(Some("https://t.example/error?code=303&x=]]>"));
    assert_valid(&doc);
    assert_eq!(
        text_of(&doc, "Error"),
        "https://t.example/error?code=303&x=%5D%5D%3E"
    );
    assert_valid(&vast_document(&[]));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ -~]{0,20}",
            "(https://x\\.example/\\?a=[\\[\\]<>&\"'%#{}| ]{0,8}){1,2}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever strings the caller hands in, the document validates.
        #[test]
        fn any_strings_validate(
            fields in prop::collection::vec(text(), 10),
            duration_s in any::<u32>(),
            size in (any::<u32>(), any::<u32>()),
            sequence in prop::option::of(any::<u32>()),
        ) {
            let mut a = ad(1);
            a.id = fields[0].clone();
            a.title = fields[1].clone();
            a.advertiser = Some(fields[2].clone());
            a.category = Some(fields[3].clone());
            a.ad_serving_id = fields[4].clone();
            a.creative_id = fields[5].clone();
            a.error_urls = vec![fields[6].clone()];
            a.click_through = Some(fields[7].clone());
            a.media[0].url = fields[8].clone();
            a.media[0].mime = fields[9].clone();
            a.media[0].width = size.0;
            a.media[0].height = size.1;
            a.duration_s = duration_s;
            a.sequence = sequence;
            let doc = vast_document(&[a, ad(2)]);
            prop_assert!(validate(&doc).is_ok(), "{:?}\n{}", validate(&doc), doc);
        }
    }
}
