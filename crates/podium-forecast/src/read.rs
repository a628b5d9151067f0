//! Reading the decision log into opportunities: only the columns the forecast needs, file by
//! file, a bad file named and skipped (what the others hold is kept).

use crate::opportunity::{user_draw, Opportunity};
use podium_core::AdRequest;
use podium_features::offline::{read_decision_rows, STATE_COLUMNS};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Text columns the forecast never reads (nor the replay state, [`STATE_COLUMNS`]).
const SKIPPED_TEXT: [&str; 6] = [
    "model_versions",
    "degraded",
    "experiments",
    "features",
    "served",
    "decision",
];

/// A file (or row) that could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct ReadProblem {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub error: String,
}

/// The decision files of a log: `DIR/decisions/*.parquet`, `DIR/*.parquet`, or one file.
pub fn decision_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = if path.join("decisions").is_dir() {
        path.join("decisions")
    } else {
        path.to_path_buf()
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "{}: holds no decision log (no .parquet files here or under decisions/)",
            path.display()
        ));
    }
    Ok(files)
}

/// Reads a decision log file by file, handing each request to `f` (so that a large log need not
/// fit in memory); the files read, and the files or rows refused.
pub fn read_each(
    path: &Path,
    sample_rate: f64,
    mut f: impl FnMut(Opportunity),
) -> Result<(usize, Vec<ReadProblem>), String> {
    let files = decision_files(path)?;
    let (mut read, mut problems) = (0, Vec::new());
    let skipped: Vec<&str> = SKIPPED_TEXT.into_iter().chain(STATE_COLUMNS).collect();
    for file in &files {
        let rows = match read_decision_rows(file, &skipped) {
            Ok(rows) => rows,
            Err(e) => {
                problems.push(ReadProblem {
                    file: file.display().to_string(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        read += 1;
        let mut bad = 0usize;
        let mut first_bad = None;
        for (i, row) in rows.iter().enumerate() {
            match serde_json::from_str::<AdRequest>(&row.request) {
                Ok(req) => {
                    let keep = user_draw(&row.user_id) < sample_rate;
                    f(Opportunity::of(&req, row.ts_ms, keep));
                }
                Err(e) => {
                    bad += 1;
                    first_bad.get_or_insert(format!("row {i}: request: {e}"));
                }
            }
        }
        if let Some(first) = first_bad {
            problems.push(ReadProblem {
                file: file.display().to_string(),
                error: format!("{bad} rows without a readable request, skipped (first: {first})"),
            });
        }
    }
    Ok((read, problems))
}
