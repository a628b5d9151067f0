#!/usr/bin/env python3
"""Per-row model cost: Podium's runtimes against the training libraries' own, in one run.

Trains (deterministically) the two model shapes of the standard workload and times them at
batch 1 and batch 100 on ONE thread each:

  * GBDT: LightGBM binary classifier, 300 trees, 31 leaves, 20 features (with missing values).
    References: LightGBM's own Booster.predict (num_threads=1) and lleaves (compiled trees,
    one thread) when it is installed.
  * MLP: scikit-learn MLPClassifier 64 -> 256 -> 128 -> 2 (~49k multiply-adds per row), exported
    with skl2onnx. Reference: onnxruntime (intra_op_num_threads=1).

Podium is timed with `podium model bench` (release build, one thread) on bundles made by
`podium model package`, whose golden rows also prove parity to 1e-5 on the benchmark rows.

Every engine is timed the same way, interleaved: REPEATS passes, each timing every engine in
turn for about 0.3 s, and each figure is the median of its passes. (Timing each engine in one
stretch let a neighbour's burst of work on a shared machine land on one engine only, and compared
a median of short rounds for the references with one long mean for Podium.)

Usage (from the repository root):
    cargo build --release
    pip install lightgbm scikit-learn skl2onnx onnxruntime lleaves "llvmlite<0.44"   # lleaves 1.3 needs the old pass manager
    python3 scripts/bench_models.py [--out target/bench-models] [--only gbdt|mlp]
Prints a Markdown table of µs per row and the ratios, and writes results.json beside the models.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROWS_TRAIN = 20_000
ROWS_BENCH = 2_000
REPEATS = 7
PASS_SECONDS = 0.3


def per_row_us(fn, batch, x, seconds=PASS_SECONDS):
    """Median-of-rounds µs per row of fn over consecutive batches of x, for about `seconds`."""
    n = (len(x) // batch) * batch
    batches = [x[i:i + batch] for i in range(0, n, batch)]
    for b in batches[:20]:
        fn(b)
    rounds = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds) < 3:
        t = time.perf_counter()
        done = 0
        for b in batches:
            fn(b)
            done += len(b)
            if done >= 2000:
                break
        rounds.append((time.perf_counter() - t) * 1e6 / done)
    return float(np.median(rounds))


def interleaved(timers):
    """Median over REPEATS passes of each timer, the timers taking turns within each pass."""
    passes = {name: [] for name in timers}
    for _ in range(REPEATS):
        for name, timer in timers.items():
            passes[name].append(timer())
    return {name: float(np.median(v)) for name, v in passes.items()}


def podium(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"podium {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def write_csv(path, names, x, pred=None):
    with open(path, "w") as f:
        f.write(",".join(names + (["prediction"] if pred is not None else [])) + "\n")
        for i, row in enumerate(x):
            cells = ["" if np.isnan(v) else repr(float(v)) for v in row]
            if pred is not None:
                cells.append(repr(float(pred[i])))
            f.write(",".join(cells) + "\n")


def podium_bench(binary, bundle, rows_csv, batch):
    out = podium(binary, "model", "bench", bundle, "--input", rows_csv, "--batch", str(batch), "--seconds",
                 str(PASS_SECONDS))
    return json.loads(out.strip().splitlines()[-1])["us_per_row"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/bench-models")
    ap.add_argument("--podium", default=os.environ.get("PODIUM_BIN", "target/release/podium"))
    ap.add_argument("--only", choices=["gbdt", "mlp"], help="run one section only")
    args = ap.parse_args()
    if not os.path.exists(args.podium):
        sys.exit(f"{args.podium} not found: run `cargo build --release` first (or set PODIUM_BIN)")
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    rng = np.random.default_rng(7)
    results = {}

    # The GBDT data is drawn even when that section is skipped, so the MLP's does not depend on
    # --only.
    d = 20
    x = rng.normal(size=(ROWS_TRAIN + ROWS_BENCH, d)).astype(np.float32)
    logit = x[:, 0] * 1.5 - x[:, 1] + np.sin(x[:, 2] * 2) + x[:, 3] * x[:, 4] - 0.5
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)
    x[rng.random(x.shape) < 0.05] = np.nan
    if args.only in (None, "gbdt"):
        bench_gbdt(args, x, y, d, results)
    if args.only in (None, "mlp"):
        bench_mlp(args, rng, results)

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("| model, batch | reference µs/row | Podium µs/row | Podium speed-up |")
    print("|---|---|---:|---:|")
    for key, r in results.items():
        refs = {k: v for k, v in r.items() if k != "podium"}
        for name, v in refs.items():
            print(f"| {key} | {name} {v:.3f} | {r['podium']:.3f} | {v / r['podium']:.1f}× |")


def bench_gbdt(args, x, y, d, results):
    # --- GBDT -------------------------------------------------------------------------------
    import lightgbm as lgb

    names = [f"f{i}" for i in range(d)]
    xb = x[ROWS_TRAIN:]
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "verbose": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(x[:ROWS_TRAIN], y[:ROWS_TRAIN], feature_name=names),
        num_boost_round=300,
    )
    model_txt = os.path.join(args.out, "lgb300.txt")
    booster.save_model(model_txt)
    pred = booster.predict(xb, num_threads=1)
    rows_csv = os.path.join(args.out, "gbdt_rows.csv")
    write_csv(rows_csv, names, xb)
    golden_csv = os.path.join(args.out, "gbdt_golden.csv")
    write_csv(golden_csv, names, xb[:500], pred[:500])
    bundle = os.path.join(args.out, "gbdt-bundle")
    podium(args.podium, "model", "package", "--kind", "lightgbm", "--weights", model_txt, "--name", "gbdt300",
           "--version", "1", "--golden", golden_csv, "--out", bundle)
    lleaves_model = None
    try:
        import lleaves

        compiled = lleaves.Model(model_file=model_txt)
        compiled.compile(cache=os.path.join(args.out, "lleaves.so"))
        lleaves_model = compiled
    except Exception as e:  # lleaves is optional
        print(f"lleaves unavailable: {e}", file=sys.stderr)
    for batch in (1, 100):
        timers = {
            "lightgbm": lambda: per_row_us(lambda b: booster.predict(b, num_threads=1), batch, xb),
            "podium": lambda: podium_bench(args.podium, bundle, rows_csv, batch),
        }
        if lleaves_model is not None:
            timers["lleaves"] = lambda: per_row_us(lambda b: lleaves_model.predict(b, n_jobs=1), batch, xb)
        results[f"gbdt300_batch{batch}"] = interleaved(timers)


def bench_mlp(args, rng, results):
    # --- MLP (ONNX) -------------------------------------------------------------------------
    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from sklearn.neural_network import MLPClassifier

        dm = 64
        xm = rng.normal(size=(4_000 + ROWS_BENCH, dm)).astype(np.float32)
        ym = (xm[:, :8].sum(axis=1) + rng.normal(size=len(xm)) > 0).astype(int)
        mlp = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=20, random_state=0).fit(xm[:4_000], ym[:4_000])
        onx = to_onnx(mlp, xm[:1], options={id(mlp): {"zipmap": False}}, target_opset=15)
        onnx_path = os.path.join(args.out, "mlp.onnx")
        with open(onnx_path, "wb") as f:
            f.write(onx.SerializeToString())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name
        xmb = xm[4_000:]
        prob = sess.run(["probabilities"], {inp: xmb})[0][:, 1]
        mnames = [f"m{i}" for i in range(dm)]
        mrows = os.path.join(args.out, "mlp_rows.csv")
        write_csv(mrows, mnames, xmb)
        mgolden = os.path.join(args.out, "mlp_golden.csv")
        write_csv(mgolden, mnames, xmb[:500], prob[:500])
        mbundle = os.path.join(args.out, "mlp-bundle")
        podium(args.podium, "model", "package", "--kind", "onnx", "--weights", onnx_path, "--name", "mlp",
               "--version", "1", "--features", ",".join(mnames), "--output", "probabilities:1",
               "--golden", mgolden, "--out", mbundle)
        for batch in (1, 100):
            results[f"mlp49k_batch{batch}"] = interleaved({
                "onnxruntime": lambda: per_row_us(lambda b: sess.run(["probabilities"], {inp: b}), batch, xmb),
                "podium": lambda: podium_bench(args.podium, mbundle, mrows, batch),
            })
    except Exception as e:
        print(f"MLP benchmark skipped: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
