//! XGBoost JSON models, as `Booster.save_model("model.json")` writes them.
//!
//! Reads `learner.gradient_booster.model.trees[]` (`split_indices`, `split_conditions`,
//! `left_children`, `right_children`, `default_left`; at a leaf, `split_conditions` holds the leaf
//! value), `learner.learner_model_param.base_score`, `learner.objective.name` and
//! `learner.feature_names`.
//!
//! XGBoost's predictor tests `fvalue < split_condition` in f32 and sends a missing (NaN) input to
//! the default child. For f32 `x` and `t`, `x < t` holds exactly when `x <= t⁻`, the next f32
//! below `t`; Podium stores `t⁻` (NaN when `t` is -inf, so that nothing but a missing value goes
//! left). Sums are f32, starting from the base margin and adding trees in order, as XGBoost's CPU
//! predictor does. `base_score` is stored as a probability for logistic objectives (XGBoost ≥ 1.0),
//! so the margin starts at `-ln(1/base_score - 1)` computed in f32; since XGBoost 2 it may be
//! written as a one-element array string such as `"[5E-1]"`.
//!
//! Numbers are parsed from their JSON text straight to f32: going through f64 first can round
//! differently from XGBoost's own reader.
//!
//! Not supported: UBJSON files, `gblinear` and `dart` boosters, multiclass and multi-target models,
//! categorical splits, and objectives with an exp link (poisson, gamma, tweedie, survival) or a
//! step output (`binary:hinge`).

use super::{
    next_down, read_text, Child, Fail, Forest, GbdtModel, Library, RawSplit, RawTree, SplitTest,
    Sum,
};
use crate::{Link, ModelError};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::path::Path;

/// Reads and parses an XGBoost JSON model file.
pub fn read(path: &Path) -> Result<GbdtModel, ModelError> {
    let text = read_text(path)?;
    parse(&text, path)
}

/// Parses XGBoost model JSON; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<GbdtModel, ModelError> {
    parse_text(text, path).map_err(|f| f.into_error(path))
}

/// The largest f32 `f` with `f < t` in XGBoost's sense: for every non-NaN f32 `x`, `x < t` iff
/// `x <= f`. For `t = -inf` no `x` qualifies, and the NaN returned fails every `<=`.
pub(crate) fn threshold_f32(t: f32) -> f32 {
    if t == f32::NEG_INFINITY {
        f32::NAN
    } else {
        next_down(t)
    }
}

#[derive(Deserialize)]
struct ModelFile {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    feature_names: Vec<String>,
    gradient_booster: Booster,
    learner_model_param: LearnerModelParam,
    objective: Objective,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    model: Option<TreeModel>,
}

#[derive(Deserialize)]
struct TreeModel {
    trees: Vec<Tree>,
    #[serde(default)]
    tree_info: Vec<i64>,
}

#[derive(Deserialize)]
struct LearnerModelParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    #[serde(default)]
    num_feature: Option<String>,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Tree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Box<RawValue>,
    default_left: Vec<Flag>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// `default_left` entries: integers since XGBoost 1.1, booleans in some earlier writers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Int(i64),
    Bool(bool),
}

impl Flag {
    fn is_set(&self) -> bool {
        match self {
            Flag::Int(v) => *v != 0,
            Flag::Bool(b) => *b,
        }
    }
}

/// Parses a JSON array of numbers straight to f32.
fn f32_array(raw: &RawValue) -> Result<Vec<f32>, String> {
    let text = raw.get().trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| "split_conditions is not an array".to_string())?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f32>()
                .ok()
                .filter(|x| !x.is_nan())
                .ok_or_else(|| format!("split_conditions holds {v:?}, not a number"))
        })
        .collect()
}

/// A count written as a JSON string (`"num_feature": "5"`).
fn count(field: &str, value: &Option<String>) -> Result<Option<usize>, Fail> {
    value
        .as_deref()
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| Fail::Parse(format!("{field} {v:?} is not a count")))
        })
        .transpose()
}

/// `base_score`: `"5E-1"` before XGBoost 2, `"[5E-1]"` (one entry per target) since.
fn base_score(text: &str) -> Result<f32, Fail> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(trimmed);
    let values: Vec<&str> = inner.split(',').map(str::trim).collect();
    if values.len() != 1 {
        return Err(Fail::Unsupported(format!(
            "base_score {text:?} has one entry per target; multi-target models are not supported"
        )));
    }
    values[0]
        .parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Fail::Parse(format!("base_score {text:?} is not a number")))
}

/// The manifest link of an objective and whether its base score is a probability (turned into
/// a margin with the logit) rather than already a margin.
fn objective_link(name: &str) -> Result<(Link, bool), Fail> {
    match name {
        "binary:logistic" | "reg:logistic" => Ok((Link::Logistic, true)),
        // Served as a margin. Since XGBoost 1.4 (dmlc/xgboost#6517) its base score is used as
        // the margin as is, not through the logit (checked against XGBoost 3.2).
        "binary:logitraw"
        | "reg:squarederror"
        | "reg:linear"
        | "reg:squaredlogerror"
        | "reg:pseudohubererror"
        | "reg:absoluteerror"
        | "reg:quantileerror"
        | "rank:pairwise"
        | "rank:ndcg"
        | "rank:map" => Ok((Link::Identity, false)),
        _ if name.starts_with("multi:") => Err(Fail::Unsupported(format!(
            "multiclass XGBoost models (objective {name:?}) are not supported"
        ))),
        _ => Err(Fail::Unsupported(format!(
            "XGBoost objective {name:?} transforms its output in a way no manifest link expresses \
             (only identity and logistic are supported)"
        ))),
    }
}

fn parse_text(text: &str, path: &Path) -> Result<GbdtModel, Fail> {
    if !text.trim_start().starts_with('{') {
        return Err(Fail::Parse(
            "not JSON (UBJSON or another format?): save the XGBoost model with a .json name".into(),
        ));
    }
    let file: ModelFile = serde_json::from_str(text)
        .map_err(|e| Fail::Parse(format!("not an XGBoost JSON model: {e}")))?;
    let learner = file.learner;
    let booster = &learner.gradient_booster;
    let model = match (booster.name.as_str(), &booster.model) {
        ("gbtree", Some(model)) => model,
        ("gbtree", None) => {
            return Err(Fail::Parse(
                "learner.gradient_booster lacks its tree model".into(),
            ))
        }
        (other, _) => {
            return Err(Fail::Unsupported(format!(
                "XGBoost booster {other:?} is not supported (only gbtree)"
            )))
        }
    };
    let param = &learner.learner_model_param;
    let num_class = count("num_class", &param.num_class)?.unwrap_or(0);
    let num_target = count("num_target", &param.num_target)?.unwrap_or(1);
    if num_class > 1 || num_target > 1 || model.tree_info.iter().any(|&g| g != 0) {
        return Err(Fail::Unsupported(format!(
            "multiclass or multi-target XGBoost models (num_class={num_class}, \
             num_target={num_target}) are not supported"
        )));
    }
    let objective = learner.objective.name.clone();
    let (link, probability_base) = objective_link(&objective)?;
    let base = base_score(&param.base_score)?;
    let base_margin = if probability_base {
        if !(base > 0.0 && base < 1.0) {
            return Err(Fail::Parse(format!(
                "base_score {base} must lie in (0, 1) for {objective}"
            )));
        }
        // XGBoost's `ProbToMargin`: `-logf(1.0f / base_score - 1.0f)`.
        -(1.0f32 / base - 1.0f32).ln()
    } else {
        base
    };

    let feature_names = (!learner.feature_names.is_empty()).then_some(learner.feature_names);
    let num_features = match (count("num_feature", &param.num_feature)?, &feature_names) {
        (_, Some(names)) => names.len(),
        (Some(n), None) => n,
        (None, None) => {
            return Err(Fail::Parse(
                "learner_model_param lacks num_feature and the model names no features".into(),
            ))
        }
    };
    if model.trees.is_empty() {
        return Err(Fail::Parse("holds no trees".into()));
    }
    let mut forest = Forest::new(num_features)?;
    for (t, tree) in model.trees.iter().enumerate() {
        let raw = read_tree(tree).map_err(|f| match f {
            Fail::Parse(m) => Fail::Parse(format!("tree {t}: {m}")),
            Fail::Unsupported(m) => Fail::Unsupported(format!("tree {t}: {m}")),
        })?;
        forest
            .push(&raw)
            .map_err(|e| Fail::Parse(format!("tree {t}: {e}")))?;
    }
    Ok(GbdtModel {
        source: path.to_path_buf(),
        library: Library::Xgboost,
        feature_names,
        generated_names: false,
        objective,
        link,
        sum: Sum::Single { base_margin },
        forest,
    })
}

fn read_tree(tree: &Tree) -> Result<RawTree, Fail> {
    if let Some(size) = tree
        .tree_param
        .as_ref()
        .and_then(|p| p.size_leaf_vector.as_deref())
    {
        if !matches!(size.trim(), "0" | "1") {
            return Err(Fail::Unsupported(format!(
                "vector leaves (size_leaf_vector={size}) are not supported"
            )));
        }
    }
    let n = tree.left_children.len();
    let conditions = f32_array(&tree.split_conditions)?;
    if tree.right_children.len() != n
        || tree.split_indices.len() != n
        || conditions.len() != n
        || tree.default_left.len() != n
    {
        return Err(Fail::Parse(format!(
            "node arrays differ in length (left_children {n}, right_children {}, split_indices \
             {}, split_conditions {}, default_left {})",
            tree.right_children.len(),
            tree.split_indices.len(),
            conditions.len(),
            tree.default_left.len()
        )));
    }
    if n == 0 {
        return Err(Fail::Parse("tree has no nodes".into()));
    }
    if tree.split_type.iter().any(|&t| t != 0) {
        return Err(Fail::Unsupported(
            "categorical splits in XGBoost models are not supported".into(),
        ));
    }
    // XGBoost numbers leaves and splits together; split them into Podium's two index spaces.
    let is_leaf = |i: usize| tree.left_children[i] == -1;
    let mut slot = vec![0usize; n];
    let (mut splits_seen, mut leaves_seen) = (0, 0);
    for (i, s) in slot.iter_mut().enumerate() {
        if is_leaf(i) {
            *s = leaves_seen;
            leaves_seen += 1;
        } else {
            *s = splits_seen;
            splits_seen += 1;
        }
    }
    let child = |c: i64| -> Result<Child, Fail> {
        let i = usize::try_from(c)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| Fail::Parse(format!("child {c} is not a node of the tree")))?;
        Ok(if is_leaf(i) {
            Child::Leaf(slot[i])
        } else {
            Child::Split(slot[i])
        })
    };
    let mut splits = Vec::with_capacity(splits_seen);
    let mut leaves = Vec::with_capacity(leaves_seen);
    for (i, &condition) in conditions.iter().enumerate() {
        if is_leaf(i) {
            leaves.push(f64::from(condition));
            continue;
        }
        let feature = usize::try_from(tree.split_indices[i]).map_err(|_| {
            Fail::Parse(format!(
                "node {i} splits on feature {}",
                tree.split_indices[i]
            ))
        })?;
        splits.push(RawSplit {
            feature,
            test: SplitTest::Numeric {
                threshold: threshold_f32(condition),
                nan_left: tree.default_left[i].is_set(),
                zero_missing: false,
            },
            left: child(tree.left_children[i])?,
            right: child(tree.right_children[i])?,
        });
    }
    Ok(RawTree {
        splits,
        leaves,
        root: child(0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Columns, Runtime};

    /// A one-split model on feature `x`: left leaf -1, right leaf +1.
    fn stump(condition: &str, default_left: u8, objective: &str, base_score: &str) -> String {
        format!(
            r#"{{"learner":{{"attributes":{{}},"feature_names":["x"],"feature_types":[],
            "gradient_booster":{{"model":{{"gbtree_model_param":{{"num_parallel_tree":"1",
            "num_trees":"1"}},"iteration_indptr":[0,1],"tree_info":[0],"trees":[{{
            "base_weights":[0,-1,1],"categories":[],"categories_nodes":[],
            "categories_segments":[],"categories_sizes":[],"default_left":[{default_left},0,0],
            "id":0,"left_children":[1,-1,-1],"loss_changes":[1,0,0],
            "parents":[2147483647,0,0],"right_children":[2,-1,-1],
            "split_conditions":[{condition},-1E0,1E0],"split_indices":[0,0,0],
            "split_type":[0,0,0],"sum_hessian":[2,1,1],"tree_param":{{"num_deleted":"0",
            "num_feature":"1","num_nodes":"3","size_leaf_vector":"1"}}}}]}},"name":"gbtree"}},
            "learner_model_param":{{"base_score":"{base_score}","boost_from_average":"1",
            "num_class":"0","num_feature":"1","num_target":"1"}},
            "objective":{{"name":"{objective}","reg_loss_param":{{"scale_pos_weight":"1"}}}}}},
            "version":[3,0,0]}}"#
        )
    }

    fn score(text: &str, xs: &[f32]) -> Vec<f32> {
        let model = parse(text, Path::new("m.json")).unwrap();
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
    fn strict_less_than_in_f32() {
        let t = 0.1f32;
        let text = stump("1E-1", 0, "reg:squarederror", "[0E0]");
        assert_eq!(
            score(&text, &[next_down(t), t, -next_down(-t), 0.0]),
            [L, R, R, L]
        );
    }

    #[test]
    fn missing_goes_to_the_default_child() {
        let right = stump("5E-1", 0, "reg:squarederror", "0");
        assert_eq!(score(&right, &[f32::NAN, 0.0]), [R, L]);
        let left = stump("5E-1", 1, "reg:squarederror", "0");
        assert_eq!(score(&left, &[f32::NAN, 0.0, 1.0]), [L, L, R]);
    }

    #[test]
    fn zero_thresholds_and_infinities() {
        let text = stump("0E0", 0, "reg:squarederror", "0");
        assert_eq!(
            score(&text, &[0.0, -0.0, -f32::from_bits(1), f32::NEG_INFINITY]),
            [R, R, L, L]
        );
        assert!(threshold_f32(f32::NEG_INFINITY).is_nan());
        assert_eq!(threshold_f32(f32::INFINITY), f32::MAX);
    }

    #[test]
    fn base_score_formats_and_logit() {
        assert_eq!(base_score("5E-1").unwrap(), 0.5);
        assert_eq!(base_score("[2.5E-1]").unwrap(), 0.25);
        assert!(matches!(base_score("[1E0,2E0]"), Err(Fail::Unsupported(_))));
        let text = stump("0", 0, "binary:logistic", "[2.5E-1]");
        let model = parse(&text, Path::new("m.json")).unwrap();
        assert_eq!(model.link(), Link::Logistic);
        let margin = -(1.0f32 / 0.25 - 1.0).ln();
        assert_eq!(score(&text, &[-1.0, 1.0]), [margin - 1.0, margin + 1.0]);
        let reg = stump("0", 0, "reg:squarederror", "[2.5E-1]");
        assert_eq!(score(&reg, &[-1.0]), [0.25 - 1.0]);
    }

    #[test]
    fn logitraw_uses_its_base_score_as_the_margin() {
        let text = stump("0", 0, "binary:logitraw", "[2.5E-1]");
        let model = parse(&text, Path::new("m.json")).unwrap();
        assert_eq!(model.link(), Link::Identity);
        assert_eq!(score(&text, &[1.0]), [1.25]);
    }

    #[test]
    fn refuses_what_it_cannot_score_exactly() {
        let poisson = stump("0", 0, "count:poisson", "1");
        let err = parse(&poisson, Path::new("p.json")).unwrap_err();
        assert!(matches!(err, ModelError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("p.json"), "{err}");

        let categorical = stump("0", 0, "reg:squarederror", "0")
            .replace(r#""split_type":[0,0,0]"#, r#""split_type":[1,0,0]"#);
        let err = parse(&categorical, Path::new("c.json")).unwrap_err();
        assert!(matches!(err, ModelError::Unsupported(_)), "{err}");

        let cyclic = stump("0", 0, "reg:squarederror", "0").replace(
            r#""left_children":[1,-1,-1]"#,
            r#""left_children":[0,-1,-1]"#,
        );
        let err = parse(&cyclic, Path::new("y.json")).unwrap_err();
        assert!(matches!(err, ModelError::Parse { .. }), "{err}");
    }

    #[test]
    fn unnamed_features_bind_by_position() {
        let text = stump("0", 0, "reg:squarederror", "0")
            .replace(r#""feature_names":["x"]"#, r#""feature_names":[]"#);
        let model = parse(&text, Path::new("m.json")).unwrap();
        assert!(model.feature_names().is_none());
        let runtime = model
            .into_runtime(&["anything".into(), "else".into()])
            .unwrap();
        let (a, b) = ([-1.0f32, 1.0], [7.0f32, 7.0]);
        let cols = [&a[..], &b[..]];
        let mut out = [0.0; 2];
        runtime
            .predict_raw(&Columns::new(&cols, 2).unwrap(), &mut out)
            .unwrap();
        assert_eq!(out, [L, R]);
        assert!(model.into_runtime(&[]).is_err());
    }
}
