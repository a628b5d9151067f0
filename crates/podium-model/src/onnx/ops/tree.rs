//! `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (ai.onnx.ml), as onnxruntime evaluates
//! them: what onnxmltools writes for LightGBM and XGBoost models, and skl2onnx for scikit-learn
//! forests.
//!
//! tract-onnx has no regressor, and its classifier cannot be kept: it reads `BRANCH_GTE` nodes as
//! leaves (its comparison decoder stops one short of that mode), sends a missing value down the
//! false branch of a `BRANCH_NEQ` node where `NaN != t` is true, and lays out binary scores
//! differently from onnxruntime when base values or a NONE transform are involved.
//!
//! The rules followed here are onnxruntime's (tree_ensemble_common.h, tree_ensemble_aggregator.h):
//!
//! * A node goes to its true child iff `x CMP threshold`, or the input is NaN and
//!   `missing_value_tracks_true` is set. Comparisons and sums are in f32 for f32 input and in f64
//!   for f64 input, as onnxruntime's kernels pick their threshold type.
//! * A tree starts at the first node listed for it; trees are summed in the order listed.
//! * With one output, each leaf adds its first weight; `base_values[0]` is added at the end and
//!   only PROBIT is applied (onnxruntime ignores LOGISTIC and SOFTMAX on one output).
//! * With several outputs, a class or target that no leaf voted for reads as 0, base values are
//!   added per output, and the transform is applied to the row.
//! * A binary classifier whose leaves vote for one class only produces `[1 - p, p]`, `[-s, s]`
//!   or `[σ(-s), σ(s)]` depending on the sign of its weights and the transform, exactly as
//!   onnxruntime's `write_scores`.

use super::linear::{Labels, Pick};
use super::{batch_dim, boxed, floats_attr, logistic, probit, rows_rule, Kernel, PostTransform};
use std::collections::{HashMap, HashSet};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// A node's comparison, or `Leaf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Leaf,
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    fn parse(text: &str) -> TractResult<Self> {
        Ok(match text {
            "LEAF" => Self::Leaf,
            "BRANCH_LEQ" => Self::Leq,
            "BRANCH_LT" => Self::Lt,
            "BRANCH_GTE" => Self::Gte,
            "BRANCH_GT" => Self::Gt,
            "BRANCH_EQ" => Self::Eq,
            "BRANCH_NEQ" => Self::Neq,
            other => bail!("unknown node mode {other:?}"),
        })
    }
}

/// One node, its children as indices into [`Forest::nodes`], its votes as a range of weights.
#[derive(Clone, Debug, PartialEq)]
struct Node {
    feature: usize,
    mode: Mode,
    missing_true: bool,
    threshold32: f32,
    threshold64: f64,
    true_child: usize,
    false_child: usize,
    first_weight: usize,
    n_weights: usize,
}

/// How the votes of the trees are combined per output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// A parsed ensemble, shared by the classifier and the regressor.
#[derive(Clone, Debug, PartialEq)]
struct Forest {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    weight_ids: Vec<usize>,
    weights32: Vec<f32>,
    weights64: Vec<f64>,
    base32: Vec<f32>,
    base64: Vec<f64>,
    outputs: usize,
    max_feature: usize,
    aggregate: Aggregate,
    post_transform: PostTransform,
}

impl Forest {
    /// Reads the `nodes_*` attributes and the `{prefix}_*` votes.
    fn parse(
        ctx: &ParsingContext,
        node: &NodeProto,
        prefix: &str,
        outputs: usize,
        aggregate: Aggregate,
    ) -> TractResult<Self> {
        let ints = |name: &str| -> TractResult<Vec<i64>> {
            Ok(node.get_attr_opt_vec::<i64>(name)?.unwrap_or_default())
        };
        let tree_ids = ints("nodes_treeids")?;
        let node_ids = ints("nodes_nodeids")?;
        let feature_ids = ints("nodes_featureids")?;
        let true_ids = ints("nodes_truenodeids")?;
        let false_ids = ints("nodes_falsenodeids")?;
        let missing = ints("nodes_missing_value_tracks_true")?;
        let modes: Vec<String> = node
            .get_attr_opt_vec::<String>("nodes_modes")?
            .unwrap_or_default();
        let values = floats_attr(ctx, node, "nodes_values")?.unwrap_or_default();
        let n = tree_ids.len();
        ensure!(n > 0, "no nodes");
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", feature_ids.len()),
            ("nodes_truenodeids", true_ids.len()),
            ("nodes_falsenodeids", false_ids.len()),
            ("nodes_modes", modes.len()),
            ("nodes_values", values.len()),
        ] {
            ensure!(len == n, "{name} has {len} entries, nodes_treeids {n}");
        }

        let mut index = HashMap::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let key = (tree_ids[i], node_ids[i]);
            ensure!(
                index.insert(key, i).is_none(),
                "node {} of tree {} is listed twice",
                key.1,
                key.0
            );
            let feature = usize::try_from(feature_ids[i])
                .map_err(|_| format_err!("negative feature id {}", feature_ids[i]))?;
            nodes.push(Node {
                feature,
                mode: Mode::parse(&modes[i])?,
                missing_true: missing.get(i) == Some(&1),
                threshold32: values[i] as f32,
                threshold64: values[i],
                true_child: 0,
                false_child: 0,
                first_weight: 0,
                n_weights: 0,
            });
        }
        for i in 0..n {
            if nodes[i].mode == Mode::Leaf {
                continue;
            }
            let child = |id: i64, which: &str| -> TractResult<usize> {
                match index.get(&(tree_ids[i], id)) {
                    Some(&c) if c != i => Ok(c),
                    Some(_) => bail!(
                        "node {} of tree {} is its own {which} child",
                        node_ids[i],
                        tree_ids[i]
                    ),
                    None => bail!(
                        "node {} of tree {}: {which} child {id} does not exist",
                        node_ids[i],
                        tree_ids[i]
                    ),
                }
            };
            nodes[i].true_child = child(true_ids[i], "true")?;
            nodes[i].false_child = child(false_ids[i], "false")?;
        }

        let v_tree = ints(&format!("{prefix}_treeids"))?;
        let v_node = ints(&format!("{prefix}_nodeids"))?;
        let v_id = ints(&format!("{prefix}_ids"))?;
        let v_weight = floats_attr(ctx, node, &format!("{prefix}_weights"))?.unwrap_or_default();
        let m = v_id.len();
        ensure!(m > 0, "no {prefix}_ids");
        ensure!(
            v_tree.len() == m && v_node.len() == m && v_weight.len() == m,
            "{prefix}_ids, _nodeids, _treeids and _weights differ in length"
        );
        // Votes in (tree, node, listed order), as onnxruntime sorts them: a leaf's votes are
        // contiguous and its "first" weight is its earliest listed one.
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by_key(|&k| (v_tree[k], v_node[k], k));
        let (mut weight_ids, mut weights64) = (Vec::with_capacity(m), Vec::with_capacity(m));
        for k in order {
            let &leaf = index.get(&(v_tree[k], v_node[k])).ok_or_else(|| {
                format_err!(
                    "{prefix} weight for node {} of tree {}, which does not exist",
                    v_node[k],
                    v_tree[k]
                )
            })?;
            // Old onnxmltools wrote votes on split nodes; onnxruntime ignores them, so does Podium.
            if nodes[leaf].mode != Mode::Leaf {
                continue;
            }
            let id = usize::try_from(v_id[k])
                .ok()
                .filter(|&id| id < outputs)
                .ok_or_else(|| {
                    format_err!(
                        "{prefix}_ids has {}, but there are {outputs} outputs",
                        v_id[k]
                    )
                })?;
            if nodes[leaf].n_weights == 0 {
                nodes[leaf].first_weight = weight_ids.len();
            }
            nodes[leaf].n_weights += 1;
            weight_ids.push(id);
            weights64.push(v_weight[k]);
        }
        for (i, node) in nodes.iter().enumerate() {
            ensure!(
                node.mode != Mode::Leaf || node.n_weights > 0,
                "leaf {} of tree {} has no {prefix} weight",
                node_ids[i],
                tree_ids[i]
            );
        }

        // A tree starts wherever the listed tree id changes, as in onnxruntime.
        let roots: Vec<usize> = (0..n)
            .filter(|&i| i == 0 || tree_ids[i] != tree_ids[i - 1])
            .collect();
        check_acyclic(&nodes, &roots)?;

        let base64 = floats_attr(ctx, node, "base_values")?.unwrap_or_default();
        Ok(Forest {
            max_feature: nodes.iter().map(|n| n.feature).max().unwrap_or(0),
            weights32: weights64.iter().map(|&w| w as f32).collect(),
            base32: base64.iter().map(|&b| b as f32).collect(),
            nodes,
            roots,
            weight_ids,
            weights64,
            base64,
            outputs,
            aggregate,
            post_transform: PostTransform::parse(node)?,
        })
    }

    /// The leaf that row `x` reaches from `root`.
    fn leaf<T: Real>(&self, x: &[T], root: usize) -> &Node {
        let mut node = &self.nodes[root];
        loop {
            let v = x[node.feature];
            let t = T::threshold(node);
            let go_true = match node.mode {
                Mode::Leaf => return node,
                Mode::Leq => v <= t,
                Mode::Lt => v < t,
                Mode::Gte => v >= t,
                Mode::Gt => v > t,
                Mode::Eq => v == t,
                Mode::Neq => v != t,
            } || (node.missing_true && v.is_nan());
            node = &self.nodes[if go_true {
                node.true_child
            } else {
                node.false_child
            }];
        }
    }

    /// Per-output (score, voted) of one row, before base values and transforms.
    fn votes<T: Real>(&self, x: &[T], scores: &mut [(T, bool)]) {
        scores.fill((T::ZERO, false));
        for &root in &self.roots {
            let leaf = self.leaf(x, root);
            for w in leaf.first_weight..leaf.first_weight + leaf.n_weights {
                let (id, value) = (self.weight_ids[w], T::weight(self, w));
                let s = &mut scores[id];
                match self.aggregate {
                    Aggregate::Sum | Aggregate::Average => s.0 = s.0 + value,
                    Aggregate::Min => {
                        if !s.1 || value < s.0 {
                            s.0 = value
                        }
                    }
                    Aggregate::Max => {
                        if !s.1 || value > s.0 {
                            s.0 = value
                        }
                    }
                }
                s.1 = true;
            }
        }
    }

    /// The single-output score of one row (onnxruntime's `FinalizeScores1` of a regressor).
    fn single<T: Real>(&self, x: &[T]) -> f32 {
        let origin = if T::base(self).len() == 1 {
            T::base(self)[0]
        } else {
            T::ZERO
        };
        let mut score = T::ZERO;
        let mut voted = false;
        for &root in &self.roots {
            let leaf = self.leaf(x, root);
            // One output reads only the first vote of a leaf, whatever its target id.
            let value = T::weight(self, leaf.first_weight);
            match self.aggregate {
                Aggregate::Sum | Aggregate::Average => score = score + value,
                Aggregate::Min => {
                    if !voted || value < score {
                        score = value
                    }
                }
                Aggregate::Max => {
                    if !voted || value > score {
                        score = value
                    }
                }
            }
            // onnxruntime's sum never marks the score as voted; min and max do.
            voted |= matches!(self.aggregate, Aggregate::Min | Aggregate::Max);
        }
        let score = match self.aggregate {
            Aggregate::Sum => score + origin,
            Aggregate::Average => score / T::from_usize(self.roots.len()) + origin,
            Aggregate::Min | Aggregate::Max => {
                if voted {
                    score + origin
                } else {
                    origin
                }
            }
        };
        if self.post_transform == PostTransform::Probit {
            probit(score.to_f32())
        } else {
            score.to_f32()
        }
    }

    /// Regressor outputs of one row from its votes (onnxruntime's `FinalizeScores`).
    fn finalize_targets<T: Real>(&self, scores: &mut [(T, bool)], out: &mut [f32]) {
        let base = T::base(self);
        let use_base = base.len() == scores.len();
        for (k, s) in scores.iter_mut().enumerate() {
            let b = if use_base { base[k] } else { T::ZERO };
            match self.aggregate {
                Aggregate::Sum => s.0 = s.0 + b,
                Aggregate::Average => s.0 = s.0 / T::from_usize(self.roots.len()) + b,
                // The base aggregator adds the base to a voted score but leaves `voted` as is.
                Aggregate::Min | Aggregate::Max => s.0 = b + if s.1 { s.0 } else { T::ZERO },
            }
        }
        for (o, s) in out.iter_mut().zip(scores.iter()) {
            *o = s.read().to_f32();
        }
        self.post_transform.apply_row(out);
    }
}

/// Refuses a tree whose child links loop, which would send evaluation round forever.
fn check_acyclic(nodes: &[Node], roots: &[usize]) -> TractResult<()> {
    // 0 = unseen, 1 = on the current path, 2 = finished.
    let mut state = vec![0u8; nodes.len()];
    for &root in roots {
        let mut stack = vec![(root, false)];
        while let Some((i, children_done)) = stack.pop() {
            if children_done {
                state[i] = 2;
                continue;
            }
            match state[i] {
                2 => continue,
                1 => bail!("the children of node index {i} loop back to it"),
                _ => {}
            }
            state[i] = 1;
            stack.push((i, true));
            if nodes[i].mode != Mode::Leaf {
                for c in [nodes[i].true_child, nodes[i].false_child] {
                    if state[c] == 1 {
                        bail!("the children of node index {c} loop back to it");
                    }
                    if state[c] == 0 {
                        stack.push((c, false));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The numeric type a forest is evaluated in: f32 for f32 (and integer) input, f64 for f64.
trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + Datum
{
    const ZERO: Self;
    const ONE: Self;
    fn is_nan(self) -> bool;
    fn to_f32(self) -> f32;
    fn from_usize(n: usize) -> Self;
    fn threshold(node: &Node) -> Self;
    fn weight(forest: &Forest, i: usize) -> Self;
    fn base(forest: &Forest) -> &[Self];
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_usize(n: usize) -> Self {
        n as f32
    }
    fn threshold(node: &Node) -> Self {
        node.threshold32
    }
    fn weight(forest: &Forest, i: usize) -> Self {
        forest.weights32[i]
    }
    fn base(forest: &Forest) -> &[Self] {
        &forest.base32
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_usize(n: usize) -> Self {
        n as f64
    }
    fn threshold(node: &Node) -> Self {
        node.threshold64
    }
    fn weight(forest: &Forest, i: usize) -> Self {
        forest.weights64[i]
    }
    fn base(forest: &Forest) -> &[Self] {
        &forest.base64
    }
}

/// A score and whether any leaf voted for it; unvoted scores read as zero, as in onnxruntime.
trait Voted<T> {
    fn read(&self) -> T;
}

impl<T: Real> Voted<T> for (T, bool) {
    fn read(&self) -> T {
        if self.1 {
            self.0
        } else {
            T::ZERO
        }
    }
}

/// Rows of the input in the forest's evaluation type, after checking the forest's feature ids.
fn input_rows<T: Real>(
    forest: &Forest,
    values: &[T],
    shape: &[usize],
) -> TractResult<(usize, usize)> {
    let (rows, cols) = super::rows_and_columns(shape)?;
    ensure!(
        forest.max_feature < cols,
        "a tree reads feature {} but the input has {cols} columns",
        forest.max_feature
    );
    debug_assert_eq!(values.len(), rows * cols);
    Ok((rows, cols))
}

/// Runs `f` on the input as f32 or f64 rows, the two types onnxruntime evaluates trees in.
fn with_rows<R>(
    input: &TValue,
    f32_case: impl FnOnce(&[f32], &[usize]) -> TractResult<R>,
    f64_case: impl FnOnce(&[f64], &[usize]) -> TractResult<R>,
) -> TractResult<R> {
    match input.datum_type() {
        DatumType::F64 => f64_case(input.try_as_plain_ram()?.as_slice::<f64>()?, input.shape()),
        DatumType::F32 => f32_case(input.try_as_plain_ram()?.as_slice::<f32>()?, input.shape()),
        _ => {
            let cast = input.cast_to::<f32>()?;
            f32_case(cast.try_as_plain_ram()?.as_slice::<f32>()?, input.shape())
        }
    }
}

/// `TreeEnsembleRegressor`: `n_targets` scores per row.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeEnsembleRegressor {
    forest: Forest,
}

/// Builds a [`TreeEnsembleRegressor`] from its ONNX node.
pub fn tree_ensemble_regressor(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets = node.get_attr_opt::<usize>("n_targets")?.unwrap_or(0);
    node.expect(targets > 0, "n_targets > 0")?;
    let aggregate: Option<String> = node.get_attr_opt("aggregate_function")?;
    let aggregate = match aggregate.as_deref().unwrap_or("SUM") {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("unknown aggregate_function {other:?}"),
    };
    let forest = Forest::parse(ctx, node, "target", targets, aggregate)?;
    boxed(TreeEnsembleRegressor { forest })
}

impl TreeEnsembleRegressor {
    fn predict<T: Real>(&self, x: &[T], shape: &[usize]) -> TractResult<Tensor> {
        let f = &self.forest;
        let (rows, cols) = input_rows(f, x, shape)?;
        let t = f.outputs;
        let mut out = vec![0.0f32; rows * t];
        let mut scores = vec![(T::ZERO, false); t];
        for (r, o) in out.chunks_mut(t).enumerate() {
            let xr = &x[r * cols..][..cols];
            if t == 1 {
                o[0] = f.single(xr);
            } else {
                f.votes(xr, &mut scores);
                f.finalize_targets(&mut scores, o);
            }
        }
        Tensor::from_shape(&[rows, t], &out)
    }
}

impl Kernel for TreeEnsembleRegressor {
    fn name(&self) -> &'static str {
        "TreeEnsembleRegressor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        rows_rule(
            s,
            inputs,
            &outputs[0],
            f32::datum_type(),
            Some(self.forest.outputs),
        )
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0])?;
        Ok(tvec!(f32::fact([n, self.forest.outputs.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out = with_rows(
            &inputs[0],
            |x, shape| self.predict(x, shape),
            |x, shape| self.predict(x, shape),
        )?;
        Ok(tvec!(out.into_tvalue()))
    }
}

/// `TreeEnsembleClassifier`: a label and one score per class per row.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeEnsembleClassifier {
    forest: Forest,
    labels: Labels,
    /// Two classes and every vote for the same one: onnxruntime's "binary case".
    binary_case: bool,
    weights_all_positive: bool,
}

/// Builds a [`TreeEnsembleClassifier`] from its ONNX node.
pub fn tree_ensemble_classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = Labels::parse(node, "classlabels_int64s")?;
    node.expect(labels.len() >= 2, "at least two class labels")?;
    let forest = Forest::parse(ctx, node, "class", labels.len(), Aggregate::Sum)?;
    let voted: HashSet<usize> = forest.weight_ids.iter().copied().collect();
    let binary_case = labels.len() == 2 && voted.len() == 1;
    let weights_all_positive = forest.weights64.iter().all(|&w| w >= 0.0);
    boxed(TreeEnsembleClassifier {
        forest,
        labels,
        binary_case,
        weights_all_positive,
    })
}

impl TreeEnsembleClassifier {
    fn predict<T: Real>(&self, x: &[T], shape: &[usize]) -> TractResult<(Tensor, Tensor)> {
        let f = &self.forest;
        let (rows, cols) = input_rows(f, x, shape)?;
        let k = f.outputs;
        let mut out = vec![0.0f32; rows * k];
        let mut picks = Vec::with_capacity(rows);
        let mut scores = vec![(T::ZERO, false); k];
        for (r, o) in out.chunks_mut(k).enumerate() {
            f.votes(&x[r * cols..][..cols], &mut scores);
            picks.push(if k == 2 {
                self.finalize_binary(&mut scores, o)
            } else {
                self.finalize_classes(&mut scores, o)
            });
        }
        Ok((
            self.labels.tensor(&picks)?,
            Tensor::from_shape(&[rows, k], &out)?,
        ))
    }

    /// Three or more classes: base values added (marking the class voted), then the transform.
    fn finalize_classes<T: Real>(&self, scores: &mut [(T, bool)], out: &mut [f32]) -> Pick {
        for (s, &b) in scores.iter_mut().zip(T::base(&self.forest)) {
            s.0 = if s.1 { s.0 + b } else { b };
            s.1 = true;
        }
        let mut best: Option<usize> = None;
        for (c, s) in scores.iter().enumerate() {
            if s.1 && best.is_none_or(|b| s.0 > scores[b].0) {
                best = Some(c);
            }
        }
        for (o, s) in out.iter_mut().zip(scores.iter()) {
            *o = s.read().to_f32();
        }
        self.forest.post_transform.apply_row(out);
        Pick::Class(best.unwrap_or(0))
    }

    /// Two classes: onnxruntime's binary bookkeeping, line by line.
    fn finalize_binary<T: Real>(&self, p: &mut [(T, bool)], out: &mut [f32]) -> Pick {
        let base = T::base(&self.forest);
        let mut second_class: i8 = -1;
        let mut len = 2;
        match base.len() {
            2 => {
                if p[1].1 {
                    // onnxruntime builds class 1 from class 0's score and base_values[1].
                    p[1].0 = base[1] + p[0].0;
                    p[0].0 = -p[1].0;
                } else {
                    p[1].0 = p[1].0 + base[1];
                    p[0].0 = p[0].0 + base[0];
                }
            }
            1 => {
                p[0].0 = p[0].0 + base[0];
                if !p[1].1 {
                    len = 1;
                }
            }
            0 => {
                second_class = 3;
                if !p[1].1 {
                    len = 1;
                }
            }
            _ => {}
        }
        let positive = if len == 2 && p[1].1 {
            p[1].0
        } else {
            p[0].read()
        };
        let pick = if self.binary_case {
            let (class, code) = match (self.weights_all_positive, positive) {
                (true, w) if w > T::from_usize(1) / T::from_usize(2) => (1, 0),
                (true, _) => (0, 1),
                (false, w) if w > T::ZERO => (1, 2),
                (false, _) => (0, 3),
            };
            second_class = code;
            Pick::Class(class)
        } else {
            Pick::Raw(i64::from(positive > T::ZERO))
        };

        let transform = self.forest.post_transform;
        if len == 2 {
            out[0] = p[0].read().to_f32();
            out[1] = p[1].read().to_f32();
            transform.apply_row(out);
            return pick;
        }
        let s = p[0].read();
        // onnxruntime leaves the second column unwritten in the last two cases; NaN says so.
        let (a, b) = match (transform, second_class) {
            (PostTransform::Probit, _) => (probit(s.to_f32()), f32::NAN),
            (_, 0 | 1) => ((T::ONE - s).to_f32(), s.to_f32()),
            (PostTransform::Logistic, 2 | 3) => (logistic((-s).to_f32()), logistic(s.to_f32())),
            (_, 2 | 3) => ((-s).to_f32(), s.to_f32()),
            _ => (s.to_f32(), f32::NAN),
        };
        out[0] = a;
        out[1] = b;
        pick
    }
}

impl Kernel for TreeEnsembleClassifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, self.labels.datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
        rows_rule(
            s,
            inputs,
            &outputs[1],
            f32::datum_type(),
            Some(self.forest.outputs),
        )
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0])?;
        Ok(tvec!(
            self.labels.datum_type().fact([n.clone()]),
            f32::fact([n, self.forest.outputs.to_dim()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (labels, scores) = with_rows(
            &inputs[0],
            |x, shape| self.predict(x, shape),
            |x, shape| self.predict(x, shape),
        )?;
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(true_child: usize, false_child: usize) -> Node {
        Node {
            feature: 0,
            mode: Mode::Leq,
            missing_true: false,
            threshold32: 0.0,
            threshold64: 0.0,
            true_child,
            false_child,
            first_weight: 0,
            n_weights: 0,
        }
    }

    fn leaf() -> Node {
        Node {
            mode: Mode::Leaf,
            n_weights: 1,
            ..split(0, 0)
        }
    }

    #[test]
    fn trees_whose_children_loop_are_refused() {
        // 0 -> (1, 2), 1 -> (0, 2): evaluation would never reach a leaf.
        let looping = [split(1, 2), split(0, 2), leaf()];
        assert!(check_acyclic(&looping, &[0]).is_err());
        // Shared subtrees are fine; only loops are refused.
        let shared = [split(1, 2), split(2, 3), leaf(), leaf()];
        assert!(check_acyclic(&shared, &[0]).is_ok());
    }

    #[test]
    fn every_mode_compares_as_onnxruntime_and_nan_follows_the_flag() {
        let forest = |mode: Mode, missing_true: bool| Forest {
            nodes: vec![
                Node {
                    mode,
                    missing_true,
                    threshold32: 1.0,
                    threshold64: 1.0,
                    ..split(1, 2)
                },
                leaf(),
                Node {
                    first_weight: 1,
                    ..leaf()
                },
            ],
            roots: vec![0],
            weight_ids: vec![0, 0],
            weights32: vec![1.0, 2.0],
            weights64: vec![1.0, 2.0],
            base32: vec![],
            base64: vec![],
            outputs: 1,
            max_feature: 0,
            aggregate: Aggregate::Sum,
            post_transform: PostTransform::None,
        };
        // (mode, x, goes to the true child)
        let cases = [
            (Mode::Leq, 1.0, true),
            (Mode::Lt, 1.0, false),
            (Mode::Gte, 1.0, true),
            (Mode::Gt, 1.0, false),
            (Mode::Eq, 1.0, true),
            (Mode::Neq, 1.0, false),
            (Mode::Gte, 0.5, false),
            (Mode::Neq, f32::NAN, true), // NaN != t holds, whatever the flag
            (Mode::Leq, f32::NAN, false),
        ];
        for (mode, x, want_true) in cases {
            let f = forest(mode, false);
            assert_eq!(
                f.single(&[x]),
                if want_true { 1.0 } else { 2.0 },
                "{mode:?} {x}"
            );
            assert_eq!(f.single(&[f64::from(x)]), if want_true { 1.0 } else { 2.0 });
        }
        assert_eq!(forest(Mode::Leq, true).single(&[f32::NAN]), 1.0);
        assert_eq!(forest(Mode::Gt, true).single(&[f32::NAN]), 1.0);
    }
}
