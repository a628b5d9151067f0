//! The column-major feature frame: one row per candidate, one column per feature.
//!
//! Models read whole columns, so a model's input mapping is a list of column indices that is
//! computed once when the model binds to the schema, never per request.

use std::collections::HashMap;
use std::sync::Arc;

/// The ordered feature names a frame holds, with a name → column index.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSchema {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl FrameSchema {
    /// A schema of these names, in this order; a repeated name keeps its first column.
    pub fn new(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        Self { names, index }
    }

    /// Column of a feature, if the schema has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Feature names in column order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the schema has no columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Feature values of a batch of rows, stored column by column; NaN means missing.
///
/// A frame may hold only some of its schema's columns (those the models of one stage read,
/// resolved at model load): the others read as missing, so a stage that scores 1,000 candidates
/// with a 16-input model builds 16 columns, not the whole schema.
#[derive(Debug, Clone)]
pub struct FeatureFrame {
    schema: Arc<FrameSchema>,
    rows: usize,
    /// Per schema column, the block of `data` holding it; absent columns point at `missing`.
    block: Vec<u32>,
    /// The block every absent column reads: `rows` NaNs.
    missing: u32,
    data: Vec<f32>,
}

impl FeatureFrame {
    /// A frame of `rows` rows with every column present and every value missing.
    pub fn new(schema: Arc<FrameSchema>, rows: usize) -> Self {
        let all: Vec<usize> = (0..schema.len()).collect();
        Self::with_columns(schema, rows, &all)
    }

    /// A frame of `rows` rows holding only the columns `present` (schema positions; repeats and
    /// positions past the schema are ignored); every value starts missing.
    pub fn with_columns(schema: Arc<FrameSchema>, rows: usize, present: &[usize]) -> Self {
        let mut block = vec![u32::MAX; schema.len()];
        let mut blocks = 0u32;
        for &c in present {
            if let Some(b) = block.get_mut(c) {
                if *b == u32::MAX {
                    *b = blocks;
                    blocks += 1;
                }
            }
        }
        let missing = blocks;
        for b in &mut block {
            if *b == u32::MAX {
                *b = missing;
            }
        }
        let data = vec![f32::NAN; (blocks as usize + 1) * rows];
        Self {
            schema,
            rows,
            block,
            missing,
            data,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<FrameSchema> {
        &self.schema
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the frame holds a column (an absent one reads as missing).
    pub fn has_column(&self, col: usize) -> bool {
        self.block[col] != self.missing
    }

    fn range(&self, col: usize) -> std::ops::Range<usize> {
        let b = self.block[col] as usize;
        b * self.rows..(b + 1) * self.rows
    }

    /// One column's values, one per row (all missing for a column the frame does not hold).
    pub fn column(&self, col: usize) -> &[f32] {
        &self.data[self.range(col)]
    }

    /// One column's values, writable; a column the frame did not hold is added.
    pub fn column_mut(&mut self, col: usize) -> &mut [f32] {
        if self.block[col] == self.missing {
            // Keep the missing block last and move it up one: the new column takes its place.
            self.data.extend(std::iter::repeat_n(f32::NAN, self.rows));
            let old = self.missing;
            self.missing += 1;
            for b in &mut self.block {
                if *b == old {
                    *b = self.missing;
                }
            }
            self.block[col] = old;
        }
        let r = self.range(col);
        &mut self.data[r]
    }

    /// Sets every row of a column to one value (request-level features are broadcast this way).
    pub fn fill_column(&mut self, col: usize, value: f32) {
        self.column_mut(col).fill(value);
    }

    /// One value.
    pub fn get(&self, col: usize, row: usize) -> f32 {
        self.column(col)[row]
    }

    /// Sets one value.
    pub fn set(&mut self, col: usize, row: usize, value: f32) {
        self.column_mut(col)[row] = value;
    }

    /// The values of one row, in schema order (for logging a served row).
    pub fn row(&self, row: usize) -> Vec<f32> {
        (0..self.schema.len()).map(|c| self.get(c, row)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_contiguous_and_start_missing() {
        let schema = Arc::new(FrameSchema::new(["a", "b"]));
        let mut f = FeatureFrame::new(schema.clone(), 3);
        assert!(f.column(0).iter().all(|v| v.is_nan()));
        f.fill_column(1, 2.0);
        f.set(0, 2, 5.0);
        assert_eq!(f.column(1), &[2.0, 2.0, 2.0]);
        assert_eq!(f.get(0, 2), 5.0);
        assert_eq!(schema.column("b"), Some(1));
        assert_eq!(schema.column("c"), None);
        assert_eq!(f.row(2), vec![5.0, 2.0]);
    }

    #[test]
    fn a_frame_of_some_columns_reads_the_others_as_missing() {
        let schema = Arc::new(FrameSchema::new(["a", "b", "c"]));
        let mut f = FeatureFrame::with_columns(schema, 2, &[2, 2, 7]);
        assert!(f.has_column(2) && !f.has_column(0));
        f.fill_column(2, 3.0);
        assert!(f.column(0).iter().all(|v| v.is_nan()));
        assert_eq!(f.column(2), &[3.0, 3.0]);
        // Writing an absent column adds it without disturbing the others.
        f.set(0, 1, 5.0);
        assert!(f.has_column(0) && !f.has_column(1));
        assert_eq!(f.get(0, 1), 5.0);
        assert!(f.get(0, 0).is_nan());
        assert_eq!(f.column(2), &[3.0, 3.0]);
        assert!(f.column(1).iter().all(|v| v.is_nan()));
        let row = f.row(1);
        assert_eq!((row[0], row[2]), (5.0, 3.0));
        assert!(row[1].is_nan());
    }
}
