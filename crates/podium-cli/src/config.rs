//! `podium serve --config FILE`: one TOML file that sets `serve`'s options, fleet backends
//! included, so that every server of a fleet starts from the same file.
//!
//! Top-level keys are `serve`'s long options in snake_case (`listen`, `admin_listen`,
//! `fleet_size`, …). A `[fleet]` table holds shorthands that switch every backend to its
//! distributed form at once:
//!
//! ```toml
//! [fleet]
//! redis = "redis://redis:6379"        # online features, budget ledger, frequency caps
//! nats = "nats://nats:4222"           # event stream (published and consumed)
//! object_store = "s3://podium/prod"   # registry at <it>/registry, logs at <it>/logs
//! ```
//!
//! The file is turned into command-line flags placed before the ones given, so a flag on the
//! command line overrides the file.

use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

/// `argv` with the options of `serve`'s config file (`--config FILE`, or `PODIUM_CONFIG`)
/// spliced in after `serve`; unchanged for other commands or without a file.
pub fn expand(
    argv: Vec<OsString>,
    serve_options: &BTreeSet<String>,
) -> anyhow::Result<Vec<OsString>> {
    let Some(at) = argv.iter().position(|a| a == "serve") else {
        return Ok(argv);
    };
    // Only a `serve` in the subcommand position: `podium --x serve` is not a thing, so the
    // first non-flag argument decides.
    if argv[1..at]
        .iter()
        .any(|a| !a.to_string_lossy().starts_with('-'))
    {
        return Ok(argv);
    }
    let mut path = None;
    let mut i = at + 1;
    while i < argv.len() {
        let a = argv[i].to_string_lossy();
        if a == "--config" {
            path = argv.get(i + 1).map(|p| p.to_string_lossy().into_owned());
            i += 1;
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
        i += 1;
    }
    let path = match path.or_else(|| {
        std::env::var("PODIUM_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
    }) {
        Some(p) => p,
        None => return Ok(argv),
    };
    let flags = flags_of(Path::new(&path), serve_options)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(argv[at + 1..].iter().cloned());
    Ok(out)
}

/// The command-line flags a config file stands for.
pub fn flags_of(path: &Path, serve_options: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {}: not valid TOML", path.display()))?;
    let at = |key: &str| format!("config file {}: `{key}`", path.display());
    // Shorthands first, so that a key set on its own in the file overrides its shorthand.
    let mut flags = Vec::new();
    let mut own = Vec::new();
    for (key, value) in &table {
        if key == "fleet" {
            let toml::Value::Table(fleet) = value else {
                bail!("{} must be a table", at("fleet"));
            };
            for (k, v) in fleet {
                let toml::Value::String(url) = v else {
                    bail!("{} must be a string", at(&format!("fleet.{k}")));
                };
                match k.as_str() {
                    "redis" => {
                        for option in ["feature-store", "budget-ledger", "frequency-store"] {
                            flags.push(format!("--{option}={url}"));
                        }
                    }
                    "nats" => flags.push(format!("--events={url}")),
                    "object_store" => {
                        let base = url.trim_end_matches('/');
                        flags.push(format!("--registry={base}/registry"));
                        flags.push(format!("--log-dir={base}/logs"));
                    }
                    other => bail!(
                        "{}: unknown fleet backend (expected redis, nats or object_store)",
                        at(&format!("fleet.{other}"))
                    ),
                }
            }
            continue;
        }
        let option = key.replace('_', "-");
        if option == "config" || !serve_options.contains(&option) {
            bail!(
                "{}: not an option of `podium serve` (see `podium serve --help`)",
                at(key)
            );
        }
        match value {
            toml::Value::Boolean(true) => own.push(format!("--{option}")),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => own.push(format!("--{option}={s}")),
            toml::Value::Integer(n) => own.push(format!("--{option}={n}")),
            toml::Value::Float(x) => own.push(format!("--{option}={x}")),
            _ => bail!("{} must be a string, number or boolean", at(key)),
        }
    }
    flags.extend(own);
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BTreeSet<String> {
        [
            "listen",
            "fleet-size",
            "feature-store",
            "budget-ledger",
            "frequency-store",
            "events",
            "registry",
            "log-dir",
            "exploration",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn fleet_shorthands_switch_every_backend_and_flags_override_the_file() {
        let f = write(
            "listen = \"0.0.0.0:8080\"\nfleet_size = 3\n[fleet]\nredis = \"redis://r:6379\"\n\
             nats = \"nats://n:4222\"\nobject_store = \"s3://b/p/\"\n",
        );
        let argv: Vec<OsString> = ["podium", "serve", "--config"]
            .iter()
            .map(OsString::from)
            .chain([f.path().as_os_str().to_owned(), "--fleet-size=5".into()])
            .collect();
        let out = expand(argv, &options()).unwrap();
        let out: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--listen=0.0.0.0:8080",
            "--feature-store=redis://r:6379",
            "--budget-ledger=redis://r:6379",
            "--frequency-store=redis://r:6379",
            "--events=nats://n:4222",
            "--registry=s3://b/p/registry",
            "--log-dir=s3://b/p/logs",
        ] {
            assert!(
                out.contains(&want.to_string()),
                "{want} missing from {out:?}"
            );
        }
        // A key of its own comes after the shorthand that also sets it.
        let f = write("log_dir = \"off\"\n[fleet]\nobject_store = \"s3://b\"\n");
        let flags = flags_of(f.path(), &options()).unwrap();
        assert_eq!(flags.last().unwrap(), "--log-dir=off", "{flags:?}");
        // The command line's own flag comes last, so it wins.
        assert_eq!(out.last().unwrap(), "--fleet-size=5");
        let file_at = out.iter().position(|a| a == "--fleet-size=3").unwrap();
        assert!(file_at < out.len() - 1);
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let f = write("listne = \"0.0.0.0:8080\"\n");
        let e = flags_of(f.path(), &options()).unwrap_err().to_string();
        assert!(
            e.contains("listne") && e.contains(&f.path().display().to_string()),
            "{e}"
        );
        let f = write("[fleet]\nkafka = \"x\"\n");
        let e = flags_of(f.path(), &options()).unwrap_err().to_string();
        assert!(e.contains("fleet.kafka"), "{e}");
        let f = write("listen = [1, 2]\n");
        assert!(flags_of(f.path(), &options()).is_err());
        let f = write("listen = \n");
        let e = format!("{:#}", flags_of(f.path(), &options()).unwrap_err());
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn other_commands_and_no_file_leave_argv_alone() {
        let argv: Vec<OsString> = ["podium", "model", "serve"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(expand(argv.clone(), &options()).unwrap(), argv);
    }
}
