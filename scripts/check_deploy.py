#!/usr/bin/env python3
"""Static checks of the deployment files (deploy/): no Docker, no cluster, no network.

    python3 scripts/check_deploy.py

Parses every YAML document of deploy/k8s/*.yaml and deploy/docker-compose.yml, and the fleet
config deploy/podium.toml (and its copy in deploy/k8s/configmap.yaml), then checks that:

- every Kubernetes document has apiVersion and kind, and kustomization.yaml lists files that exist;
- the Deployment has a readinessProbe on /readyz and a livenessProbe on /healthz (port 8080), a
  preStop hook, a non-root read-only container with the data directory on an emptyDir, and the
  admin token from a Secret;
- the HPA scales that Deployment, and the PDB's and Services' selectors match its pod labels;
- the compose file has three podium servers sharing one redis and one nats, and the load
  balancer's config names all three;
- podium.toml parses (tomllib) and has [fleet] redis, nats and object_store, and its top-level
  keys are `podium serve` options (read from crates/podium-cli/src/serve.rs).

Exits non-zero naming the first failures; prints "deploy manifests: N checks passed" otherwise.
Needs PyYAML (pip install pyyaml) and Python 3.11+ (tomllib) or tomli.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("check_deploy: PyYAML is missing: python3 -m pip install pyyaml")
try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        sys.exit("check_deploy: needs Python 3.11+ (tomllib) or: python3 -m pip install tomli")

# Options the config format knows that `podium serve` may not have as flags yet.
EXTRA_SERVE_KEYS = {"admin_listen", "frequency_store"}
FLEET_KEYS = ("redis", "nats", "object_store")


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_yaml_docs(c: Checks, path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        c.check(False, f"{rel(path)}: not valid YAML: {e}")
        return []
    c.check(bool(docs), f"{rel(path)}: holds no YAML document")
    for i, d in enumerate(docs):
        c.check(isinstance(d, dict), f"{rel(path)}: document {i + 1} is not a mapping")
    return [d for d in docs if isinstance(d, dict)]


def get(d: dict, *keys, default=None):
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and k < len(d):
            d = d[k]
        else:
            return default
    return d


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """Whether a matchLabels-style selector (or a Service's plain map) selects `labels`."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def serve_options() -> set[str] | None:
    """Field names of `ServeArgs` in crates/podium-cli/src/serve.rs (its long options)."""
    src = ROOT / "crates" / "podium-cli" / "src" / "serve.rs"
    if not src.is_file():
        return None
    text = src.read_text()
    m = re.search(r"pub struct ServeArgs \{(.*?)\n\}", text, re.S)
    if not m:
        return None
    return set(re.findall(r"^\s+(?:pub(?:\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*):", m.group(1), re.M))


def check_podium_toml(c: Checks, text: str, where: str, options: set[str] | None) -> dict:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        c.check(False, f"{where}: not valid TOML: {e}")
        return {}
    c.check(True, f"{where}: parses")
    fleet = cfg.get("fleet")
    if c.check(isinstance(fleet, dict), f"{where}: has no [fleet] table"):
        for key in FLEET_KEYS:
            c.check(
                isinstance(fleet.get(key), str) and fleet[key] != "",
                f"{where}: [fleet] has no {key} (a URL string)",
            )
        c.check(str(fleet.get("redis", "")).startswith("redis"), f"{where}: [fleet] redis is not a redis:// URL")
        c.check(str(fleet.get("nats", "")).startswith("nats://"), f"{where}: [fleet] nats is not a nats:// URL")
        c.check(
            re.match(r"^(s3|gs|az|file)://", str(fleet.get("object_store", ""))) is not None,
            f"{where}: [fleet] object_store is not an object-store URL (s3://…)",
        )
        unknown = set(fleet) - set(FLEET_KEYS)
        c.check(not unknown, f"{where}: [fleet] has unknown keys {sorted(unknown)}")
    for key in ("listen", "admin_listen"):
        c.check(isinstance(cfg.get(key), str), f"{where}: no {key}")
    c.check(
        str(cfg.get("listen", "")).endswith(":8080") and str(cfg.get("admin_listen", "")).endswith(":9090"),
        f"{where}: listen must be on 8080 and admin_listen on 9090 (the ports the manifests use)",
    )
    c.check(cfg.get("listen") != cfg.get("admin_listen"), f"{where}: admin_listen must differ from listen")
    c.check(cfg.get("workload") in ("demo", "standard"), f"{where}: workload must be demo or standard")
    c.check("admin_token" not in cfg, f"{where}: admin_token must come from env PODIUM_ADMIN_TOKEN, not the file")
    c.check("config" not in cfg, f"{where}: `config` cannot be set inside the config file")
    if options is not None:
        top = {k for k, v in cfg.items() if not isinstance(v, dict)}
        unknown = top - options - EXTRA_SERVE_KEYS
        c.check(not unknown, f"{where}: keys that are not `podium serve` options: {sorted(unknown)}")
        tables = {k for k, v in cfg.items() if isinstance(v, dict)} - {"fleet"}
        c.check(not tables, f"{where}: unknown tables {sorted(tables)}")
    return cfg


def check_k8s(c: Checks, options: set[str] | None) -> None:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    c.check(bool(files), "deploy/k8s holds no YAML files")
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    for path in files:
        for d in load_yaml_docs(c, path):
            c.check(bool(d.get("apiVersion")), f"{rel(path)}: a document has no apiVersion")
            c.check(bool(d.get("kind")), f"{rel(path)}: a document has no kind")
            if d.get("kind") != "Kustomization":
                c.check(bool(get(d, "metadata", "name")), f"{rel(path)}: a {d.get('kind')} has no metadata.name")
            by_kind.setdefault(str(d.get("kind")), []).append((path, d))

    # kustomization.yaml: lists files that exist, and every manifest but the example Secret.
    kust = by_kind.get("Kustomization", [])
    if c.check(len(kust) == 1, "deploy/k8s: expected one kustomization.yaml"):
        resources = kust[0][1].get("resources") or []
        for r in resources:
            c.check((K8S / r).is_file(), f"kustomization.yaml: resource {r} does not exist")
        for path in files:
            if path.name in ("kustomization.yaml", "secret.example.yaml"):
                continue
            c.check(path.name in resources, f"kustomization.yaml: does not list {path.name}")
        c.check("secret.example.yaml" not in resources, "kustomization.yaml: must not apply the example Secret")

    deployments = by_kind.get("Deployment", [])
    if not c.check(len(deployments) == 1, "deploy/k8s: expected exactly one Deployment"):
        return
    _, dep = deployments[0]
    dep_name = get(dep, "metadata", "name")
    pod_labels = get(dep, "spec", "template", "metadata", "labels", default={}) or {}
    c.check(
        selector_matches(get(dep, "spec", "selector", "matchLabels"), pod_labels),
        "Deployment: spec.selector does not match its pod template's labels",
    )
    pod = get(dep, "spec", "template", "spec", default={}) or {}
    containers = pod.get("containers") or []
    c.check(len(containers) == 1, "Deployment: expected one container")
    ctr = containers[0] if containers else {}
    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports") or []}
    c.check(ports.get("http") == 8080, "Deployment: container port `http` must be 8080")
    c.check(ports.get("admin") == 9090, "Deployment: container port `admin` must be 9090")

    def probe_port_ok(port) -> bool:
        return port == 8080 or (isinstance(port, str) and ports.get(port) == 8080)

    ready = get(ctr, "readinessProbe", "httpGet", default={}) or {}
    c.check(ready.get("path") == "/readyz", "Deployment: readinessProbe must be httpGet /readyz")
    c.check(probe_port_ok(ready.get("port")), "Deployment: readinessProbe must use port 8080")
    live = get(ctr, "livenessProbe", "httpGet", default={}) or {}
    c.check(live.get("path") == "/healthz", "Deployment: livenessProbe must be httpGet /healthz")
    c.check(probe_port_ok(live.get("port")), "Deployment: livenessProbe must use port 8080")
    c.check(bool(get(ctr, "lifecycle", "preStop")), "Deployment: no preStop hook (drain before SIGTERM)")
    grace = pod.get("terminationGracePeriodSeconds")
    c.check(isinstance(grace, int) and grace >= 15, "Deployment: terminationGracePeriodSeconds must be ≥ 15")
    res = ctr.get("resources") or {}
    c.check(bool(get(res, "requests", "cpu")), "Deployment: no CPU request (the HPA needs it)")
    c.check(bool(get(res, "limits", "memory")), "Deployment: no memory limit")

    sc = ctr.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    c.check(
        sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True,
        "Deployment: runAsNonRoot is not set",
    )
    c.check(sc.get("readOnlyRootFilesystem") is True, "Deployment: the root filesystem is not read-only")
    c.check(sc.get("allowPrivilegeEscalation") is False, "Deployment: allowPrivilegeEscalation is not false")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = {m.get("mountPath"): m.get("name") for m in ctr.get("volumeMounts") or []}
    data = volumes.get(mounts.get("/var/lib/podium"), {})
    c.check("emptyDir" in data, "Deployment: /var/lib/podium (data_dir) must be an emptyDir")
    conf = volumes.get(mounts.get("/etc/podium"), {})
    cm_name = get(conf, "configMap", "name")
    c.check(bool(cm_name), "Deployment: /etc/podium must be a ConfigMap volume")
    args = ctr.get("args") or []
    c.check(
        "--config" in args and "/etc/podium/podium.toml" in args,
        "Deployment: must run `serve --config /etc/podium/podium.toml`",
    )
    env = {e.get("name"): e for e in ctr.get("env") or []}
    token_ref = get(env.get("PODIUM_ADMIN_TOKEN", {}), "valueFrom", "secretKeyRef", default={}) or {}
    c.check(bool(token_ref.get("name")), "Deployment: PODIUM_ADMIN_TOKEN must come from a Secret")

    # The ConfigMap the Deployment mounts, with a podium.toml like deploy/podium.toml.
    cms = {get(d, "metadata", "name"): d for _, d in by_kind.get("ConfigMap", [])}
    if c.check(cm_name in cms, f"deploy/k8s: no ConfigMap {cm_name!r} (the Deployment mounts it)"):
        text = get(cms[cm_name], "data", "podium.toml")
        if c.check(isinstance(text, str), f"ConfigMap {cm_name}: no data.podium.toml"):
            check_podium_toml(c, text, f"ConfigMap {cm_name} podium.toml", options)

    # The example Secret names the key the Deployment reads.
    secrets = {get(d, "metadata", "name"): d for _, d in by_kind.get("Secret", [])}
    if token_ref.get("name") in secrets:
        s = secrets[token_ref["name"]]
        keys = set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
        c.check(token_ref.get("key") in keys, "secret.example.yaml: lacks the admin token key the Deployment reads")

    # HPA → the Deployment.
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if c.check(len(hpas) == 1, "deploy/k8s: expected one HorizontalPodAutoscaler"):
        path, hpa = hpas[0]
        c.check(hpa.get("apiVersion") == "autoscaling/v2", "HPA: apiVersion must be autoscaling/v2")
        ref = get(hpa, "spec", "scaleTargetRef", default={}) or {}
        c.check(
            ref.get("kind") == "Deployment" and ref.get("name") == dep_name,
            f"HPA: scaleTargetRef must be Deployment {dep_name}",
        )
        lo, hi = get(hpa, "spec", "minReplicas"), get(hpa, "spec", "maxReplicas")
        c.check(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, "HPA: bad min/maxReplicas")
        cpu = [
            m for m in get(hpa, "spec", "metrics", default=[]) or []
            if get(m, "resource", "name") == "cpu"
        ]
        c.check(bool(cpu), "HPA: no CPU utilization metric")
        c.check(bool(get(hpa, "spec", "behavior", "scaleUp", "policies")), "HPA: no scaleUp behavior")

    # PDB → the Deployment's pods.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if c.check(len(pdbs) == 1, "deploy/k8s: expected one PodDisruptionBudget"):
        _, pdb = pdbs[0]
        c.check(
            selector_matches(get(pdb, "spec", "selector", "matchLabels"), pod_labels),
            "PDB: selector does not match the Deployment's pod labels",
        )
        spec = pdb.get("spec") or {}
        c.check(
            ("minAvailable" in spec) != ("maxUnavailable" in spec),
            "PDB: set exactly one of minAvailable and maxUnavailable",
        )

    # Services: decision 80 → 8080 (exposed), admin 9090 ClusterIP only.
    services = {get(d, "metadata", "name"): d for _, d in by_kind.get("Service", [])}
    for name, svc in services.items():
        c.check(
            selector_matches(get(svc, "spec", "selector"), pod_labels),
            f"Service {name}: selector does not match the Deployment's pod labels",
        )

    def port_targets(svc: dict) -> list[tuple[int, int | None]]:
        out = []
        for p in get(svc, "spec", "ports", default=[]) or []:
            t = p.get("targetPort")
            out.append((p.get("port"), ports.get(t) if isinstance(t, str) else t))
        return out

    decision = [s for s in services.values() if (80, 8080) in port_targets(s)]
    c.check(len(decision) == 1, "deploy/k8s: expected one Service mapping port 80 to 8080")
    admin = services.get("podium-admin")
    if c.check(admin is not None, "deploy/k8s: no Service podium-admin"):
        c.check(get(admin, "spec", "type", default="ClusterIP") == "ClusterIP", "Service podium-admin must be ClusterIP")
        c.check(port_targets(admin) == [(9090, 9090)], "Service podium-admin must map 9090 to 9090 only")
    for name, svc in services.items():
        if name != "podium-admin":
            c.check(
                all(t != 9090 for _, t in port_targets(svc)),
                f"Service {name}: exposes the admin port 9090",
            )


def check_compose(c: Checks) -> None:
    path = DEPLOY / "docker-compose.yml"
    if not c.check(path.is_file(), "deploy/docker-compose.yml is missing"):
        return
    docs = load_yaml_docs(c, path)
    if not docs:
        return
    services = docs[0].get("services") or {}

    def image(svc: dict) -> str:
        return str(svc.get("image", ""))

    redis = [n for n, s in services.items() if image(s).split(":")[0].endswith("redis")]
    nats = [n for n, s in services.items() if image(s).split(":")[0].endswith("nats")]
    c.check(len(redis) == 1, f"compose: expected one redis service, found {redis}")
    c.check(len(nats) == 1, f"compose: expected one nats service, found {nats}")
    podiums = {
        n: s for n, s in services.items()
        if get(s, "build", "dockerfile") == "deploy/Dockerfile" or image(s).split(":")[0] == "podium"
    }
    c.check(
        sorted(podiums) == ["podium-1", "podium-2", "podium-3"],
        f"compose: expected podium servers podium-1..3, found {sorted(podiums)}",
    )
    for name, svc in podiums.items():
        deps = svc.get("depends_on") or {}
        deps = set(deps) if isinstance(deps, (dict, list)) else set()
        for shared in redis + nats:
            c.check(shared in deps, f"compose: {name} does not depend on {shared}")
        mounts = [str(v) for v in svc.get("volumes") or []]
        c.check(
            any(m.startswith("./podium.toml:/etc/podium/podium.toml") for m in mounts),
            f"compose: {name} does not mount ./podium.toml at /etc/podium/podium.toml",
        )
        env = svc.get("environment") or []
        names = {e.split("=", 1)[0] for e in env} if isinstance(env, list) else set(env)
        c.check("PODIUM_ADMIN_TOKEN" in names, f"compose: {name} does not pass PODIUM_ADMIN_TOKEN")
        c.check("AWS_ENDPOINT_URL" in names, f"compose: {name} has no AWS_ENDPOINT_URL (MinIO)")
        c.check(bool(svc.get("healthcheck")), f"compose: {name} has no healthcheck")
        c.check(
            not any(str(p).split(":")[-2:-1] == ["8080"] for p in svc.get("ports") or []),
            f"compose: {name} publishes its decision port; traffic goes through the load balancer",
        )
    lbs = [n for n, s in services.items() if image(s).split(":")[0] in ("nginx", "haproxy")]
    if c.check(len(lbs) == 1, "compose: expected one nginx (or haproxy) load balancer"):
        lb = services[lbs[0]]
        c.check(
            any(str(p).startswith("8080:") or str(p).endswith(":8080:8080") for p in lb.get("ports") or []),
            "compose: the load balancer must publish host port 8080",
        )
        deps = set(lb.get("depends_on") or {})
        c.check(set(podiums) <= deps, "compose: the load balancer must depend on every podium server")
    conf = DEPLOY / "nginx.conf"
    if c.check(conf.is_file(), "deploy/nginx.conf is missing"):
        text = conf.read_text()
        for name in sorted(podiums):
            c.check(f"server {name}:8080" in text, f"nginx.conf: upstream does not name {name}:8080")
        c.check(":9090" not in text, "nginx.conf: must not proxy the admin port 9090")
    c.check(
        any("minio" in image(s) and "mc" in image(s).split("/")[-1].split(":")[0] for s in services.values()),
        "compose: no one-shot MinIO client creating the bucket",
    )


def check_image(c: Checks) -> None:
    df = DEPLOY / "Dockerfile"
    if c.check(df.is_file(), "deploy/Dockerfile is missing"):
        text = df.read_text()
        c.check("FROM rust:" in text and "FROM debian:bookworm-slim" in text, "Dockerfile: expected rust build and bookworm-slim runtime stages")
        c.check('ENTRYPOINT ["podium"]' in text, 'Dockerfile: ENTRYPOINT must be ["podium"]')
        c.check('CMD ["serve", "--config", "/etc/podium/podium.toml"]' in text, "Dockerfile: CMD must serve --config /etc/podium/podium.toml")
        c.check(re.search(r"^USER (?!root|0\b)", text, re.M) is not None, "Dockerfile: must run as a non-root USER")
    ignore = ROOT / ".dockerignore"
    if c.check(ignore.is_file(), ".dockerignore is missing"):
        lines = {l.strip().strip("/") for l in ignore.read_text().splitlines()}
        for entry in ("target", ".git"):
            c.check(entry in lines, f".dockerignore: does not exclude {entry}")


def main() -> int:
    c = Checks()
    options = serve_options()
    c.check(options is not None and "listen" in options, "could not read `podium serve`'s options from serve.rs")
    toml_path = DEPLOY / "podium.toml"
    if c.check(toml_path.is_file(), "deploy/podium.toml is missing"):
        check_podium_toml(c, toml_path.read_text(), "deploy/podium.toml", options)
    check_k8s(c, options)
    check_compose(c)
    check_image(c)
    if c.failures:
        for f in c.failures:
            print(f"FAIL: {f}", file=sys.stderr)
        print(f"deploy manifests: {len(c.failures)} checks failed, {c.passed} passed", file=sys.stderr)
        return 1
    print(f"deploy manifests: {c.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
