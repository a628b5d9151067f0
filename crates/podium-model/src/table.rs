//! Reading feature tables from CSV: a header naming the features, one row per example, an empty
//! cell for a missing value. Used for golden rows and by `podium model score` and `bench`.

use crate::error::ModelError;
use std::path::Path;

/// Feature values read from a CSV, column by column, in the order they were asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureTable {
    /// One column per requested feature; NaN = missing.
    pub columns: Vec<Vec<f32>>,
    /// The `prediction` column, when the file has one and it was asked for.
    pub prediction: Option<Vec<f64>>,
    /// Number of data rows.
    pub rows: usize,
}

impl FeatureTable {
    /// Reads `features` (every one must be a header column; others are ignored) and, when
    /// `with_prediction` is set, the optional `prediction` column.
    pub fn read(
        path: &Path,
        features: &[String],
        with_prediction: bool,
    ) -> Result<Self, ModelError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| ModelError::parse(path, e))?;
        let header = reader
            .headers()
            .map_err(|e| ModelError::parse(path, e))?
            .clone();
        let position = |name: &str| header.iter().position(|h| h == name);
        let wanted: Vec<usize> = features
            .iter()
            .map(|n| {
                position(n).ok_or_else(|| {
                    ModelError::parse(
                        path,
                        format!("header lacks column {n:?}, which the model reads"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let prediction_col = if with_prediction {
            position("prediction")
        } else {
            None
        };
        let mut columns: Vec<Vec<f32>> = vec![Vec::new(); features.len()];
        let mut prediction = prediction_col.map(|_| Vec::new());
        let mut rows = 0;
        for (r, record) in reader.records().enumerate() {
            let record = record.map_err(|e| ModelError::parse(path, e))?;
            let cell = |c: usize| -> Result<f64, ModelError> {
                let text = record.get(c).unwrap_or("");
                if text.is_empty() || text.eq_ignore_ascii_case("nan") {
                    return Ok(f64::NAN);
                }
                text.parse::<f64>().map_err(|_| {
                    ModelError::parse(
                        path,
                        format!(
                            "row {}, column {:?}: {text:?} is not a number",
                            r + 1,
                            &header[c]
                        ),
                    )
                })
            };
            for (col, &c) in columns.iter_mut().zip(&wanted) {
                col.push(cell(c)? as f32);
            }
            if let (Some(p), Some(c)) = (prediction.as_mut(), prediction_col) {
                p.push(cell(c)?);
            }
            rows += 1;
        }
        Ok(Self {
            columns,
            prediction,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reads_requested_columns_in_order_and_ignores_others() {
        let f = write("b,unused,a,prediction\n1,x,2,0.5\n,y,3.5,0.25\n");
        let t = FeatureTable::read(f.path(), &["a".into(), "b".into()], true).unwrap();
        assert_eq!(t.rows, 2);
        assert_eq!(t.columns[0], vec![2.0, 3.5]);
        assert_eq!(t.columns[1][0], 1.0);
        assert!(t.columns[1][1].is_nan());
        assert_eq!(t.prediction, Some(vec![0.5, 0.25]));
    }

    #[test]
    fn names_the_missing_column_and_the_bad_cell() {
        let f = write("a\n1\n");
        let e = FeatureTable::read(f.path(), &["a".into(), "b".into()], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"b\"") && e.contains(&f.path().display().to_string()),
            "{e}"
        );
        let f = write("a,b\n1,2\n3,abc\n");
        let e = FeatureTable::read(f.path(), &["a".into(), "b".into()], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 2") && e.contains("\"b\"") && e.contains("abc"),
            "{e}"
        );
    }
}
