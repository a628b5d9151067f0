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
#[derive(Debug, Clone)]
pub struct FeatureFrame {
    schema: Arc<FrameSchema>,
    rows: usize,
    data: Vec<f32>,
}

impl FeatureFrame {
    /// A frame of `rows` rows with every value missing.
    pub fn new(schema: Arc<FrameSchema>, rows: usize) -> Self {
        let data = vec![f32::NAN; schema.len() * rows];
        Self { schema, rows, data }
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<FrameSchema> {
        &self.schema
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// One column's values, one per row.
    pub fn column(&self, col: usize) -> &[f32] {
        &self.data[col * self.rows..(col + 1) * self.rows]
    }

    /// One column's values, writable.
    pub fn column_mut(&mut self, col: usize) -> &mut [f32] {
        &mut self.data[col * self.rows..(col + 1) * self.rows]
    }

    /// Sets every row of a column to one value (request-level features are broadcast this way).
    pub fn fill_column(&mut self, col: usize, value: f32) {
        self.column_mut(col).fill(value);
    }

    /// One value.
    pub fn get(&self, col: usize, row: usize) -> f32 {
        self.data[col * self.rows + row]
    }

    /// Sets one value.
    pub fn set(&mut self, col: usize, row: usize, value: f32) {
        self.data[col * self.rows + row] = value;
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
}
