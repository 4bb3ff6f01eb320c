#!/usr/bin/env python3
"""Renders every kustomize overlay of deploy/kubernetes, alone and with each optional component,
with the real kustomize (`kubectl kustomize`, else a `kustomize` binary), and checks every object
against the Kubernetes 1.33 OpenAPI schemas shipped by the `kubernetes-validate` package in strict
mode (unknown fields are errors), offline. The ServiceMonitor, a Prometheus Operator CRD not in
those schemas, is checked against the fields of its CRD that the manifest uses. Then checks what
the layout promises: the RBAC grants exactly what the kubernetes provider calls (Secrets only
through the role bound per tenant namespace), with a reason above every cluster-wide rule; `single` keeps SQLite on a volume claim; `production` runs three
replicas with no emptyDir, its database and Redis URLs from a Secret, a PodDisruptionBudget,
topology spread, startup/readiness/liveness probes and a grace period that fits the drain.

Usage: check.py [--print OVERLAY]   (--print writes that overlay's rendered manifests to stdout)

With CI=true a missing kustomize is a failure; elsewhere the check says so and exits 0.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.33.0"

OVERLAYS = ["single", "production"]
COMPONENTS = {
    "servicemonitor": HERE / "components" / "servicemonitor",
    "grafana-dashboards": HERE.parent / "grafana",
}

# What fleet/src/kubernetes calls, as (API group, resource, verb), with `tenant_role` set: across
# the cluster (the ClusterRole bound by the ClusterRoleBinding) and inside each tenant namespace
# (the ClusterRole it binds there). The RBAC must grant these and no more.
CLUSTER_CALLS = {
    ("", "namespaces", v) for v in ("list", "create", "delete")
} | {
    ("", "pods", v) for v in ("list", "watch")
} | {
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ("rbac.authorization.k8s.io", "clusterroles", "bind"),
}
TENANT_CALLS = {
    ("", "pods", v) for v in ("get", "create", "delete")
} | {
    ("", "secrets", v) for v in ("get", "list", "create", "delete")
} | {
    ("", "persistentvolumeclaims", v) for v in ("create", "delete")
} | {
    ("", "resourcequotas", v) for v in ("create", "patch")
} | {
    ("networking.k8s.io", "networkpolicies", v) for v in ("create", "patch")
}
LEASE_CALLS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


def kustomize_cmd():
    """The kustomize to render with: kubectl's built-in one, else a standalone binary."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(cmd, directory):
    out = subprocess.run(cmd + [str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} {directory}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with(cmd, overlay, component):
    """An overlay plus one component, through a kustomization made for the purpose."""
    with tempfile.TemporaryDirectory() as tmp:
        # kustomize refers to other kustomizations by relative path.
        rel = lambda p: os.path.relpath(p, tmp)
        (pathlib.Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [rel(HERE / "overlays" / overlay)],
                    "components": [rel(component)],
                }
            )
        )
        return render(cmd, tmp)


def granted(objects, kind, name=None):
    out = set()
    for o in objects:
        if o["kind"] != kind or (name and o["metadata"]["name"] != name):
            continue
        for rule in o.get("rules", []):
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        out.add((g, r, v))
    return out


def validate(label, objects):
    problems = []
    for o in objects:
        name = f"{label}: {o['kind']}/{o['metadata'].get('name')}"
        try:
            if o["kind"] == "ServiceMonitor":
                jsonschema.validate(o, SERVICE_MONITOR)
            else:
                kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            problems.append(f"{name}: {getattr(e, 'message', e)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema: {e}")
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shoal-grafana-dashboards":
            for key, body in o.get("data", {}).items():
                try:
                    json.loads(body)
                except ValueError as e:
                    problems.append(f"{name}: {key} is not JSON: {e}")
    return problems


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    return found[0] if len(found) == 1 else None


def pod_checks(label, workload, want_replicas):
    """What both workloads promise: replicas, probes, grace, non-root, no emptyDir."""
    problems = []
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas") != want_replicas:
        problems.append(f"{label}: {spec.get('replicas')} replicas, want {want_replicas}")
    if any("emptyDir" in v for v in pod.get("volumes", [])):
        problems.append(f"{label}: an emptyDir volume (state would be lost on restart)")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{label}: not runAsNonRoot")
    if pod.get("terminationGracePeriodSeconds", 30) < 45:
        problems.append(f"{label}: terminationGracePeriodSeconds below the 20 s drain plus stopping sandboxes")
    (c,) = [c for c in pod["containers"] if c["name"] == "shoal"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in c:
            problems.append(f"{label}: no {probe}")
    if c.get("image", "").split(":")[0] in ("", "shoal"):
        problems.append(f"{label}: the image was not set by the overlay: {c.get('image')}")
    return problems, pod, c


def from_secret(container, var):
    for e in container.get("env", []):
        if e["name"] == var:
            return "secretKeyRef" in e.get("valueFrom", {})
    return False


def promises(overlay, objects):
    label = f"overlays/{overlay}"
    problems = []
    if overlay == "single":
        sts = one(objects, "StatefulSet")
        if sts is None or one(objects, "Deployment"):
            return [f"{label}: want one StatefulSet and no Deployment"]
        p, pod, c = pod_checks(label, sts, 1)
        problems += p
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        if mounts.get("data") != "/var/lib/shoal" or "data" not in claims:
            problems.append(f"{label}: the data directory is not on the `data` volume claim")
    else:
        dep = one(objects, "Deployment")
        if dep is None:
            return [f"{label}: want one Deployment"]
        p, pod, c = pod_checks(label, dep, 3)
        problems += p
        for var in ("SHOAL_DATABASE_URL", "SHOAL_REDIS_URL", "SHOAL_ADMIN_TOKEN"):
            if not from_secret(c, var):
                problems.append(f"{label}: {var} does not come from a Secret")
        if not one(objects, "PodDisruptionBudget"):
            problems.append(f"{label}: no PodDisruptionBudget")
        keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
        if "kubernetes.io/hostname" not in keys:
            problems.append(f"{label}: replicas are not spread over nodes")
    return problems


def rbac_checks(objects):
    problems = []
    bound_cluster_wide = {
        o["roleRef"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"
    }
    if bound_cluster_wide != {"shoal-scheduler"}:
        problems.append(f"ClusterRoleBindings bind {sorted(bound_cluster_wide)}, want only shoal-scheduler")
    for name, want in (("shoal-scheduler", CLUSTER_CALLS), ("shoal-tenant", TENANT_CALLS)):
        have = granted(objects, "ClusterRole", name)
        if have != want:
            problems.append(
                f"ClusterRole {name}: grants {sorted(have - want)} beyond what Shoal calls, lacks {sorted(want - have)}"
            )
    have = granted(objects, "Role")
    if have != LEASE_CALLS:
        problems.append(f"Role: grants {sorted(have - LEASE_CALLS)} beyond what Shoal calls, lacks {sorted(LEASE_CALLS - have)}")
    # Nothing cluster-wide reaches Secrets; the scheduler may bind shoal-tenant and no other role.
    if any(r == "secrets" for _, r, _ in granted(objects, "ClusterRole", "shoal-scheduler")):
        problems.append("shoal-scheduler grants Secrets cluster-wide")
    for o in objects:
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-scheduler":
            for rule in o["rules"]:
                if "bind" in rule.get("verbs", []) and rule.get("resourceNames") != ["shoal-tenant"]:
                    problems.append("shoal-scheduler may bind roles other than shoal-tenant")
    # The scheduler binds what its configuration names.
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shoal-config")
    if 'cluster_role = "shoal-tenant"' not in config["data"]["shoal.toml"]:
        problems.append("shoal.toml does not set [provider.kubernetes.tenant_role] to shoal-tenant")
    # Admission covers the RoleBindings the scheduler makes.
    vap = one(objects, "ValidatingAdmissionPolicy")
    if vap is None or not any(
        "rolebindings" in r["resources"] for r in vap["spec"]["matchConstraints"]["resourceRules"]
    ):
        problems.append("the admission policy does not cover the scheduler's RoleBindings")
    # A reason above every cluster-wide rule: a comment block right before it that says why.
    text = (HERE / "base" / "rbac.yaml").read_text()
    for doc in text.split("\n---\n"):
        # The rules that are cluster-wide: those of a ClusterRole a ClusterRoleBinding binds.
        if "\nkind: ClusterRole\n" not in "\n" + doc or not any(
            f"\n  name: {name}\n" in doc for name in bound_cluster_wide
        ):
            continue
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            if not line.strip().startswith("- apiGroups:"):
                continue
            k = i
            while k > 0 and lines[k - 1].strip().startswith("#"):
                k -= 1
            reason = " ".join(l.strip() for l in lines[k:i])
            if "Cluster-wide because" not in reason:
                problems.append(f"rbac.yaml: the ClusterRole rule `{lines[i + 1].strip()}` does not say why it is cluster-wide")
    return problems


def main():
    cmd = kustomize_cmd()
    if cmd is None:
        msg = "no kustomize: neither `kubectl` nor `kustomize` is on the PATH"
        if os.environ.get("CI") == "true":
            print(f"FAIL {msg}", file=sys.stderr)
            print("0 passed, 1 failed")
            return 1
        print(f"skipping: {msg}", file=sys.stderr)
        return 0
    checked = 0
    problems = []
    rendered = {}
    for overlay in OVERLAYS:
        try:
            objects = render(cmd, HERE / "overlays" / overlay)
        except RuntimeError as e:
            problems.append(str(e))
            continue
        rendered[overlay] = objects
        checked += len(objects)
        problems += validate(f"overlays/{overlay}", objects)
        problems += promises(overlay, objects)
        problems += rbac_checks(objects)
        for name, component in COMPONENTS.items():
            try:
                with_component = render_with(cmd, overlay, component)
            except RuntimeError as e:
                problems.append(str(e))
                continue
            added = [o for o in with_component if o not in objects]
            if not added:
                problems.append(f"component {name} adds nothing to overlays/{overlay}")
            checked += len(added)
            problems += validate(f"overlays/{overlay}+{name}", added)
    if "--print" in sys.argv:
        which = sys.argv[sys.argv.index("--print") + 1]
        print(yaml.safe_dump_all(rendered.get(which, []), sort_keys=False), end="")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"kubernetes manifests: {checked} objects rendered and validated ({K8S_VERSION}), {len(problems)} problems", file=sys.stderr)
    print(f"{checked - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
