//! Hostile-input harnesses: each function feeds arbitrary bytes to one of Podium's decoders the
//! way the server or CLI would, and must return (whatever the decoder answers) without
//! panicking, hanging or allocating without bound. `fuzz/` runs them under libFuzzer
//! (`cargo fuzz run <target>`); the tests run them over the committed corpus
//! (`fuzz/corpus/<target>/`, seeds and every crash found so far) on stable Rust.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;

/// A harness: feeds one input to one decoder.
pub type Harness = fn(&[u8]);

/// The harnesses by target name, as `fuzz/fuzz_targets/` names them.
pub const TARGETS: [(&str, Harness); 5] = [
    ("decide_request", decide_request),
    ("openrtb_request", openrtb_request),
    ("events", events),
    ("model_bundle", model_bundle),
    ("parquet_log", parquet_log),
];

/// `POST /v1/decide`'s body parser and validator.
pub fn decide_request(data: &[u8]) {
    let _ = podium_server::api::parse_decide(data);
}

/// `POST /openrtb2/auction`'s bid request decoder (OpenRTB 2.6, pods included).
pub fn openrtb_request(data: &[u8]) {
    let _ = podium_openrtb::request::parse_bid_request(data);
}

/// The event path: each line decoded as an event and folded by an aggregator with the demo
/// world's definitions (what `POST /v1/events` and the NATS consumer do).
pub fn events(data: &[u8]) {
    static DEFINITIONS: OnceLock<std::sync::Arc<podium_features::Definitions>> = OnceLock::new();
    let defs = DEFINITIONS.get_or_init(|| {
        std::sync::Arc::new(
            podium_features::Definitions::parse(
                include_str!("../features.toml"),
                Path::new("features.toml"),
            )
            .expect("the harness's definitions parse"),
        )
    });
    let mut agg =
        podium_features::Aggregator::new(defs.clone(), std::time::Duration::from_secs(3600));
    for line in data.split(|&b| b == b'\n') {
        let _ = podium_features::stream::Event::from_json(line);
        let _ = agg.apply_json(line);
    }
}

/// Separates a bundle's files in a model-bundle input: `model.toml`, the weights file the
/// manifest names, and `golden.csv`, in that order.
pub const BUNDLE_SEPARATOR: &[u8] = b"\n%%%%\n";

/// The model bundle loader (`podium model validate`, the registry's publish, the lifecycle's
/// load): the input is split into `model.toml`, weights and `golden.csv`, written as a bundle
/// with correct checksums (so the parsers, not the checksum check, see the bytes) and loaded.
pub fn model_bundle(data: &[u8]) {
    let mut parts = split(data, BUNDLE_SEPARATOR);
    let manifest = parts.next().unwrap_or_default();
    let weights = parts.next().unwrap_or_default();
    let golden = parts.next();
    let Ok(dir) = tempfile::tempdir() else { return };
    let weights_name = std::str::from_utf8(manifest)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
        .and_then(|t| t.get("weights")?.as_str().map(str::to_string))
        .filter(|w| safe_relative(w))
        .unwrap_or_else(|| "weights/model.bin".into());
    let mut files: Vec<(String, &[u8])> =
        vec![("model.toml".into(), manifest), (weights_name, weights)];
    if let Some(g) = golden {
        files.push(("golden.csv".into(), g));
    }
    let mut sums = String::new();
    for (name, bytes) in &files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            if std::fs::create_dir_all(parent).is_err() {
                return;
            }
        }
        if std::fs::write(&path, bytes).is_err() {
            return;
        }
        let digest: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        sums.push_str(&format!("{digest}  {name}\n"));
    }
    if std::fs::write(dir.path().join("SHA256SUMS"), sums).is_ok() {
        let _ = podium_model::bundle::load_bundle(dir.path());
    }
}

/// The decision log reader (`podium replay`, `podium forecast`): the input as a Parquet file
/// in a log directory.
pub fn parquet_log(data: &[u8]) {
    // The reader contains panics of the Parquet/Arrow decoders on damaged files (they become an
    // error naming the file); libFuzzer's panic hook would abort on them before they are
    // caught. A printing hook instead: a panic that escapes still fails the input, since
    // libfuzzer-sys aborts on any panic leaving the target.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("part-0.parquet"), data).is_ok() {
        let _ = podium_log::read_decision_log(dir.path());
    }
}

/// A relative path inside the bundle: no `..`, not absolute, plain characters.
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && p.len() < 200
        && !p.starts_with('/')
        && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
}

fn split<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                rest = Some(&r[i + sep.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_inputs_split_into_their_files() {
        let parts: Vec<&[u8]> = split(b"a\n%%%%\nb\n%%%%\nc", BUNDLE_SEPARATOR).collect();
        assert_eq!(parts, vec![&b"a"[..], b"b", b"c"]);
        assert!(safe_relative("weights/model.txt"));
        assert!(!safe_relative("../x") && !safe_relative("/etc/passwd") && !safe_relative("a//b"));
    }
}
