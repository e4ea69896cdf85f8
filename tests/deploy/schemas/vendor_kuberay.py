"""Rebuild kuberay-*.json from KubeRay's CRDs: the openAPIV3Schema of RayCluster and RayJob, slimmed.

KubeRay publishes no PyPI package with its CRDs, so the tests carry these two schemas. Every
embedded pod template (head, worker groups, the RayJob submitter) is replaced by a marker; the
tests check those templates against the core `PodTemplateSpec` schema of `kubernetes-validate`
instead. That keeps the vendored files small and leaves one source of truth for the pod spec.

Usage (from a KubeRay checkout at the tag named in KUBERAY_TAG):

    python tests/deploy/schemas/vendor_kuberay.py /path/to/kuberay
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

KUBERAY_TAG = "v1.7.0"  # commit 59d663aeec13760646da3db9c1cf8cfe883e30b7, Apache-2.0
POD_TEMPLATE_MARKER = "x-tpipe-pod-template"
HERE = Path(__file__).resolve().parent
CRDS = {"raycluster": "rayclusters", "rayjob": "rayjobs"}


def is_pod_template(node: dict) -> bool:
    """A PodTemplateSpec schema: {properties: {metadata, spec: {properties: {containers, ...}}}}."""
    props = node.get("properties")
    if not isinstance(props, dict) or set(props) != {"metadata", "spec"}:
        return False
    spec_props = props["spec"].get("properties", {})
    return "containers" in spec_props and "volumes" in spec_props


def slim(node):
    if isinstance(node, dict):
        if is_pod_template(node):
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, POD_TEMPLATE_MARKER: True}
        # "description" is dropped where it is a keyword (a string), kept where it names a field.
        return {k: slim(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [slim(v) for v in node]
    return node


def main(kuberay: Path) -> None:
    for kind, plural in CRDS.items():
        crd = yaml.safe_load((kuberay / f"ray-operator/config/crd/bases/ray.io_{plural}.yaml").read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = slim(version["schema"]["openAPIV3Schema"])
        schema["x-source"] = f"ray-project/kuberay {KUBERAY_TAG} ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        out = HERE / f"kuberay-{kind}-v1.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
