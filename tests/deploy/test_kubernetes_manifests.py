"""deploy/kuberay and deploy/mlflow/k8s: schema-valid, and right in the fields that matter.

Core objects are checked against the Kubernetes OpenAPI schemas of `kubernetes-validate` (strict:
unknown fields refused); RayCluster and RayJob against KubeRay v1.7.0's CRD schemas vendored in
tests/deploy/schemas, with each embedded pod template checked as a core PodTemplateSpec.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from deploy_testlib import (
    DEPLOY,
    K8S_MANIFESTS,
    POD_TEMPLATE_MARKER,
    REPO,
    SECRET_NAME,
    constraints,
    containers,
    load_docs,
    quantity,
    ray_groups,
    walk,
)

# The oldest Kubernetes minor we claim and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.31", "1.37")
KUBERAY_KINDS = ("RayCluster", "RayJob")
DOCS = [(path, i, doc) for path in K8S_MANIFESTS for i, doc in enumerate(load_docs(path))]
IDS = [f"{p.relative_to(DEPLOY)}#{i}:{d['kind']}" for p, i, d in DOCS]
CORE_DOCS = [(p, i, d) for p, i, d in DOCS if d["kind"] not in KUBERAY_KINDS]
CORE_IDS = [f"{p.relative_to(DEPLOY)}#{i}:{d['kind']}" for p, i, d in CORE_DOCS]
RAY_DOCS = [(p, d) for p, _, d in DOCS if d["kind"] in KUBERAY_KINDS]
RAY_IDS = [f"{p.relative_to(DEPLOY)}:{d['kind']}" for p, d in RAY_DOCS]


def pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_every_kubernetes_manifest_is_listed():
    """A new file under deploy/kuberay or deploy/mlflow/k8s cannot dodge the checks below."""
    on_disk = sorted(list((DEPLOY / "kuberay").glob("*.yaml")) + list((DEPLOY / "mlflow/k8s").glob("*.y*ml")))
    assert on_disk == K8S_MANIFESTS
    assert {d["kind"] for _, _, d in DOCS} >= {"RayCluster", "RayJob", "Deployment", "StatefulSet", "Service"}


# --------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "index", "doc"), CORE_DOCS, ids=CORE_IDS)
def test_core_objects_match_the_kubernetes_schema(path, index, doc, k8s_version):
    kubernetes_validate.validate(doc, k8s_version, strict=True)


def _pod_templates(schema: dict[str, Any], node: Any, path: str = ""):
    """Walk a document along its CRD schema; yield (path, value) where the schema has a pod template."""
    if schema.get(POD_TEMPLATE_MARKER):
        yield path, node
        return
    if isinstance(node, dict):
        props = schema.get("properties", {})
        for k, v in node.items():
            if k in props:
                yield from _pod_templates(props[k], v, f"{path}.{k}")
    elif isinstance(node, list) and "items" in schema:
        for i, v in enumerate(node):
            yield from _pod_templates(schema["items"], v, f"{path}[{i}]")


@pytest.mark.parametrize(("path", "doc"), RAY_DOCS, ids=RAY_IDS)
def test_kuberay_objects_match_the_crd_schema(path, doc, kuberay_schemas):
    schema = kuberay_schemas[doc["kind"]]
    assert doc["apiVersion"] == "ray.io/v1"
    jsonschema.Draft202012Validator(schema).validate(doc)
    templates = dict(_pod_templates(schema, doc))
    expected = 1 + len(list(ray_groups(doc))) if doc["kind"] == "RayJob" else len(list(ray_groups(doc)))
    assert len(templates) == expected, sorted(templates)  # head + groups (+ the RayJob submitter)
    for where, template in templates.items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        for k8s_version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(wrapped, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{where}: {'.'.join(map(str, e.path))}: {e.message}") from None


def test_the_validators_refuse_a_typo(kuberay_schemas):
    """The checks above would catch a misspelt field, in core objects and in KubeRay's."""
    deployment = next(d for _, _, d in DOCS if d["kind"] == "Deployment")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    cluster = next(d for _, d in RAY_DOCS if d["kind"] == "RayCluster")
    bad = {**cluster, "spec": {**cluster["spec"], "workerGroupSpec": []}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, kuberay_schemas["RayCluster"])


# --------------------------------------------------------------------------------------------
# Images, resources, probes


@pytest.mark.parametrize(("path", "index", "doc"), DOCS, ids=IDS)
def test_images_are_pinned(path, index, doc):
    for where, c, _ in containers(doc):
        image = c["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{where}: image {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{where}: image {image} is not pinned to a version"
        if "/tpipe/tpipe:" in image:
            assert tag in (f"{pyproject_version()}-cpu", f"{pyproject_version()}-gpu"), f"{where}: {image}"
        if "/tpipe/mlflow:" in image:
            assert tag == constraints()["mlflow"], f"{where}: server {tag} != client mlflow {constraints()['mlflow']}"
        assert c.get("imagePullPolicy") == "IfNotPresent", f"{where}: pinned tags need no Always pull"


@pytest.mark.parametrize(("path", "index", "doc"), DOCS, ids=IDS)
def test_every_container_has_requests_and_limits(path, index, doc):
    for where, c, _ in containers(doc):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                assert r in res.get(kind, {}), f"{where}: no {kind}.{r}"
        assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"]), where


@pytest.mark.parametrize(("path", "index", "doc"), DOCS, ids=IDS)
def test_long_running_containers_have_probes(path, index, doc):
    for where, c, spec in containers(doc):
        if spec.get("restartPolicy") == "Never":
            continue  # the RayJob submitter: a one-shot Job pod
        assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: needs readiness and liveness probes"


@pytest.mark.parametrize(("path", "doc"), RAY_DOCS, ids=RAY_IDS)
def test_ray_groups_resources_gpus_and_shared_memory(path, doc):
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == constraints()["ray"], "rayVersion must equal the image's ray"
    assert spec["authOptions"] == {"mode": "token", "secretName": "tpipe-ray-token"}
    groups = dict(ray_groups(doc))
    assert any(name == "gpu" for name in groups), "a GPU worker group"
    for name, group in groups.items():
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        res = c["resources"]
        gpus = res["limits"].get("nvidia.com/gpu")
        # Ray takes num-cpus, num-gpus and memory from the limits; requests == limits keeps the
        # scheduler's view and Ray's the same (Guaranteed QoS).
        assert res["requests"] == res["limits"], f"{name}: requests != limits"
        if name == "gpu":
            assert gpus and int(gpus) >= 1, "GPU group must request nvidia.com/gpu"
            assert c["image"].endswith("-gpu"), f"{name}: GPU workers need the CUDA image"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert gpus is None and c["image"].endswith("-cpu"), f"{name}: no GPU, CPU image"
        # /dev/shm: a memory-backed emptyDir at least as big as the object store, which stays
        # within Ray's default share (30%) of the memory limit.
        store = int(group["rayStartParams"]["object-store-memory"])
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory", f"{name}: /dev/shm must be memory-backed"
        assert quantity(shm["sizeLimit"]) >= store, f"{name}: /dev/shm smaller than the object store"
        assert store <= 0.3 * quantity(res["limits"]["memory"]), f"{name}: object store above 30% of memory"
        # Security context: the image's user, never root.
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        # Probes on the dashboard agent's public health endpoint.
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/api/healthz", "port": 52365}, f"{name}: {probe}"
        # One tpipe home for all nodes (storage.yaml): steps and Ray Train checkpoints are shared.
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TPIPE_HOME"] == mounts_by_name(c)["tpipe-home"] == "/mnt/tpipe", name
        assert volumes["tpipe-home"]["persistentVolumeClaim"]["claimName"] == "tpipe-home", name
        labels = group["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "tpipe", f"{name}: label networkpolicy.yaml selects"
    head = groups["head"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no tasks on the head"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 10001} <= ports


def mounts_by_name(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def test_shared_home_is_read_write_many():
    (pvc,) = load_docs(DEPLOY / "kuberay/storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "tpipe-home"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every Ray pod mounts it at once"


def test_rayjob_runs_tpipe_with_a_config_from_conf():
    (job,) = load_docs(DEPLOY / "kuberay/rayjob.yaml")
    argv = job["spec"]["entrypoint"].split()
    assert argv[:2] == ["tpipe", "run"]
    name, overrides = argv[2], argv[3:]
    from pipeline.config import CONF_DIR, load_config

    if not (CONF_DIR / f"{name}.yaml").exists():
        pytest.skip(f"conf/{name}.yaml is not written yet")
    cfg = load_config(name, overrides)  # refuses unknown keys and bad values
    gpu = dict(ray_groups(job))["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cfg.train.use_gpu
    assert gpu["replicas"] * int(limits["nvidia.com/gpu"]) >= cfg.train.num_workers, "not enough GPUs"
    assert cfg.train.cpus_per_worker <= quantity(limits["cpu"]), "a worker asks for more CPUs than a pod has"
    assert "runtimeEnvYAML" not in job["spec"], "environment comes from the pods' Secrets, not the job table"
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# --------------------------------------------------------------------------------------------
# Exposure and secrets


@pytest.mark.parametrize(("path", "index", "doc"), DOCS, ids=IDS)
def test_nothing_is_exposed_outside_the_cluster(path, index, doc):
    assert doc["kind"] not in ("Ingress", "Gateway", "HTTPRoute"), "access is by port-forward or your own proxy"
    if doc["kind"] == "Service":
        assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert not doc["spec"].get("externalIPs")
    for where, c, spec in containers(doc):
        assert not spec.get("hostNetwork"), where
        for p in c.get("ports", []):
            assert "hostPort" not in p, f"{where}: hostPort exposes the port on the node"


@pytest.mark.parametrize(("path", "index", "doc"), DOCS, ids=IDS)
def test_secrets_only_by_reference(path, index, doc):
    assert doc["kind"] != "Secret", "Secrets are made by hand (docs/cluster.md), never shipped"
    if doc["kind"] == "ConfigMap":
        for key in doc["data"]:
            assert not SECRET_NAME.search(key), f"ConfigMap key {key} looks like a credential"
    for where, c, _ in containers(doc):
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} has a literal value"
                assert "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']} not from a Secret"
        for arg in c.get("args", []) + c.get("command", []):
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", arg), f"{where}: credentials in a URI: {arg}"


@pytest.mark.parametrize(("path", "doc"), RAY_DOCS, ids=RAY_IDS)
def test_ray_pods_get_mlflow_settings_from_secrets(path, doc):
    for name, group in ray_groups(doc):
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "tpipe-mlflow-client", "key": var}, f"{name}: {var}"
        assert env["GLOO_SOCKET_IFNAME"]["value"] == env["NCCL_SOCKET_IFNAME"]["value"] == "eth0"


def test_network_policies_select_the_pods_they_guard():
    """Each NetworkPolicy's selector matches the labels of pods that the manifests make."""
    pod_labels = [
        node.get("metadata", {}).get("labels", {})
        for _, _, d in DOCS
        for _, node in walk(d)
        if isinstance(node, dict) and isinstance(node.get("spec"), dict) and "containers" in node["spec"]
    ]
    for policy in (d for _, _, d in DOCS if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), policy["metadata"]["name"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
