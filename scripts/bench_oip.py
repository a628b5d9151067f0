#!/usr/bin/env python3
"""Open Inference Protocol throughput: Podium against MLServer, same model, same machine, same run.

Serves the 300-tree LightGBM model made by scripts/bench_models.py from Podium (as a
`serve_only` bundle) and from MLServer (mlserver-lightgbm), each pinned to core 1 with one worker,
and drives each with `podium loadgen` pinned to core 0 (open loop, latency from the scheduled send
time). For each server and batch size (1 row, 100 rows) it steps the offered rate up and reports
the highest rate held with no errors, achieved >= 98% of offered, and P99 <= 20 ms.

Usage (from the repository root, after `cargo build --release` and scripts/bench_models.py):
    pip install mlserver mlserver-lightgbm
    python3 scripts/bench_oip.py [--models target/bench-models] [--seconds 5]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.3)
    sys.exit(f"{url} never became ready")


def body(rows, width):
    data = [((r * 7 + c * 13) % 17) / 8.0 - 1.0 for r in range(rows) for c in range(width)]
    return json.dumps({"inputs": [{"name": "input-0", "shape": [rows, width], "datatype": "FP32", "data": data}]})


def loadgen(podium, url, body_path, rate, seconds):
    out = subprocess.run(
        ["taskset", "-c", "0", podium, "loadgen", "--target", url, "--body", body_path,
         "--rate", str(rate), "--duration", f"{seconds}s", "--timeout-ms", "2000"],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def capacity(podium, url, body_path, seconds, start):
    # Warm the server (connections, caches, lazy initialisation) and discard the result.
    loadgen(podium, url, body_path, start, 2)
    best, rate = None, start
    while True:
        r = loadgen(podium, url, body_path, rate, seconds)
        held = r["errors"] == 0 and r["achieved_rps"] >= 0.98 * rate and r["p99_ms"] <= 20.0
        print(f"    offered {rate:>7.0f}/s: achieved {r['achieved_rps']:>8.0f}/s, errors {r['errors']}, "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms -> {'held' if held else 'not held'}", flush=True)
        if not held:
            return best
        best = r
        rate = rate * 1.5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="target/bench-models")
    ap.add_argument("--podium", default="target/release/podium")
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    bundle = os.path.join(args.models, "gbdt-bundle")
    model_txt = os.path.join(args.models, "lgb300.txt")
    if not os.path.isdir(bundle):
        sys.exit(f"{bundle} missing: run scripts/bench_models.py first")
    work = tempfile.mkdtemp(prefix="podium-oip-")
    width = 20
    bodies = {}
    for rows in (1, 100):
        path = os.path.join(work, f"body{rows}.json")
        with open(path, "w") as f:
            f.write(body(rows, width))
        bodies[rows] = path
    results = {}

    # Podium: the demo data directory plus the 300-tree bundle, served over OIP only.
    data = os.path.join(work, "podium-data")
    os.makedirs(os.path.join(data, "models"))
    shutil.copytree(bundle, os.path.join(data, "models", "gbdt300"))
    port = free_port()
    cmd = ["taskset", "-c", "1", args.podium, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
           "--io-threads", "1", "--compute-threads", "1", "--max-in-flight", "256", "--max-queue", "4096"]
    # First start writes the demo models.toml; add the bundle and restart.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    proc.terminate(); proc.wait()
    # A top-level key must come before the tables of models.toml.
    text = open(os.path.join(data, "models.toml")).read()
    open(os.path.join(data, "models.toml"), "w").write('serve_only = ["gbdt300"]\n' + text)
    base = open(os.path.join(data, "models.toml")).read()
    for label, batching, sweeps in (("podium", "", ((1, 2000), (100, 200))),
                                    ("podium+microbatch", "\n[micro_batching]\ngbdt300 = { max_rows = 64 }\n", ((1, 2000),))):
        open(os.path.join(data, "models.toml"), "w").write(base + batching)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/models/gbdt300/ready")
            for rows, start in sweeps:
                print(f"{label}, {rows} row(s) per request:", flush=True)
                results[f"{label}_rows{rows}"] = capacity(args.podium, f"http://127.0.0.1:{port}/v2/models/gbdt300/infer",
                                                          bodies[rows], args.seconds, start)
        finally:
            proc.terminate(); proc.wait()

    # MLServer, one worker on the same core.
    ml = os.path.join(work, "mlserver")
    os.makedirs(os.path.join(ml, "gbdt300"))
    shutil.copy(model_txt, os.path.join(ml, "gbdt300", "model.txt"))
    with open(os.path.join(ml, "gbdt300", "model-settings.json"), "w") as f:
        json.dump({"name": "gbdt300", "implementation": "mlserver_lightgbm.LightGBMModel",
                   "parameters": {"uri": "./model.txt"}}, f)
    mport = free_port()
    with open(os.path.join(ml, "settings.json"), "w") as f:
        json.dump({"http_port": mport, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}, f)
    proc = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "mlserver.cli.main", "start", ml],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{mport}/v2/models/gbdt300/ready")
        for rows, start in ((1, 200), (100, 50)):
            print(f"mlserver, {rows} row(s) per request:", flush=True)
            results[f"mlserver_rows{rows}"] = capacity(args.podium, f"http://127.0.0.1:{mport}/v2/models/gbdt300/infer",
                                                       bodies[rows], args.seconds, start)
    finally:
        proc.terminate(); proc.wait()

    print("\n| server | rows/request | requests/s held (P99 <= 20 ms) | rows/s | P99 ms |")
    print("|---|---:|---:|---:|---:|")
    for key, r in results.items():
        server, rows = key.rsplit("_rows", 1)
        if r is None:
            print(f"| {server} | {rows} | below the first step | | |")
            continue
        print(f"| {server} | {rows} | {r['achieved_rps']:.0f} | {r['achieved_rps'] * int(rows):.0f} | {r['p99_ms']:.2f} |")
    for label in ("podium", "podium+microbatch"):
        for rows in ("1", "100"):
            p, m = results.get(f"{label}_rows{rows}"), results.get(f"mlserver_rows{rows}")
            if p and m:
                print(f"{label} / mlserver at {rows} row(s): {p['achieved_rps'] / m['achieved_rps']:.1f}x")


if __name__ == "__main__":
    main()
