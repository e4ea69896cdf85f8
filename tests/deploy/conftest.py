"""Fixtures of the deploy tests: the vendored KubeRay schemas, made strict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy_testlib import SCHEMAS


def strict(schema: Any) -> Any:
    """Refuse unknown fields where the CRD lists its fields, as the API server's strict field
    validation (`kubectl apply --validate=strict`) does; the CRD itself only prunes them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="session")
def kuberay_schemas() -> dict[str, dict[str, Any]]:
    """{"RayCluster": schema, "RayJob": schema}, strict, from tests/deploy/schemas."""
    return {
        kind: strict(json.loads((SCHEMAS / f"kuberay-{kind.lower()}-v1.json").read_text()))
        for kind in ("RayCluster", "RayJob")
    }
