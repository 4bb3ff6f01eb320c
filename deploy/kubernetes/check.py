#!/usr/bin/env python3
"""Renders deploy/kubernetes (the subset of kustomize it uses: a resource list and a namespace) and
checks every object against the Kubernetes OpenAPI schemas shipped by the `kubernetes-validate`
package, in strict mode (unknown fields are errors), with no cluster. The ServiceMonitor, a
Prometheus Operator CRD not in those schemas, is checked against the fields of its CRD that the
manifest uses. Also checks that the RBAC grants exactly what the kubernetes provider calls.

Usage: check.py [--print]   (--print writes the rendered manifests to stdout)
"""
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.34.0"  # the k8s-openapi feature the provider is built with (v1_34)

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

# What fleet/src/kubernetes calls, as (API group, resource, verb): the RBAC must grant these and
# no more.
PROVIDER_CALLS = {
    ("", "namespaces", v) for v in ("list", "create", "delete")
} | {
    ("", "pods", v) for v in ("get", "list", "watch", "create", "delete")
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


def render():
    kust = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    namespace = kust.get("namespace")
    objects = []
    for res in kust["resources"]:
        for doc in yaml.safe_load_all((HERE / res).read_text()):
            if not doc:
                continue
            if namespace and doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
            for subject in doc.get("subjects", []) if doc["kind"].endswith("Binding") else []:
                if subject.get("kind") == "ServiceAccount" and namespace:
                    subject["namespace"] = namespace
            objects.append((res, doc))
    return objects


def granted(objects, kind):
    out = set()
    for _, o in objects:
        if o["kind"] != kind:
            continue
        for rule in o.get("rules", []):
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        out.add((g, r, v))
    return out


def main():
    objects = render()
    problems = []
    for res, o in objects:
        name = f"{res}: {o['kind']}/{o['metadata'].get('name')}"
        try:
            if o["kind"] == "ServiceMonitor":
                jsonschema.validate(o, SERVICE_MONITOR)
            else:
                kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            problems.append(f"{name}: {getattr(e, 'message', e)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema: {e}")
    for kind, want in (("ClusterRole", PROVIDER_CALLS), ("Role", LEASE_CALLS)):
        have = granted(objects, kind)
        if have != want:
            problems.append(
                f"{kind}: grants {sorted(have - want)} beyond what Shoal calls, lacks {sorted(want - have)}"
            )
    if "--print" in sys.argv:
        print(yaml.safe_dump_all([o for _, o in objects], sort_keys=False), end="")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"{len(objects) - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
