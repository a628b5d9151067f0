#!/usr/bin/env python3
"""Generate the GBDT parity fixtures under crates/podium-model/tests/fixtures/.

Trains small LightGBM and XGBoost models on synthetic ad-like data, saves each model file the
way the library writes it, and records the library's own predictions for a set of input rows
chosen to exercise the hard parts of tree evaluation: missing values (NaN), exact zeros and
values within LightGBM's kZeroThreshold of zero, values exactly on split thresholds and one f32
step either side of them, categorical codes in and out of range, and infinities.

Predictions are made by a Booster loaded back from the saved file (not the in-memory one), on
float32 inputs, so the fixture pins down what the file means.

Usage (Python 3.11):
    pip install lightgbm xgboost scikit-learn numpy
    python scripts/make_model_fixtures.py

Outputs (all small, committed):
    lightgbm_input.csv, xgboost_input.csv   header = feature names, empty cell = missing
    <model>.txt / <model>.json              the model files
    <model>_expected.csv                    header `prediction`; probability for binary models
    MANIFEST.txt                            library versions and which input file each model uses
"""

from __future__ import annotations

import json
import math
import pathlib

import lightgbm as lgb
import numpy as np
import xgboost as xgb

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "podium-model" / "tests" / "fixtures"

FEATURES = ["ctr_7d", "bid_floor", "hour_of_day", "user_age_z", "tiny_signal", "placement"]
CATEGORICAL = "placement"
K_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold: a float literal widened to double


def draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """Feature rows as float32, with missing values and exact zeros where ad data has them."""
    x = np.empty((n, len(FEATURES)), dtype=np.float64)
    x[:, 0] = rng.beta(1.5, 30.0, n)  # ctr_7d
    x[rng.random(n) < 0.10, 0] = np.nan
    x[:, 1] = rng.lognormal(0.0, 1.0, n)  # bid_floor: many exact zeros
    x[rng.random(n) < 0.25, 1] = 0.0
    x[rng.random(n) < 0.05, 1] = np.nan
    x[:, 2] = rng.integers(0, 24, n)  # hour_of_day: never missing in training
    # user_age_z: never missing in training, so LightGBM reads a missing value as 0.0 here, and
    # with thresholds on both sides of zero that differs from the default_left bit.
    x[:, 3] = np.round(rng.normal(0.0, 1.0, n), 2)
    x[:, 4] = rng.normal(0.0, 1e-3, n)  # tiny_signal: zeros and NaN
    x[rng.random(n) < 0.20, 4] = 0.0
    x[rng.random(n) < 0.10, 4] = np.nan
    x[:, 5] = rng.integers(0, 10, n)  # placement: a category code
    x[rng.random(n) < 0.03, 5] = np.nan
    return x.astype(np.float32)


def draw_test(rng: np.random.Generator, n: int) -> np.ndarray:
    """Like `draw`, plus missing values in the features that were never missing in training."""
    x = draw(rng, n)
    for j in (2, 3):
        x[rng.random(n) < 0.08, j] = np.nan
    return x


def signal(x: np.ndarray) -> np.ndarray:
    ctr = np.nan_to_num(x[:, 0].astype(np.float64), nan=0.03)
    bid = np.nan_to_num(x[:, 1].astype(np.float64), nan=1.0)
    hour = x[:, 2].astype(np.float64)
    age = x[:, 3].astype(np.float64)
    tiny = np.nan_to_num(x[:, 4].astype(np.float64), nan=0.0)
    place = np.nan_to_num(x[:, 5].astype(np.float64), nan=0.0).astype(int)
    place_effect = np.array([0.4, -0.3, 0.0, 0.8, -0.6, 0.2, -0.1, 0.5, -0.4, 0.1])[place]
    return (
        12.0 * ctr
        + 0.4 * np.log1p(bid)
        + 0.5 * np.sin(hour / 24.0 * 2 * np.pi)
        - 0.3 * age
        + 300.0 * tiny
        + place_effect
    )


def f32_neighbours(t: float, exact_is_representable_probe: bool) -> list[float]:
    """f32 values on and around a threshold t (a double)."""
    f = np.float32(t)
    down = np.nextafter(f, np.float32(-np.inf))
    up = np.nextafter(f, np.float32(np.inf))
    if float(f) == t and exact_is_representable_probe:
        return [float(down), float(f), float(up)]
    if float(f) > t:
        return [float(down), float(f)]
    return [float(f), float(up)]


def lightgbm_thresholds(path: pathlib.Path) -> list[tuple[int, float]]:
    """(feature, threshold) of every numerical split in a LightGBM text model."""
    out = []
    tree: dict[str, str] = {}

    def flush():
        if "split_feature" in tree:
            feats = [int(v) for v in tree["split_feature"].split()]
            thr = [float(v) for v in tree["threshold"].split()]
            dts = [int(v) for v in tree["decision_type"].split()]
            out.extend((f, t) for f, t, d in zip(feats, thr, dts) if not d & 1)

    for line in path.read_text().splitlines():
        if line.startswith("Tree=") or line == "end of trees":
            flush()
            tree = {}
        elif "=" in line:
            k, v = line.split("=", 1)
            tree[k] = v
    return out


def xgboost_thresholds(path: pathlib.Path) -> list[tuple[int, float]]:
    model = json.loads(path.read_text())
    out = []
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for left, feat, cond in zip(
            tree["left_children"], tree["split_indices"], tree["split_conditions"]
        ):
            if left != -1:
                out.append((feat, float(np.float32(cond))))
    return out


def probe_rows(
    rng: np.random.Generator,
    base: np.ndarray,
    splits: list[tuple[int, float]],
    count: int,
    exact_probe: bool,
) -> np.ndarray:
    """Rows that put one feature on and next to a split threshold, others from `base`."""
    unique = sorted(set(splits))
    picks = rng.choice(len(unique), size=min(count, len(unique)), replace=False)
    rows = []
    for i in picks:
        feature, t = unique[i]
        for v in f32_neighbours(t, exact_probe):
            row = base[rng.integers(len(base))].copy()
            row[feature] = v
            rows.append(row)
    return np.array(rows, dtype=np.float32)


def edge_rows(base: np.ndarray, with_infinities: bool) -> np.ndarray:
    """Missing values, signed zeros, values near kZeroThreshold, category codes out of range."""
    specials = [np.nan, 0.0, -0.0, 1e-36, -1e-36, K_ZERO, -K_ZERO, 2e-35, -2e-35, 1e-30]
    if with_infinities:
        specials += [np.inf, -np.inf]
    rows = []
    for j in range(len(FEATURES)):
        for k, v in enumerate(specials):
            row = base[(j * 31 + k) % len(base)].copy()
            row[j] = v
            rows.append(row)
    cat = FEATURES.index(CATEGORICAL)
    for k, v in enumerate([-1.0, -0.5, 0.5, 2.5, 9.0, 9.99, 10.0, 12.0, 31.0, 32.0, 40.0, 1e9]):
        row = base[(k * 17) % len(base)].copy()
        row[cat] = v
        rows.append(row)
    all_missing = np.full(len(FEATURES), np.nan, dtype=np.float32)
    all_zero = np.zeros(len(FEATURES), dtype=np.float32)
    rows += [all_missing, all_zero]
    return np.array(rows, dtype=np.float32)


def write_inputs(path: pathlib.Path, x: np.ndarray) -> None:
    lines = [",".join(FEATURES)]
    for row in x:
        # str(np.float32) is the shortest text that reads back as the same f32.
        lines.append(",".join("" if math.isnan(v) else str(np.float32(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")


def write_expected(path: pathlib.Path, predictions: np.ndarray) -> None:
    lines = ["prediction"] + [repr(float(p)) for p in predictions]
    path.write_text("\n".join(lines) + "\n")


def lightgbm_fixtures(rng: np.random.Generator, versions: list[str]) -> None:
    x = draw(rng, 3000)
    s = signal(x)
    y_bin = (rng.random(len(s)) < 1.0 / (1.0 + np.exp(-(s - 1.2)))).astype(np.float64)
    y_reg = s + rng.normal(0.0, 0.3, len(s))
    common = {"verbose": -1, "seed": 7, "deterministic": True, "num_threads": 1}
    models = {
        # Categorical placement, NaN-aware features (missing_type NaN) and features never
        # missing in training (missing_type None: NaN is read as 0.0).
        "lightgbm_binary": (
            {**common, "objective": "binary", "num_leaves": 10, "learning_rate": 0.15,
             "min_data_in_leaf": 25, "cat_smooth": 5.0, "max_cat_to_onehot": 4},
            y_bin, [CATEGORICAL], 30,
        ),
        # zero_as_missing: missing_type Zero, where NaN and |x| <= 1e-35 take the default branch.
        "lightgbm_regression": (
            {**common, "objective": "regression", "num_leaves": 10, "learning_rate": 0.1,
             "min_data_in_leaf": 25, "zero_as_missing": True},
            y_reg, [], 30,
        ),
        # Random forest mode: the file says average_output.
        "lightgbm_rf": (
            {**common, "objective": "regression", "boosting": "rf", "num_leaves": 8,
             "bagging_fraction": 0.7, "bagging_freq": 1, "feature_fraction": 0.8,
             "min_data_in_leaf": 25},
            y_reg, [], 20,
        ),
    }
    files = {}
    for name, (params, y, cats, rounds) in models.items():
        data = lgb.Dataset(x, y, feature_name=FEATURES, categorical_feature=cats or "auto",
                           free_raw_data=False)
        booster = lgb.train(params, data, num_boost_round=rounds)
        path = OUT / f"{name}.txt"
        booster.save_model(str(path))
        files[name] = path

    splits = [s for p in files.values() for s in lightgbm_thresholds(p)]
    test = draw_test(rng, 160)
    inputs = np.vstack([
        test,
        probe_rows(rng, test, splits, 90, exact_probe=True),
        edge_rows(test, with_infinities=True),
    ])
    write_inputs(OUT / "lightgbm_input.csv", inputs)
    for name, path in files.items():
        loaded = lgb.Booster(model_file=str(path))
        write_expected(OUT / f"{name}_expected.csv", loaded.predict(inputs))
        versions.append(f"{name}: lightgbm {lgb.__version__}, inputs lightgbm_input.csv")


def xgboost_fixtures(rng: np.random.Generator, versions: list[str]) -> None:
    x = draw(rng, 3000)
    s = signal(x)
    y_bin = (rng.random(len(s)) < 1.0 / (1.0 + np.exp(-(s - 1.2)))).astype(np.float64)
    y_reg = s + rng.normal(0.0, 0.3, len(s))
    models = {
        # base_score is estimated from the labels (a probability, stored as "[…E-1]").
        "xgboost_binary": ({"objective": "binary:logistic", "max_depth": 4, "eta": 0.2}, y_bin, 25),
        "xgboost_regression": ({"objective": "reg:squarederror", "max_depth": 4, "eta": 0.15},
                               y_reg, 20),
    }
    files = {}
    for name, (params, y, rounds) in models.items():
        dtrain = xgb.DMatrix(x, y, feature_names=FEATURES, missing=np.nan)
        booster = xgb.train({**params, "seed": 7, "nthread": 1}, dtrain, num_boost_round=rounds)
        path = OUT / f"{name}.json"
        booster.save_model(str(path))
        files[name] = path

    splits = [s for p in files.values() for s in xgboost_thresholds(p)]
    test = draw_test(rng, 160)
    inputs = np.vstack([
        test,
        probe_rows(rng, test, splits, 90, exact_probe=True),
        edge_rows(test, with_infinities=False),
    ])
    write_inputs(OUT / "xgboost_input.csv", inputs)
    for name, path in files.items():
        loaded = xgb.Booster(model_file=str(path))
        dtest = xgb.DMatrix(inputs, feature_names=FEATURES, missing=np.nan)
        write_expected(OUT / f"{name}_expected.csv", loaded.predict(dtest))
        versions.append(f"{name}: xgboost {xgb.__version__}, inputs xgboost_input.csv")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    versions: list[str] = []
    lightgbm_fixtures(np.random.default_rng(20240601), versions)
    xgboost_fixtures(np.random.default_rng(20240602), versions)
    (OUT / "MANIFEST.txt").write_text(
        "Generated by scripts/make_model_fixtures.py; do not edit by hand.\n"
        + "\n".join(versions) + "\n"
    )
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")


if __name__ == "__main__":
    main()
