//! LightGBM text models, as `Booster.save_model` writes them.
//!
//! The file is a header of `key=value` lines (`feature_names`, `objective`, `average_output`, …),
//! one `Tree=N` block per tree, and `end of trees`; what follows (feature importances, training
//! parameters, pandas categories) does not affect predictions and is not read. Leaf values already
//! include shrinkage and the boost-from-average bias.
//!
//! Decisions follow LightGBM's `Tree::NumericalDecision` and `Tree::CategoricalDecision`
//! (`include/LightGBM/tree.h`), which compare the input widened to double with a double threshold.
//! For an f32 input `x` and double threshold `t`, `(double)x <= t` holds exactly when
//! `x <= t↓`, where `t↓` is the largest f32 not above `t`; so Podium stores `t↓` and compares in
//! f32. Missing values by `missing_type` (decision_type bits 2–3):
//! - `None`: NaN is replaced by 0.0, so it goes wherever 0.0 goes (`0.0 <= t`).
//! - `Zero`: NaN and anything within `kZeroThreshold` (1e-35f) of zero take the default
//!   direction (decision_type bit 1).
//! - `NaN`: NaN takes the default direction; zero compares like any value.
//!
//! LightGBM's prediction entry points also drop every input within `kZeroThreshold` of zero when
//! they build a row (`RowPairFunctionFromDenseMatric` in `c_api.cpp`), so the trees see such
//! inputs as exactly 0.0. That only changes a decision whose threshold lies within
//! `kZeroThreshold` of zero, and it is folded into those thresholds at load (see
//! `node_threshold`).
//!
//! Not supported: multiclass models, linear trees (`is_linear=1`) and objectives whose output
//! transform is not a logistic or identity link (poisson, gamma, tweedie, `regression sqrt`, …).

use super::{
    next_down, read_text, Child, Fail, Forest, GbdtModel, Library, RawSplit, RawTree, SplitTest,
    Sum, LIGHTGBM_ZERO_THRESHOLD,
};
use crate::{Link, ModelError};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

const CATEGORICAL_MASK: u8 = 1;
const DEFAULT_LEFT_MASK: u8 = 2;

/// Reads and parses a LightGBM text model file.
pub fn read(path: &Path) -> Result<GbdtModel, ModelError> {
    let text = read_text(path)?;
    parse(&text, path)
}

/// Parses LightGBM model text; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<GbdtModel, ModelError> {
    parse_text(text, path).map_err(|f| f.into_error(path))
}

/// The largest f32 `f` with `f <= t`: for every f32 `x`, `(x as f64) <= t` iff `x <= f`.
pub(crate) fn threshold_f32(t: f64) -> f32 {
    let nearest = t as f32;
    if f64::from(nearest) > t {
        next_down(nearest)
    } else {
        nearest
    }
}

/// The f32 threshold of a numeric split with double threshold `t`, taking LightGBM's flushing of
/// near-zero inputs into account: an input with `|x| <= 1e-35f` is compared as 0.0, so for
/// `t` in `[0, 1e-35)` every input up to 1e-35 goes left, and for `t` in `[-1e-35, 0)` only
/// inputs below -1e-35 do. Elsewhere flushing cannot change the outcome.
pub(crate) fn node_threshold(t: f64) -> f32 {
    let zero = f64::from(LIGHTGBM_ZERO_THRESHOLD);
    if (0.0..zero).contains(&t) {
        LIGHTGBM_ZERO_THRESHOLD
    } else if (-zero..0.0).contains(&t) {
        next_down(-LIGHTGBM_ZERO_THRESHOLD)
    } else {
        threshold_f32(t)
    }
}

/// `key=value` lines of one section, with the line number each came from.
struct Section<'a> {
    /// What the section is, for messages (`header`, `Tree=3`).
    name: String,
    values: HashMap<&'a str, (&'a str, usize)>,
}

impl<'a> Section<'a> {
    fn new(name: String) -> Self {
        Self {
            name,
            values: HashMap::new(),
        }
    }

    fn insert(&mut self, line: &'a str, number: usize) -> Result<(), Fail> {
        let (key, value) = line.split_once('=').ok_or_else(|| {
            Fail::Parse(format!(
                "line {number}: expected `key=value` in {}, found {:?}",
                self.name,
                clip(line)
            ))
        })?;
        if self
            .values
            .insert(key.trim(), (value.trim(), number))
            .is_some()
        {
            return Err(Fail::Parse(format!(
                "line {number}: {} repeats key {:?}",
                self.name,
                key.trim()
            )));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.values.get(key).map(|(v, _)| *v)
    }

    fn scalar<T: FromStr>(&self, key: &str) -> Result<Option<T>, Fail> {
        match self.values.get(key) {
            None => Ok(None),
            Some((v, line)) => v.parse().map(Some).map_err(|_| {
                Fail::Parse(format!(
                    "line {line}: {} {key}={:?} is not a valid number",
                    self.name,
                    clip(v)
                ))
            }),
        }
    }

    fn required<T: FromStr>(&self, key: &str) -> Result<T, Fail> {
        self.scalar(key)?
            .ok_or_else(|| Fail::Parse(format!("{} lacks {key}", self.name)))
    }

    /// A space-separated array of exactly `len` values.
    fn array<T: FromStr>(&self, key: &str, len: usize) -> Result<Vec<T>, Fail> {
        let (text, line) = self
            .values
            .get(key)
            .ok_or_else(|| Fail::Parse(format!("{} lacks {key}", self.name)))?;
        let values = text
            .split_ascii_whitespace()
            .map(|v| {
                v.parse().map_err(|_| {
                    Fail::Parse(format!(
                        "line {line}: {} {key} holds {:?}, not a number",
                        self.name,
                        clip(v)
                    ))
                })
            })
            .collect::<Result<Vec<T>, Fail>>()?;
        if values.len() != len {
            return Err(Fail::Parse(format!(
                "line {line}: {} {key} holds {} values, expected {len}",
                self.name,
                values.len()
            )));
        }
        Ok(values)
    }
}

/// A short excerpt of untrusted text for an error message.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_text(text: &str, path: &Path) -> Result<GbdtModel, Fail> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end()));
    match lines.by_ref().find(|(_, l)| !l.is_empty()) {
        Some((_, "tree")) => {}
        _ => {
            return Err(Fail::Parse(
                "does not start with `tree`: not a LightGBM text model".into(),
            ))
        }
    }

    let mut header = Section::new("header".into());
    let mut average_output = false;
    let mut trees: Vec<Section> = Vec::new();
    let mut ended = false;
    for (number, line) in lines.by_ref() {
        if line.is_empty() {
            continue;
        }
        if line == "end of trees" {
            ended = true;
            break;
        }
        if let Some(index) = line.strip_prefix("Tree=") {
            if index.trim() != trees.len().to_string() {
                return Err(Fail::Parse(format!(
                    "line {number}: expected Tree={}, found {:?}",
                    trees.len(),
                    clip(line)
                )));
            }
            trees.push(Section::new(line.to_string()));
            continue;
        }
        match trees.last_mut() {
            Some(tree) => tree.insert(line, number)?,
            // A bare flag line, written only when the model averages its trees (random forest).
            None if line == "average_output" => average_output = true,
            None => header.insert(line, number)?,
        }
    }
    if !ended {
        return Err(Fail::Parse(
            "no `end of trees` line: the file is truncated".into(),
        ));
    }

    let num_class: usize = header.scalar("num_class")?.unwrap_or(1);
    let per_iteration: usize = header.scalar("num_tree_per_iteration")?.unwrap_or(1);
    if num_class != 1 || per_iteration != 1 {
        return Err(Fail::Unsupported(format!(
            "multiclass LightGBM models (num_class={num_class}) are not supported"
        )));
    }
    let max_feature_idx: i64 = header.required("max_feature_idx")?;
    let num_features = usize::try_from(max_feature_idx + 1)
        .map_err(|_| Fail::Parse(format!("max_feature_idx={max_feature_idx} is negative")))?;
    let feature_names: Vec<String> = header
        .get("feature_names")
        .ok_or_else(|| Fail::Parse("header lacks feature_names".into()))?
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    if feature_names.len() != num_features {
        return Err(Fail::Parse(format!(
            "feature_names lists {} names, but max_feature_idx={max_feature_idx}",
            feature_names.len()
        )));
    }
    let generated_names = feature_names
        .iter()
        .enumerate()
        .all(|(i, n)| *n == format!("Column_{i}"));
    let objective = header.get("objective").unwrap_or("").to_string();
    let (link, scale) = objective_link(&objective)?;
    if let Some(sizes) = header.get("tree_sizes") {
        let listed = sizes.split_ascii_whitespace().count();
        if listed != trees.len() {
            return Err(Fail::Parse(format!(
                "tree_sizes lists {listed} trees but the file holds {}: truncated or edited",
                trees.len()
            )));
        }
    }
    if trees.is_empty() {
        return Err(Fail::Parse("holds no trees".into()));
    }

    let mut forest = Forest::new(num_features)?;
    for section in &trees {
        let tree = read_tree(section)?;
        forest
            .push(&tree)
            .map_err(|e| Fail::Parse(format!("{}: {e}", section.name)))?;
    }
    let divisor = if average_output {
        forest.num_trees() as f64
    } else {
        1.0
    };
    Ok(GbdtModel {
        source: path.to_path_buf(),
        library: Library::Lightgbm,
        feature_names: Some(feature_names),
        generated_names,
        objective,
        link,
        sum: Sum::Double { divisor, scale },
        forest,
    })
}

/// The link for an objective string such as `binary sigmoid:1`, and the factor that turns
/// LightGBM's raw score into the link's argument.
fn objective_link(objective: &str) -> Result<(Link, f64), Fail> {
    let mut words = objective.split_ascii_whitespace();
    let name = words.next().unwrap_or("");
    let options: Vec<&str> = words.collect();
    match name {
        "binary" => {
            // `ConvertOutput` computes 1 / (1 + exp(-sigmoid * raw)).
            let mut scale = 1.0;
            for option in &options {
                if let Some(v) = option.strip_prefix("sigmoid:") {
                    scale = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            Fail::Parse(format!("objective {objective:?}: bad sigmoid {v:?}"))
                        })?;
                }
            }
            Ok((Link::Logistic, scale))
        }
        "cross_entropy" | "xentropy" => Ok((Link::Logistic, 1.0)),
        "regression" if options.contains(&"sqrt") => Err(Fail::Unsupported(
            "objective `regression sqrt` squares its output; no manifest link expresses that"
                .into(),
        )),
        // No objective (or a custom one): LightGBM predicts the raw score.
        "" | "custom" | "none" | "regression" | "regression_l1" | "huber" | "fair" | "quantile"
        | "mape" | "lambdarank" | "rank_xendcg" => Ok((Link::Identity, 1.0)),
        "multiclass" | "multiclassova" => Err(Fail::Unsupported(format!(
            "multiclass LightGBM models (objective {objective:?}) are not supported"
        ))),
        _ => Err(Fail::Unsupported(format!(
            "LightGBM objective {objective:?} transforms its output in a way no manifest link \
             expresses (only identity and logistic are supported)"
        ))),
    }
}

fn read_tree(section: &Section) -> Result<RawTree, Fail> {
    let num_leaves: usize = section.required("num_leaves")?;
    if num_leaves == 0 {
        return Err(Fail::Parse(format!("{}: num_leaves=0", section.name)));
    }
    if section.scalar::<i64>("is_linear")?.unwrap_or(0) != 0 {
        return Err(Fail::Unsupported(format!(
            "{} is a linear tree (linear_tree=true); linear trees are not supported",
            section.name
        )));
    }
    let leaves: Vec<f64> = section.array("leaf_value", num_leaves)?;
    if num_leaves == 1 {
        return Ok(RawTree {
            splits: Vec::new(),
            leaves,
            root: Child::Leaf(0),
        });
    }
    let n = num_leaves - 1;
    let features: Vec<i64> = section.array("split_feature", n)?;
    let thresholds: Vec<f64> = section.array("threshold", n)?;
    let decision_types: Vec<u8> = section.array("decision_type", n)?;
    let lefts: Vec<i64> = section.array("left_child", n)?;
    let rights: Vec<i64> = section.array("right_child", n)?;
    let num_cat: usize = section.scalar("num_cat")?.unwrap_or(0);
    let (boundaries, words): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        let count = num_cat
            .checked_add(1)
            .ok_or_else(|| Fail::Parse(format!("{}: num_cat={num_cat}", section.name)))?;
        let boundaries: Vec<usize> = section.array("cat_boundaries", count)?;
        let total = *boundaries.last().unwrap_or(&0);
        let words = section.array("cat_threshold", total)?;
        if boundaries.first() != Some(&0) || boundaries.windows(2).any(|w| w[0] > w[1]) {
            return Err(Fail::Parse(format!(
                "{}: cat_boundaries must start at 0 and never decrease",
                section.name
            )));
        }
        (boundaries, words)
    } else {
        (Vec::new(), Vec::new())
    };

    let child = |c: i64| -> Child {
        // Negative children name leaves as the bitwise complement of their index; an index out
        // of range is caught when the forest validates the tree.
        if c < 0 {
            Child::Leaf(usize::try_from(!c).unwrap_or(usize::MAX))
        } else {
            Child::Split(usize::try_from(c).unwrap_or(usize::MAX))
        }
    };
    let mut splits = Vec::with_capacity(n);
    for i in 0..n {
        let decision = decision_types[i];
        if decision > 15 || (decision >> 2) & 3 == 3 {
            return Err(Fail::Parse(format!(
                "{}: split node {i} has unknown decision_type {decision}",
                section.name
            )));
        }
        let t = thresholds[i];
        let test = if decision & CATEGORICAL_MASK != 0 {
            // The threshold of a categorical split is the index of its bitset.
            let index = t as i64;
            if t != index as f64 || index < 0 || index as usize >= num_cat {
                return Err(Fail::Parse(format!(
                    "{}: categorical split node {i} refers to bitset {t}, but num_cat={num_cat}",
                    section.name
                )));
            }
            let index = index as usize;
            SplitTest::Category {
                bits: words[boundaries[index]..boundaries[index + 1]].to_vec(),
            }
        } else {
            let default_left = decision & DEFAULT_LEFT_MASK != 0;
            let (nan_left, zero_missing) = match (decision >> 2) & 3 {
                // missing_type None: NaN is replaced by 0.0 and compared.
                0 => (0.0 <= t, false),
                1 => (default_left, true),
                _ => (default_left, false),
            };
            SplitTest::Numeric {
                threshold: node_threshold(t),
                nan_left,
                zero_missing,
            }
        };
        splits.push(RawSplit {
            feature: usize::try_from(features[i]).map_err(|_| {
                Fail::Parse(format!(
                    "{}: split node {i} tests feature {}",
                    section.name, features[i]
                ))
            })?,
            test,
            left: child(lefts[i]),
            right: child(rights[i]),
        });
    }
    Ok(RawTree {
        splits,
        leaves,
        root: Child::Split(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Columns, Runtime};

    /// One `Tree=` block: a single split on feature 0; leaf 0 is left, leaf 1 right.
    fn tree_block(index: usize, decision_type: u8, threshold: &str, leaves: &str) -> String {
        format!(
            "Tree={index}\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\nsplit_gain=1\n\
             threshold={threshold}\ndecision_type={decision_type}\nleft_child=-1\n\
             right_child=-2\nleaf_value={leaves}\nleaf_weight=1 1\nleaf_count=1 1\n\
             internal_value=0\ninternal_weight=0\ninternal_count=2\nis_linear=0\n\
             shrinkage=1\n\n\n"
        )
    }

    /// A model over one feature `x` holding `trees`.
    fn model(extra_header: &str, trees: &[String]) -> String {
        format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
             max_feature_idx=0\nobjective=regression\nfeature_names=x\n\
             feature_infos=[-1:1]\n{extra_header}tree_sizes={}\n\n{}end of trees\n",
            vec!["1"; trees.len()].join(" "),
            trees.concat()
        )
    }

    /// A one-split model: left gives -1, right +1.
    fn stump(decision_type: u8, threshold: &str) -> String {
        model("", &[tree_block(0, decision_type, threshold, "-1 1")])
    }

    fn score(text: &str, xs: &[f32]) -> Vec<f32> {
        let model = parse(text, Path::new("test.txt")).unwrap();
        let runtime = model.into_runtime(&["x".to_string()]).unwrap();
        let cols = [xs];
        let mut out = vec![0.0; xs.len()];
        runtime
            .predict_raw(&Columns::new(&cols, xs.len()).unwrap(), &mut out)
            .unwrap();
        out
    }

    const L: f32 = -1.0;
    const R: f32 = 1.0;

    #[test]
    fn threshold_equality_goes_left_in_double() {
        // 0.1 is not an f32: 0.1f32 is above it, the f32 below it is under it.
        let below = next_down(0.1f32);
        assert!(f64::from(0.1f32) > 0.1 && f64::from(below) < 0.1);
        assert_eq!(
            score(&stump(8, "0.10000000000000001"), &[below, 0.1, 0.5]),
            [L, R, R]
        );
        // An exactly representable threshold: equality goes left.
        assert_eq!(
            score(&stump(8, "0.5"), &[0.5, next_down(0.5), 0.50000006]),
            [L, L, R]
        );
    }

    #[test]
    fn missing_type_none_treats_nan_as_zero() {
        // decision_type 0: missing None, default right; NaN goes where 0.0 goes.
        assert_eq!(score(&stump(0, "0.25"), &[f32::NAN, 0.0, 1.0]), [L, L, R]);
        assert_eq!(score(&stump(0, "-0.25"), &[f32::NAN, 0.0, -1.0]), [R, R, L]);
        // The default_left bit does not matter for missing None.
        assert_eq!(score(&stump(2, "-0.25"), &[f32::NAN]), [R]);
    }

    #[test]
    fn missing_type_zero_sends_near_zero_values_the_default_way() {
        // decision_type 4: missing Zero, default right; 6: default left.
        let tiny = [f32::NAN, 0.0, -0.0, 1e-35, -1e-35, 1.1e-35, -1.1e-35, 0.1];
        assert_eq!(score(&stump(4, "0.05"), &tiny), [R, R, R, R, R, L, L, R]);
        assert_eq!(score(&stump(6, "-0.05"), &tiny), [L, L, L, L, L, R, R, R]);
    }

    #[test]
    fn missing_type_nan_uses_default_left_bit() {
        // decision_type 8: missing NaN, default right; 10: default left. Zero is an ordinary value.
        assert_eq!(score(&stump(8, "0.5"), &[f32::NAN, 0.0]), [R, L]);
        assert_eq!(score(&stump(10, "-0.5"), &[f32::NAN, 0.0]), [L, R]);
    }

    #[test]
    fn an_infinite_threshold_splits_missing_values_off() {
        // LightGBM writes `threshold=inf` to send every present value left (+inf included)
        // and, with the default-left bit clear, missing values right.
        let xs = [f32::NAN, f32::INFINITY, f32::MAX, 0.0, f32::NEG_INFINITY];
        let expect = [R, L, L, L, L];
        assert_eq!(score(&stump(8, "inf"), &xs), expect);
        // The same, scored in a group of rows rather than row by row.
        let many: Vec<f32> = xs.iter().copied().cycle().take(100).collect();
        let want: Vec<f32> = expect.iter().copied().cycle().take(100).collect();
        assert_eq!(score(&stump(8, "inf"), &many), want);
        assert_eq!(score(&stump(10, "inf"), &many), vec![L; 100]);
    }

    #[test]
    fn near_zero_inputs_are_compared_as_zero() {
        // LightGBM flushes |x| <= 1e-35 to 0.0 before the trees see it.
        let xs = [1e-36, 5e-36, -5e-36, 1e-35, 2e-35, -2e-35, 0.0];
        assert_eq!(score(&stump(8, "1e-36"), &xs), [L, L, L, L, R, L, L]);
        assert_eq!(score(&stump(8, "-1e-36"), &xs), [R, R, R, R, R, L, R]);
        // The usual zero-vs-positive split, at kZeroThreshold itself.
        assert_eq!(
            score(&stump(8, "1.0000000180025095e-35"), &xs),
            [L, L, L, L, R, L, L]
        );
    }

    #[test]
    fn infinities_compare_like_doubles() {
        assert_eq!(
            score(
                &stump(8, "1e300"),
                &[f32::INFINITY, f32::MAX, f32::NEG_INFINITY]
            ),
            [R, L, L]
        );
        assert_eq!(
            score(&stump(8, "-1e300"), &[f32::NEG_INFINITY, f32::MIN]),
            [L, R]
        );
    }

    #[test]
    fn rounding_down_a_double_threshold() {
        assert_eq!(threshold_f32(0.5), 0.5);
        assert_eq!(threshold_f32(1e300), f32::MAX);
        assert_eq!(threshold_f32(-1e300), f32::NEG_INFINITY);
        assert_eq!(threshold_f32(-1e-50), -f32::from_bits(1));
        assert_eq!(threshold_f32(f64::INFINITY), f32::INFINITY);
        for t in [0.1, -0.1, 1.0 / 3.0, 3.5000000000000004, -7.25e-20] {
            let f = threshold_f32(t);
            let up = -next_down(-f);
            assert!(f64::from(f) <= t && f64::from(up) > t, "{t}");
        }
    }

    #[test]
    fn categorical_split_reads_the_bitset() {
        // Categories 1 and 33 go left (word 0 bit 1, word 1 bit 1).
        let text = stump(1, "0").replace(
            "num_cat=0",
            "num_cat=1\ncat_boundaries=0 2\ncat_threshold=2 2",
        );
        let xs = [1.0, 33.0, 0.0, 2.0, 1.9, 64.0, -1.0, -0.5, f32::NAN, 1e10];
        assert_eq!(score(&text, &xs), [L, L, R, R, L, R, R, R, R, R]);
    }

    #[test]
    fn binary_objective_folds_sigmoid_into_the_margin() {
        let text = stump(8, "0").replace("objective=regression", "objective=binary sigmoid:2");
        let model = parse(&text, Path::new("m.txt")).unwrap();
        assert_eq!(model.link(), Link::Logistic);
        assert_eq!(
            score(&text, &[-1.0, 1.0]),
            [-2.0, 2.0],
            "raw margin is sigmoid * sum"
        );
    }

    #[test]
    fn average_output_divides_by_tree_count() {
        let trees = [tree_block(0, 8, "0", "-1 1"), tree_block(1, 8, "0", "-3 5")];
        assert_eq!(score(&model("", &trees), &[-1.0, 1.0]), [-4.0, 6.0]);
        let averaged = model("average_output\n", &trees);
        assert_eq!(score(&averaged, &[-1.0, 1.0]), [-2.0, 3.0]);
    }

    #[test]
    fn refuses_cycles_truncation_and_multiclass() {
        let cyclic = stump(8, "0")
            .replace("num_leaves=2", "num_leaves=3")
            .replace("split_feature=0", "split_feature=0 0")
            .replace("threshold=0", "threshold=0 1")
            .replace("decision_type=8", "decision_type=8 8")
            .replace("left_child=-1", "left_child=1 0")
            .replace("right_child=-2", "right_child=-2 -1")
            .replace("leaf_value=-1 1", "leaf_value=-1 1 2");
        let err = parse(&cyclic, Path::new("c.txt")).unwrap_err();
        assert!(
            matches!(err, ModelError::Parse { .. }) && err.to_string().contains("twice"),
            "{err}"
        );

        let text = stump(8, "0");
        let cut = &text[..text.find("end of trees").unwrap()];
        let err = parse(cut, Path::new("cut.txt")).unwrap_err();
        assert!(err.to_string().contains("cut.txt"), "{err}");

        let multi = text.replace("num_class=1", "num_class=3");
        let err = parse(&multi, Path::new("m.txt")).unwrap_err();
        assert!(matches!(err, ModelError::Unsupported(_)), "{err}");
    }
}
