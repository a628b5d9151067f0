//! Generated gradient-boosted tree ensembles, written as LightGBM text model files.
//!
//! Each tree is grown the way LightGBM grows them (leaf-wise, 31 leaves, node and leaf numbering
//! as `Tree::Split` assigns them), but splits are drawn instead of searched: the split feature is
//! random and the threshold is a random quantile (30–70 %) of the feature among the sample rows
//! reaching the leaf, and the leaf with the most sample rows is split next. Trees are therefore
//! balanced and their paths realistic. Leaf values are then set by one boosting step on a known
//! ground-truth logit (learning rate × mean residual), so the sum of 300 trees is a sane margin.
//!
//! This is a workload generator, not a trainer: it makes models with the compute shape of real
//! ones. [`Ensemble::margin`] is the reference evaluation, with LightGBM's semantics (input
//! widened to double, `x <= threshold` goes left), which the golden rows of the bundle record.

use rand::Rng;
use std::fmt::Write as _;

/// Size of a generated ensemble.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EnsembleShape {
    /// Number of trees.
    pub trees: usize,
    /// Leaves per tree.
    pub leaves: usize,
    /// Shrinkage of every tree after the first.
    pub learning_rate: f64,
    /// Fewest sample rows a leaf may hold (LightGBM's `min_data_in_leaf`).
    pub min_data_in_leaf: usize,
}

/// One tree in LightGBM's array layout: internal node `i` tests `split_feature[i]`; a child
/// `c >= 0` is internal node `c`, a child `c < 0` is leaf `!c`.
#[derive(Clone, Debug, PartialEq)]
struct Tree {
    split_feature: Vec<usize>,
    split_gain: Vec<f64>,
    threshold: Vec<f64>,
    left: Vec<i64>,
    right: Vec<i64>,
    internal_value: Vec<f64>,
    internal_count: Vec<usize>,
    leaf_value: Vec<f64>,
    leaf_count: Vec<usize>,
    shrinkage: f64,
}

impl Tree {
    fn leaf_of(&self, row: &[f32]) -> usize {
        if self.split_feature.is_empty() {
            return 0;
        }
        let mut node = 0usize;
        loop {
            // missing_type None: LightGBM compares a NaN as 0.0.
            let x = row[self.split_feature[node]];
            let x = if x.is_nan() { 0.0 } else { f64::from(x) };
            let next = if x <= self.threshold[node] {
                self.left[node]
            } else {
                self.right[node]
            };
            if next < 0 {
                return !next as usize;
            }
            node = next as usize;
        }
    }
}

/// A generated binary-objective ensemble over named features.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ensemble {
    features: Vec<String>,
    /// `[min:max]` of each feature over the sample rows, as LightGBM's `feature_infos`.
    ranges: Vec<(f32, f32)>,
    trees: Vec<Tree>,
    learning_rate: f64,
}

/// Grows an ensemble on `rows` (each holds the values of `features`, in order) towards `target`,
/// a logit per row.
pub(crate) fn generate(
    features: Vec<String>,
    rows: &[Vec<f32>],
    target: &[f64],
    shape: EnsembleShape,
    rng: &mut impl Rng,
) -> Ensemble {
    let d = features.len();
    let n = rows.len();
    assert!(n > 0 && target.len() == n, "one target per sample row");
    let ranges = (0..d)
        .map(|f| {
            rows.iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
                    (lo.min(r[f]), hi.max(r[f]))
                })
        })
        .collect();
    let base = target.iter().sum::<f64>() / n as f64;
    let mut margin = vec![base; n];
    let mut trees = Vec::with_capacity(shape.trees);
    for t in 0..shape.trees {
        let residual: Vec<f64> = target.iter().zip(&margin).map(|(y, m)| y - m).collect();
        // LightGBM folds the starting score (boost-from-average) into the first tree's leaves.
        let (offset, shrinkage) = if t == 0 {
            (base, 1.0)
        } else {
            (0.0, shape.learning_rate)
        };
        let (tree, leaves) = grow(rows, &residual, d, shape, shrinkage, offset, rng);
        for (rows_in_leaf, &value) in leaves.iter().zip(&tree.leaf_value) {
            for &i in rows_in_leaf {
                // The first tree's leaves already hold the starting score.
                let m = &mut margin[i as usize];
                *m = if t == 0 { value } else { *m + value };
            }
        }
        trees.push(tree);
    }
    Ensemble {
        features,
        ranges,
        trees,
        learning_rate: shape.learning_rate,
    }
}

fn mean(rows: &[u32], residual: &[f64]) -> f64 {
    rows.iter().map(|&i| residual[i as usize]).sum::<f64>() / rows.len().max(1) as f64
}

/// Grows one tree of drawn splits and sets its leaves to `offset + shrinkage × mean residual`.
/// Returns the tree and the sample rows each leaf holds.
fn grow(
    rows: &[Vec<f32>],
    residual: &[f64],
    d: usize,
    shape: EnsembleShape,
    shrinkage: f64,
    offset: f64,
    rng: &mut impl Rng,
) -> (Tree, Vec<Vec<u32>>) {
    let mut leaves: Vec<Vec<u32>> = vec![(0..rows.len() as u32).collect()];
    // Where each leaf hangs: (internal node, is its left child); the root leaf hangs nowhere.
    let mut parent: Vec<Option<(usize, bool)>> = vec![None];
    let mut blocked = vec![false];
    let mut tree = Tree {
        split_feature: Vec::new(),
        split_gain: Vec::new(),
        threshold: Vec::new(),
        left: Vec::new(),
        right: Vec::new(),
        internal_value: Vec::new(),
        internal_count: Vec::new(),
        leaf_value: Vec::new(),
        leaf_count: Vec::new(),
        shrinkage,
    };
    while leaves.len() < shape.leaves {
        // Split the largest leaf that can still be split, as a balanced tree would.
        let Some(leaf) = (0..leaves.len())
            .filter(|&l| !blocked[l] && leaves[l].len() >= 2 * shape.min_data_in_leaf)
            .max_by_key(|&l| (leaves[l].len(), std::cmp::Reverse(l)))
        else {
            break;
        };
        let Some((feature, threshold)) = draw_split(rows, &leaves[leaf], d, shape, rng) else {
            blocked[leaf] = true;
            continue;
        };
        let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = leaves[leaf]
            .iter()
            .partition(|&&i| f64::from(rows[i as usize][feature]) <= threshold);
        let node = tree.split_feature.len();
        let new_leaf = leaves.len();
        if let Some((p, is_left)) = parent[leaf] {
            if is_left {
                tree.left[p] = node as i64;
            } else {
                tree.right[p] = node as i64;
            }
        }
        let sum = |rs: &[u32]| rs.iter().map(|&i| residual[i as usize]).sum::<f64>();
        let (sl, sr) = (sum(&left_rows), sum(&right_rows));
        let (nl, nr) = (left_rows.len() as f64, right_rows.len() as f64);
        tree.split_feature.push(feature);
        tree.split_gain
            .push((sl * sl / nl + sr * sr / nr - (sl + sr).powi(2) / (nl + nr)).max(0.0));
        tree.threshold.push(threshold);
        tree.left.push(!(leaf as i64));
        tree.right.push(!(new_leaf as i64));
        tree.internal_value
            .push(offset + shrinkage * mean(&leaves[leaf], residual));
        tree.internal_count.push(leaves[leaf].len());
        leaves[leaf] = left_rows;
        leaves.push(right_rows);
        parent[leaf] = Some((node, true));
        parent.push(Some((node, false)));
        blocked[leaf] = false;
        blocked.push(false);
    }
    tree.leaf_value = leaves
        .iter()
        .map(|rs| offset + shrinkage * mean(rs, residual))
        .collect();
    tree.leaf_count = leaves.iter().map(Vec::len).collect();
    (tree, leaves)
}

/// A split of `rows` on a random feature at a random quantile leaving at least
/// `min_data_in_leaf` rows on each side; `None` when a few tries find none.
fn draw_split(
    rows: &[Vec<f32>],
    at: &[u32],
    d: usize,
    shape: EnsembleShape,
    rng: &mut impl Rng,
) -> Option<(usize, f64)> {
    for _ in 0..12 {
        let feature = rng.random_range(0..d);
        let mut values: Vec<f32> = at.iter().map(|&i| rows[i as usize][feature]).collect();
        let k = ((values.len() - 1) as f64 * rng.random_range(0.3..0.7)) as usize;
        let lo = *values.select_nth_unstable_by(k, f32::total_cmp).1;
        // The threshold sits between the drawn value and the next larger one, as LightGBM's
        // histogram bins put it between two observed values.
        let left = values.iter().filter(|&&v| v <= lo).count();
        if left < shape.min_data_in_leaf || values.len() - left < shape.min_data_in_leaf {
            continue;
        }
        let hi = values
            .iter()
            .copied()
            .filter(|&v| v > lo)
            .min_by(f32::total_cmp)
            .expect("the right side is not empty");
        return Some((feature, (f64::from(lo) + f64::from(hi)) / 2.0));
    }
    None
}

impl Ensemble {
    /// The raw margin (sum of the leaves reached) of one row of the model's features.
    pub fn margin(&self, row: &[f32]) -> f64 {
        self.trees
            .iter()
            .map(|t| t.leaf_value[t.leaf_of(row)])
            .sum()
    }

    /// The model as LightGBM's `Booster.save_model` writes it.
    pub fn to_lightgbm_text(&self) -> String {
        let join = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(" ");
        let blocks: Vec<String> = self
            .trees
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut b = String::new();
                let _ = writeln!(b, "Tree={i}");
                let _ = writeln!(b, "num_leaves={}", t.leaf_value.len());
                let _ = writeln!(b, "num_cat=0");
                if !t.split_feature.is_empty() {
                    let n = t.split_feature.len();
                    let _ = writeln!(
                        b,
                        "split_feature={}",
                        join(&mut t.split_feature.iter().map(|v| v.to_string()))
                    );
                    let _ = writeln!(
                        b,
                        "split_gain={}",
                        join(&mut t.split_gain.iter().map(|v| format!("{}", *v as f32)))
                    );
                    let _ = writeln!(
                        b,
                        "threshold={}",
                        join(&mut t.threshold.iter().map(|v| format!("{v}")))
                    );
                    // 2 = numerical split, default left, missing type None (as LightGBM writes
                    // features that had no missing values in training).
                    let _ = writeln!(b, "decision_type={}", vec!["2"; n].join(" "));
                    let _ = writeln!(
                        b,
                        "left_child={}",
                        join(&mut t.left.iter().map(|v| v.to_string()))
                    );
                    let _ = writeln!(
                        b,
                        "right_child={}",
                        join(&mut t.right.iter().map(|v| v.to_string()))
                    );
                }
                let _ = writeln!(
                    b,
                    "leaf_value={}",
                    join(&mut t.leaf_value.iter().map(|v| format!("{v}")))
                );
                let _ = writeln!(
                    b,
                    "leaf_weight={}",
                    join(&mut t.leaf_count.iter().map(|c| format!("{}", *c as f64 * 0.25)))
                );
                let _ = writeln!(
                    b,
                    "leaf_count={}",
                    join(&mut t.leaf_count.iter().map(|v| v.to_string()))
                );
                if !t.split_feature.is_empty() {
                    let _ = writeln!(
                        b,
                        "internal_value={}",
                        join(&mut t.internal_value.iter().map(|v| format!("{}", *v as f32)))
                    );
                    let _ = writeln!(
                        b,
                        "internal_weight={}",
                        join(
                            &mut t
                                .internal_count
                                .iter()
                                .map(|c| format!("{}", *c as f64 * 0.25))
                        )
                    );
                    let _ = writeln!(
                        b,
                        "internal_count={}",
                        join(&mut t.internal_count.iter().map(|v| v.to_string()))
                    );
                }
                let _ = writeln!(b, "is_linear=0");
                let _ = writeln!(b, "shrinkage={}", t.shrinkage);
                b.push_str("\n\n");
                b
            })
            .collect();

        let mut s = String::new();
        s.push_str("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n");
        let _ = writeln!(s, "max_feature_idx={}", self.features.len() - 1);
        s.push_str("objective=binary sigmoid:1\n");
        let _ = writeln!(s, "feature_names={}", self.features.join(" "));
        let _ = writeln!(
            s,
            "feature_infos={}",
            join(&mut self.ranges.iter().map(|(lo, hi)| format!("[{lo}:{hi}]")))
        );
        let _ = writeln!(
            s,
            "tree_sizes={}",
            join(&mut blocks.iter().map(|b| b.len().to_string()))
        );
        s.push('\n');
        for b in &blocks {
            s.push_str(b);
        }
        s.push_str("end of trees\n\nfeature_importances:\n");
        let mut counts = vec![0usize; self.features.len()];
        for t in &self.trees {
            for &f in &t.split_feature {
                counts[f] += 1;
            }
        }
        let mut order: Vec<usize> = (0..counts.len()).filter(|&f| counts[f] > 0).collect();
        order.sort_by_key(|&f| (std::cmp::Reverse(counts[f]), f));
        for f in order {
            let _ = writeln!(s, "{}={}", self.features[f], counts[f]);
        }
        let leaves = self
            .trees
            .iter()
            .map(|t| t.leaf_value.len())
            .max()
            .unwrap_or(1);
        let _ = write!(
            s,
            "\nparameters:\n[boosting: gbdt]\n[objective: binary]\n[num_iterations: {}]\n\
             [learning_rate: {}]\n[num_leaves: {leaves}]\n[num_threads: 1]\n\
             [deterministic: 1]\n[feature_fraction: 1]\n[bagging_fraction: 1]\n\
             end of parameters\n\npandas_categorical:null\n",
            self.trees.len(),
            self.learning_rate
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::path::Path;

    fn sample(n: usize) -> (Vec<Vec<f32>>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                vec![
                    rng.random_range(0.0f32..1.0),
                    rng.random_range(-3.0f32..3.0),
                    (rng.random_bool(0.3) as u8) as f32,
                ]
            })
            .collect();
        let target = rows
            .iter()
            .map(|r| -2.0 + 2.0 * f64::from(r[0]) - 0.5 * f64::from(r[1]) + f64::from(r[2]))
            .collect();
        (rows, target)
    }

    #[test]
    fn trees_have_the_requested_shape_and_fit_the_target() {
        let (rows, target) = sample(2_000);
        let shape = EnsembleShape {
            trees: 60,
            leaves: 31,
            learning_rate: 0.1,
            min_data_in_leaf: 20,
        };
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let e = generate(
            names,
            &rows,
            &target,
            shape,
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        assert!(e.trees.iter().all(|t| t.leaf_value.len() == 31));
        assert!(e
            .trees
            .iter()
            .all(|t| t.leaf_count.iter().all(|&c| c >= 20)));
        // Balanced: splitting the largest leaf first keeps every path near log2(31) deep.
        for t in &e.trees {
            assert!(t.split_feature.len() == 30);
            let mut depth = vec![0usize; 30];
            for (i, (&l, &r)) in t.left.iter().zip(&t.right).enumerate() {
                for c in [l, r] {
                    if c >= 0 {
                        depth[c as usize] = depth[i] + 1;
                    }
                }
            }
            assert!(depth.iter().max().unwrap() <= &8, "{depth:?}");
        }
        let mse_before = {
            let m = target.iter().sum::<f64>() / target.len() as f64;
            target.iter().map(|y| (y - m).powi(2)).sum::<f64>()
        };
        let mse_after: f64 = rows
            .iter()
            .zip(&target)
            .map(|(r, y)| (y - e.margin(r)).powi(2))
            .sum();
        assert!(mse_after < 0.1 * mse_before, "{mse_after} vs {mse_before}");
    }

    #[test]
    fn podiums_lightgbm_parser_scores_the_file_as_the_generator_does() {
        let (rows, target) = sample(600);
        let shape = EnsembleShape {
            trees: 40,
            leaves: 31,
            learning_rate: 0.1,
            min_data_in_leaf: 10,
        };
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let e = generate(
            names.clone(),
            &rows,
            &target,
            shape,
            &mut ChaCha8Rng::seed_from_u64(2),
        );
        let text = e.to_lightgbm_text();
        let model = podium_model::gbdt::lightgbm::parse(&text, Path::new("gen.txt")).unwrap();
        assert_eq!(model.link(), podium_model::Link::Logistic);
        let runtime = model.into_runtime(&names).unwrap();
        let cols: Vec<Vec<f32>> = (0..3)
            .map(|c| rows.iter().map(|r| r[c]).collect())
            .collect();
        let slices: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0; rows.len()];
        use podium_model::Runtime;
        runtime
            .predict_raw(
                &podium_model::Columns::new(&slices, rows.len()).unwrap(),
                &mut out,
            )
            .unwrap();
        for (r, o) in rows.iter().zip(&out) {
            assert!(
                (e.margin(r) - f64::from(*o)).abs() < 1e-5,
                "{} vs {o}",
                e.margin(r)
            );
        }
    }
}
