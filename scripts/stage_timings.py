#!/usr/bin/env python3
"""Per-stage timings of the decision pipeline, as the server itself reports them.

Sends N sequential requests (one keep-alive connection, varied viewers, devices, genres and
break shapes) to a running `podium serve` and prints the median, P99 and max of each stage of
`timings_us`, plus the client-observed round trip. Usage:

    cargo run --release -- serve --data-dir /tmp/podium-bench &
    python3 scripts/stage_timings.py --url http://127.0.0.1:8080 --requests 5000

    cargo run --release -- serve --workload standard &
    python3 scripts/stage_timings.py --workload standard --requests 5000

`--workload standard` draws viewers, countries and genres as the standard workload's traffic
does (`podium_sim::traffic::TrafficConfig::standard`: 1,000,000 viewers, 43 % US and the rest
spread over its 20 countries, its 16 genres), so that eligibility is the standard ~1,000.
"""
import argparse
import http.client
import json
import random
import time
import urllib.parse

# The standard world's vocabulary (crates/podium-sim/src/standard.rs: COUNTRIES, GENRES).
STANDARD_COUNTRIES = ["US", "CA", "GB", "DE", "FR", "BR", "MX", "JP", "AU", "IN", "ES", "IT", "NL", "SE", "KR",
                      "AR", "CO", "PL", "ZA", "NZ"]
STANDARD_GENRES = ["drama", "comedy", "sports", "news", "kids", "documentary", "reality", "action", "thriller",
                   "romance", "horror", "animation", "music", "food", "travel", "scifi"]

STAGES = ["admit_us", "hydrate_us", "retrieve_us", "rank_us", "score_us", "value_us", "pod_us", "total_us"]


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workload", choices=["demo", "standard"], default="demo")
    args = ap.parse_args()
    standard = args.workload == "standard"
    rng = random.Random(args.seed)
    u = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    stages = {s: [] for s in STAGES}
    rtt, eligible, ads = [], [], []
    for i in range(args.requests):
        if standard:
            user = f"u-{rng.randrange(1_000_000)}"
            country = "US" if rng.random() < 0.4 else rng.choice(STANDARD_COUNTRIES)
            genre = rng.choice(STANDARD_GENRES)
        else:
            user = f"u-{rng.randrange(10000)}"
            country = rng.choice(["US", "CA", "GB", "DE", "FR"])
            genre = None
        body = {
            "request_id": f"r-{i}",
            "user": {"id": user, "country": country,
                     "device": rng.choice(["tv", "tv", "mobile", "tablet", "desktop"])},
            "content": {"id": f"t-{rng.randrange(500)}",
                        "genre": genre or rng.choice(["drama", "comedy", "sports", "news", "kids"]),
                        "live": rng.random() < 0.1},
            "breaks": [{"id": f"b{j}", "max_ads": rng.randint(1, 6), "max_duration_s": rng.choice([15, 30, 60, 90, 120])}
                       for j in range(rng.randint(1, 2))],
        }
        t0 = time.perf_counter()
        conn.request("POST", "/v1/decide", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        rtt.append((time.perf_counter() - t0) * 1e6)
        if resp.status != 200:
            raise SystemExit(f"request {i}: HTTP {resp.status}: {data[:200]!r}")
        d = json.loads(data)
        for s in STAGES:
            stages[s].append(d["timings_us"][s])
        eligible.append(d["eligible"])
        ads.append(sum(len(b["ads"]) for b in d["breaks"]))
    print(f"{args.requests} requests; eligible median {pct(eligible, 50)}, ads per request median {pct(ads, 50)}")
    print(f"{'stage':<14}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for s in STAGES:
        print(f"{s:<14}{pct(stages[s], 50):>10}{pct(stages[s], 99):>10}{max(stages[s]):>10}")
    print(f"{'client rtt':<14}{pct(rtt, 50):>10.0f}{pct(rtt, 99):>10.0f}{max(rtt):>10.0f}")


if __name__ == "__main__":
    main()
