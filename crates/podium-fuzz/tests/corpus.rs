//! Every fuzz target over its committed corpus (seeds and the crashes found so far, fixed), and
//! over mutations of it: a short, deterministic fuzzing pass on stable Rust for CI.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// xorshift64*: deterministic, so a failure here fails the same way again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of the kinds libFuzzer starts with: flip bits, overwrite bytes with
/// interesting values, insert, delete, truncate, duplicate a span.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] = [0u8, 0xff, b'"', b'{', b'-', b'9', b'\n', 0x7f][rng.below(8)];
            }
            2 => d.insert(at, rng.next() as u8),
            3 if at < d.len() => {
                let n = rng.below(16).min(d.len() - at);
                d.drain(at..at + n);
            }
            4 => d.truncate(at),
            _ if at < d.len() => {
                let n = rng.below(64).min(d.len() - at);
                let span = d[at..at + n].to_vec();
                d.splice(at..at, span);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    for (target, run) in podium_fuzz::TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "no corpus for {target}");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
        // Bundles and Parquet files go through the file system: fewer mutations of those.
        let rounds = if matches!(target, "model_bundle" | "parquet_log") {
            60
        } else {
            300
        };
        for (path, seed) in &seeds {
            run(seed);
            for round in 0..rounds {
                let input = mutate(seed, &mut rng);
                let outcome = std::panic::catch_unwind(|| run(&input));
                if outcome.is_err() {
                    let out = std::env::temp_dir().join(format!("podium-fuzz-{target}-{round}"));
                    std::fs::write(&out, &input).unwrap();
                    panic!(
                        "{target} panicked on mutation {round} of {}; input saved to {} (add it to fuzz/corpus/{target}/ once fixed)",
                        path.display(),
                        out.display()
                    );
                }
            }
        }
    }
}
