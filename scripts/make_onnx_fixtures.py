#!/usr/bin/env python3
"""Generate the ONNX parity fixtures under crates/podium-model/tests/fixtures/onnx/.

Trains small models on synthetic ad-like data, exports them the way CTR teams do (skl2onnx for
scikit-learn pipelines, onnxmltools for LightGBM and XGBoost, default options unless said
otherwise), builds a few tree ensembles by hand with onnx.helper to reach the node modes and
post-transforms no trainer emits, and records onnxruntime's own predictions for every input row.
Podium's tests require the same numbers to 1e-5 on every row.

Usage (Python 3.11):
    pip install scikit-learn skl2onnx onnxmltools onnxruntime lightgbm xgboost onnx numpy
    python scripts/make_onnx_fixtures.py

Outputs (all small, committed):
    <input>.csv              header = feature names (the model's input order), empty cell = NaN
    <model>.onnx             the exported graph
    <model>_expected.csv     header `prediction`: onnxruntime's positive-class probability for a
                             binary classifier, the chosen column for the others, the value for a
                             regressor
    unknown_op.onnx          a graph using an ai.onnx.ml operator nobody implements (SVMClassifier)
    custom_domain.onnx       a graph using an operator of a private domain
    MANIFEST.txt             library versions, and for each model: input file, output, column
"""

from __future__ import annotations

import math
import pathlib
import warnings

import lightgbm as lgb
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import skl2onnx
import sklearn
import xgboost as xgb
from onnx import TensorProto, helper
from onnxmltools.convert.common.data_types import FloatTensorType as MlFloatTensorType
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

warnings.filterwarnings("ignore")

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "podium-model" / "tests" / "fixtures" / "onnx"

AD_FEATURES = [
    "ctr_7d", "bid_floor", "hour_of_day", "user_age_z",
    "slot_position", "creative_age_days", "viewability", "freq_cap_left",
]
MLP_WIDTH = 64
HAND_FEATURES = ["a", "b", "c", "d"]


def draw_ads(rng: np.random.Generator, n: int, missing: bool) -> np.ndarray:
    x = np.empty((n, len(AD_FEATURES)))
    x[:, 0] = rng.beta(1.5, 30.0, n)
    x[:, 1] = rng.lognormal(0.0, 1.0, n)
    x[:, 2] = rng.integers(0, 24, n)
    x[:, 3] = rng.normal(0.0, 1.0, n)
    x[:, 4] = rng.integers(1, 6, n)
    x[:, 5] = rng.exponential(20.0, n)
    x[:, 6] = rng.uniform(0.2, 1.0, n)
    x[:, 7] = rng.integers(0, 10, n)
    if missing:
        for j, rate in [(0, 0.12), (1, 0.05), (3, 0.08), (6, 0.10)]:
            x[rng.random(n) < rate, j] = np.nan
    return x.astype(np.float32)


def ad_label(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    z = (
        18.0 * np.nan_to_num(x[:, 0], nan=0.03)
        + 0.3 * np.log1p(np.nan_to_num(x[:, 1], nan=1.0))
        + 0.4 * np.sin(x[:, 2] / 24.0 * 2 * np.pi)
        - 0.3 * np.nan_to_num(x[:, 3])
        - 0.25 * x[:, 4]
        - 0.01 * x[:, 5]
        + 1.2 * np.nan_to_num(x[:, 6], nan=0.5)
        - 1.0
    )
    return (rng.random(len(z)) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)


def ad_target(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return (
        2.0 * np.nan_to_num(x[:, 6], nan=0.5)
        + 0.1 * x[:, 4]
        - 0.02 * x[:, 5]
        + rng.normal(0.0, 0.1, len(x))
    )


def write_inputs(path: pathlib.Path, names: list[str], x: np.ndarray) -> None:
    lines = [",".join(names)]
    for row in x:
        # str(np.float32) is the shortest text that reads back as the same f32.
        lines.append(",".join("" if math.isnan(v) else str(np.float32(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")


def write_expected(path: pathlib.Path, values: np.ndarray) -> None:
    lines = ["prediction"] + [repr(float(np.float32(v))) for v in values]
    path.write_text("\n".join(lines) + "\n")


def score(model: onnx.ModelProto, x: np.ndarray, output: str, column: int | None) -> np.ndarray:
    """onnxruntime's value of `output` (column `column`) for every row of x."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    names = [o.name for o in session.get_outputs()]
    if isinstance(batch, int):
        # A graph with a fixed batch runs row by row, as it must.
        parts = [session.run([output], {name: x[i:i + 1]})[0] for i in range(len(x))]
        if isinstance(parts[0], list):
            result = [m for p in parts for m in p]
        else:
            result = np.concatenate(parts)
    else:
        result = session.run([output], {name: x})[0]
    assert output in names
    if isinstance(result, list):  # ZipMap: a list of {label: probability}
        keys = sorted(result[0].keys())
        return np.array([row[keys[column]] for row in result], dtype=np.float32)
    result = np.asarray(result, dtype=np.float32)
    if result.ndim == 1:
        return result
    return result[:, column]


class Fixtures:
    def __init__(self) -> None:
        self.manifest: list[str] = []

    def add(self, name: str, model: onnx.ModelProto, inputs: str, x: np.ndarray,
            output: str, column: int | None, note: str) -> None:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(OUT / f"{name}.onnx"))
        # Expectations come from the saved file, so they pin down what the file means.
        loaded = onnx.load_model(str(OUT / f"{name}.onnx"))
        write_expected(OUT / f"{name}_expected.csv", score(loaded, x, output, column))
        ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in loaded.graph.node})
        self.manifest.append(
            f"{name}: inputs {inputs}, output {output}"
            + (f" column {column}" if column is not None else "")
            + f"; {note}; operators {' '.join(ops)}"
        )


def sklearn_fixtures(fx: Fixtures, rng: np.random.Generator) -> None:
    x = draw_ads(rng, 4000, missing=True)
    y = ad_label(rng, x)
    test = draw_ads(rng, 240, missing=True)
    test[:8, :] = np.nan  # whole rows missing: every feature imputed
    write_inputs(OUT / "ads_input.csv", AD_FEATURES, test)
    initial = [("input", FloatTensorType([None, len(AD_FEATURES)]))]

    logreg = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(C=0.5))
    logreg.fit(x, y)
    # Default options: label output first, then ZipMap's list of {class: probability}.
    model = convert_sklearn(logreg, initial_types=initial, target_opset=15)
    fx.add("logreg_zipmap", model, "ads_input.csv", test, "output_probability", 1,
           "skl2onnx SimpleImputer+StandardScaler+LogisticRegression, default options (ZipMap)")
    model = convert_sklearn(logreg, initial_types=initial, target_opset=17,
                            options={id(logreg): {"zipmap": False}})
    fx.add("logreg", model, "ads_input.csv", test, "probabilities", 1,
           "same pipeline, zipmap=False")

    target = ad_target(rng, x)
    linreg = make_pipeline(SimpleImputer(strategy="median"), Normalizer(norm="l2"),
                           LinearRegression())
    linreg.fit(x, target)
    model = convert_sklearn(linreg, initial_types=initial, target_opset=15)
    fx.add("normalizer_linreg", model, "ads_input.csv", test, "variable", 0,
           "skl2onnx SimpleImputer(median)+Normalizer(l2)+LinearRegression")
    # The same graph with its batch dimension fixed to 1, as some exporters write it.
    fixed = onnx.load_model_from_string(model.SerializeToString())
    fixed.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    for out in fixed.graph.output:
        out.type.tensor_type.shape.dim[0].Clear()
        out.type.tensor_type.shape.dim[0].dim_value = 1
    fx.add("normalizer_linreg_batch1", fixed, "ads_input.csv", test, "variable", 0,
           "normalizer_linreg with the batch dimension fixed to 1")

    # An MLP of about 50k multiply-adds per row: 64 -> 256 -> 128 -> 1 (logistic output).
    xm = rng.normal(0.0, 1.0, (3000, MLP_WIDTH)).astype(np.float32)
    wm = rng.normal(0.0, 1.0, MLP_WIDTH)
    ym = ((xm @ wm) / 8.0 + np.sin(xm[:, 0] * xm[:, 1]) + rng.normal(0, 0.5, 3000) > 0).astype(int)
    xm[rng.random(xm.shape) < 0.03] = np.nan
    mlp = make_pipeline(SimpleImputer(), MLPClassifier(hidden_layer_sizes=(256, 128),
                                                       max_iter=40, random_state=3))
    mlp.fit(xm, ym)
    names = [f"emb_{i:02d}" for i in range(MLP_WIDTH)]
    test_m = rng.normal(0.0, 1.0, (120, MLP_WIDTH)).astype(np.float32)
    test_m[rng.random(test_m.shape) < 0.03] = np.nan
    write_inputs(OUT / "mlp_input.csv", names, test_m)
    model = convert_sklearn(mlp, initial_types=[("input", FloatTensorType([None, MLP_WIDTH]))],
                            target_opset=17, options={id(mlp): {"zipmap": False}})
    fx.add("mlp", model, "mlp_input.csv", test_m, "probabilities", 1,
           "skl2onnx SimpleImputer+MLPClassifier(256, 128), zipmap=False")


def gbdt_fixtures(fx: Fixtures, rng: np.random.Generator) -> None:
    x = draw_ads(rng, 4000, missing=True)
    y = ad_label(rng, x)
    target = ad_target(rng, x)
    test = draw_ads(rng, 200, missing=True)
    test[:6, :] = np.nan
    initial = [("input", MlFloatTensorType([None, len(AD_FEATURES)]))]

    booster = lgb.LGBMClassifier(n_estimators=40, num_leaves=15, learning_rate=0.1,
                                 min_child_samples=20, verbose=-1, random_state=5)
    booster.fit(x, y)
    # Probe rows on and one f32 step either side of the split thresholds the trees use.
    thresholds = sorted({(n["split_feature"], n["threshold"])
                         for t in booster.booster_.dump_model()["tree_info"]
                         for n in _lgb_nodes(t["tree_structure"])})
    probes = []
    for k, (feature, t) in enumerate(thresholds[:60]):
        f = np.float32(t)
        for v in (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))):
            row = test[(k * 7) % len(test)].copy()
            row[feature] = v
            probes.append(row)
    test = np.vstack([test, np.array(probes, dtype=np.float32)])
    write_inputs(OUT / "gbdt_input.csv", AD_FEATURES, test)

    model = onnxmltools.convert_lightgbm(booster, initial_types=initial, target_opset=15)
    fx.add("lightgbm_binary", model, "gbdt_input.csv", test, "probabilities", 1,
           "onnxmltools LightGBM binary classifier, default options (ZipMap)")

    regressor = xgb.XGBRegressor(n_estimators=30, max_depth=4, learning_rate=0.15,
                                 random_state=5, n_jobs=1)
    regressor.fit(x, target)
    model = onnxmltools.convert_xgboost(regressor, initial_types=initial, target_opset=15)
    fx.add("xgboost_regressor", model, "gbdt_input.csv", test, "variable", 0,
           "onnxmltools XGBoost regressor (base_values)")

    classifier = xgb.XGBClassifier(n_estimators=30, max_depth=3, learning_rate=0.2,
                                   random_state=5, n_jobs=1)
    classifier.fit(x, y)
    model = onnxmltools.convert_xgboost(classifier, initial_types=initial, target_opset=15)
    fx.add("xgboost_binary", model, "gbdt_input.csv", test, "probabilities", 1,
           "onnxmltools XGBoost binary classifier")

    lgb_reg = lgb.LGBMRegressor(n_estimators=30, num_leaves=12, learning_rate=0.1, verbose=-1,
                                random_state=5)
    lgb_reg.fit(x, target)
    model = onnxmltools.convert_lightgbm(lgb_reg, initial_types=initial, target_opset=15)
    fx.add("lightgbm_regressor", model, "gbdt_input.csv", test, "variable", 0,
           "onnxmltools LightGBM regressor")


def _lgb_nodes(node: dict):
    if "split_feature" in node:
        yield node
        yield from _lgb_nodes(node["left_child"])
        yield from _lgb_nodes(node["right_child"])


def tree_graph(op: str, attrs: dict, outputs: list) -> onnx.ModelProto:
    """A one-node graph over a [N, 4] float input."""
    names = [o.name for o in outputs]
    node = helper.make_node(op, ["X"], names, domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 3)])


def hand_trees(prefix: str, leaf_votes) -> dict:
    """Three trees that use every comparison mode, with missing values tracked both ways.

    Each tree: node 0 splits, its children split or are leaves. `leaf_votes(tree, leaf)` gives
    the (id, weight) votes of a leaf.
    """
    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
    attrs = {k: [] for k in ["nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                             "nodes_values", "nodes_truenodeids", "nodes_falsenodeids",
                             "nodes_missing_value_tracks_true"]}
    votes = {f"{prefix}_{k}": [] for k in ["treeids", "nodeids", "ids", "weights"]}
    for tree in range(3):
        # node: (feature, mode, value, true, false, missing_true) or None for a leaf
        layout = [
            (tree % 4, modes[(2 * tree) % 6], [0.5, 1.0, 0.0][tree], 1, 2, tree != 1),
            ((tree + 1) % 4, modes[(2 * tree + 1) % 6], [-0.25, 2.0, 1.0][tree], 3, 4, tree == 1),
            ((tree + 2) % 4, modes[(tree + 4) % 6], [0.0, 0.5, 3.0][tree], 5, 6, tree == 2),
            None, None, None, None,
        ]
        for node_id, spec in enumerate(layout):
            attrs["nodes_treeids"].append(tree)
            attrs["nodes_nodeids"].append(node_id)
            if spec is None:
                attrs["nodes_featureids"].append(0)
                attrs["nodes_modes"].append("LEAF")
                attrs["nodes_values"].append(0.0)
                attrs["nodes_truenodeids"].append(0)
                attrs["nodes_falsenodeids"].append(0)
                attrs["nodes_missing_value_tracks_true"].append(0)
                for vote_id, weight in leaf_votes(tree, node_id):
                    votes[f"{prefix}_treeids"].append(tree)
                    votes[f"{prefix}_nodeids"].append(node_id)
                    votes[f"{prefix}_ids"].append(vote_id)
                    votes[f"{prefix}_weights"].append(weight)
            else:
                feature, mode, value, true, false, missing_true = spec
                attrs["nodes_featureids"].append(feature)
                attrs["nodes_modes"].append(mode)
                attrs["nodes_values"].append(value)
                attrs["nodes_truenodeids"].append(true)
                attrs["nodes_falsenodeids"].append(false)
                attrs["nodes_missing_value_tracks_true"].append(int(missing_true))
    return {**attrs, **votes}


def handmade_fixtures(fx: Fixtures, rng: np.random.Generator) -> None:
    # Values on every threshold used above, one f32 step either side, NaN, and random ones.
    specials = [np.nan, -0.25, 0.0, 0.5, 1.0, 2.0, 3.0, np.float32(0.5) + np.float32(2**-24),
                np.nextafter(np.float32(1.0), np.float32(0)), -1.0, 10.0]
    rows = [rng.choice(np.array(specials, dtype=np.float32), 4) for _ in range(150)]
    rows += [rng.normal(0.5, 1.5, 4).astype(np.float32) for _ in range(50)]
    x = np.array(rows, dtype=np.float32)
    write_inputs(OUT / "hand_input.csv", HAND_FEATURES, x)
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])

    def probabilities(k):
        return helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])

    # Binary, every vote for class 1 with mixed signs, one base value, LOGISTIC.
    attrs = hand_trees("class", lambda t, leaf: [(1, 0.3 * (leaf - 4.5) + 0.1 * t)])
    model = tree_graph("TreeEnsembleClassifier",
                       {**attrs, "classlabels_int64s": [0, 1], "base_values": [-0.2],
                        "post_transform": "LOGISTIC"}, [label, probabilities(2)])
    fx.add("trees_binary_logistic", model, "hand_input.csv", x, "probabilities", 1,
           "hand-built TreeEnsembleClassifier: all six modes, missing tracked, LOGISTIC")

    # Binary, votes for class 0 only, all weights positive, no transform: onnxruntime's [1-p, p].
    attrs = hand_trees("class", lambda t, leaf: [(0, 0.05 * leaf + 0.02 * t)])
    model = tree_graph("TreeEnsembleClassifier",
                       {**attrs, "classlabels_int64s": [0, 1], "post_transform": "NONE"},
                       [label, probabilities(2)])
    fx.add("trees_binary_positive", model, "hand_input.csv", x, "probabilities", 1,
           "hand-built TreeEnsembleClassifier: one class voted, positive weights, NONE")

    # Three classes, two votes per leaf, base values, SOFTMAX; column 2 is read.
    attrs = hand_trees("class", lambda t, leaf: [((leaf + t) % 3, 0.2 * leaf - 0.5),
                                                 ((leaf + t + 1) % 3, 0.1 * t)])
    model = tree_graph("TreeEnsembleClassifier",
                       {**attrs, "classlabels_int64s": [10, 20, 30],
                        "base_values": [0.1, -0.1, 0.05], "post_transform": "SOFTMAX"},
                       [label, probabilities(3)])
    fx.add("trees_multiclass_softmax", model, "hand_input.csv", x, "probabilities", 2,
           "hand-built TreeEnsembleClassifier: 3 classes, base values, SOFTMAX")

    variable = helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])
    # One target, AVERAGE, base value, and LOGISTIC, which onnxruntime ignores on one target.
    attrs = hand_trees("target", lambda t, leaf: [(0, 1.5 * leaf - 4.0 + t)])
    model = tree_graph("TreeEnsembleRegressor",
                       {**attrs, "n_targets": 1, "aggregate_function": "AVERAGE",
                        "base_values": [0.75], "post_transform": "LOGISTIC"}, [variable])
    fx.add("trees_regressor_average", model, "hand_input.csv", x, "variable", 0,
           "hand-built TreeEnsembleRegressor: AVERAGE, base value, LOGISTIC (ignored)")

    # Two targets, MAX, per-target base values; column 1 is read.
    attrs = hand_trees("target", lambda t, leaf: [(leaf % 2, 0.4 * leaf - t), (1 - leaf % 2, 0.3)])
    model = tree_graph("TreeEnsembleRegressor",
                       {**attrs, "n_targets": 2, "aggregate_function": "MAX",
                        "base_values": [1.0, -1.0]},
                       [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 2])])
    fx.add("trees_regressor_max", model, "hand_input.csv", x, "variable", 1,
           "hand-built TreeEnsembleRegressor: 2 targets, MAX, base values")


def unsupported_fixtures() -> None:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    svm = helper.make_node(
        "SVMClassifier", ["X"], ["label", "probabilities"], domain="ai.onnx.ml", name="svm",
        classlabels_ints=[0, 1], coefficients=[1.0, -1.0], kernel_type="LINEAR",
        rho=[0.0], support_vectors=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        vectors_per_class=[1, 1])
    graph = helper.make_graph(
        [svm], "svm", [x],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    onnx.save_model(model, str(OUT / "unknown_op.onnx"))

    fancy = helper.make_node("FancyScore", ["X"], ["Y"], domain="com.example.ads", name="fancy")
    graph = helper.make_graph([fancy], "custom", [x],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.ads", 1)])
    onnx.save_model(model, str(OUT / "custom_domain.onnx"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fx = Fixtures()
    sklearn_fixtures(fx, np.random.default_rng(20240611))
    gbdt_fixtures(fx, np.random.default_rng(20240612))
    handmade_fixtures(fx, np.random.default_rng(20240613))
    unsupported_fixtures()
    versions = (f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, skl2onnx "
                f"{skl2onnx.__version__}, onnxmltools {onnxmltools.__version__}, scikit-learn "
                f"{sklearn.__version__}, lightgbm {lgb.__version__}, xgboost {xgb.__version__}")
    (OUT / "MANIFEST.txt").write_text(
        "Generated by scripts/make_onnx_fixtures.py; do not edit by hand.\n"
        + versions + "\n" + "\n".join(fx.manifest) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")


if __name__ == "__main__":
    main()
