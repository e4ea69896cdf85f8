"""No secret is committed under deploy/ or in docs/cluster.md, and the guide matches the files:
every path it names exists, every Secret the manifests refer to is one it tells you to create,
and every `tpipe` command it shows is a real one."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from deploy_testlib import DEPLOY, K8S_MANIFESTS, REPO, load_docs, walk

GUIDE = REPO / "docs/cluster.md"
TEXT_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file()) + [GUIDE]
# `KEY: value` / `KEY=value` where KEY names a credential.
# `KEY: value` or `KEY=value`; a match counts when a segment of KEY names a credential
# (MLFLOW_TRACKING_PASSWORD, secretName), so `tiktoken==0.14` and `tokenizers==` do not.
# The value is a lookahead, so `--from-literal=KEY=value` is also read as `KEY=value`.
ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9])(?P<key>[A-Za-z][A-Za-z0-9_.-]*)\s*[:=]\s*(?=(?P<value>[^\s,}\]]*))")
CREDENTIAL_WORDS = {"password", "passwd", "pgpassword", "secret", "token"}


def names_a_credential(key: str) -> bool:
    segments = re.split(r"[_.-]|(?<=[a-z0-9])(?=[A-Z])", key)
    return any(seg.lower() in CREDENTIAL_WORDS for seg in segments)


# Keys that name a Secret or say where one is, never hold one.
REFERENCE_KEYS = {"secretName", "secretKeyRef", "secretRef", "auth_token", "RAY_AUTH_TOKEN_PATH"}
# Values that are references, placeholders or shell expansions.
# (`?...` and `-...` are the rest of a `${VAR:?message}` or `${VAR:-default}` expansion.)
REFERENCE_VALUE = re.compile(r"""^(["']?\$|\.\.\.|<|\{|$|valueFrom|\?|-)""")


def _id(p: Path) -> str:
    return str(p.relative_to(REPO))


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of what a machine reads: all of a config file, the fenced code blocks of
    Markdown; comment lines dropped (they explain, and the prose says 'token: ...')."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".md":
        inside, kept = False, []
        for n, line in enumerate(lines, 1):
            if line.startswith("```"):
                inside = not inside
            elif inside:
                kept.append((n, line))
    else:
        kept = list(enumerate(lines, 1))
    return [(n, line) for n, line in kept if not line.lstrip().startswith(("#", "--"))]


def literal_credentials(line: str) -> list[str]:
    """Keys given a literal credential on this line.

    Example: 'POSTGRES_PASSWORD: hunter2' -> ['POSTGRES_PASSWORD']; 'PGPASSWORD: ${PGPW:?set}' -> []
    """
    return [
        m["key"]
        for m in ASSIGNMENT.finditer(line)
        if names_a_credential(m["key"]) and m["key"] not in REFERENCE_KEYS and not REFERENCE_VALUE.match(m["value"])
    ]


@pytest.mark.parametrize(
    ("line", "keys"),
    [
        ("POSTGRES_PASSWORD: hunter2", ["POSTGRES_PASSWORD"]),
        ("  --from-literal=MLFLOW_TRACKING_PASSWORD=s3cret \\", ["MLFLOW_TRACKING_PASSWORD"]),
        ('env: {MLFLOW_FLASK_SERVER_SECRET_KEY: "abc"}', ["MLFLOW_FLASK_SERVER_SECRET_KEY"]),
        ("authToken=abc", ["authToken"]),
        ("PGPASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", []),
        ('--from-literal=MLFLOW_AUTH_ADMIN_PASSWORD="$(gen)"', []),
        ("secretName: tpipe-ray-token", []),
        ("tiktoken==0.14.0", []),
        ("tokenizers==0.23.3", []),
    ],
)
def test_the_scanner_tells_literals_from_references(line, keys):
    assert literal_credentials(line) == keys


@pytest.mark.parametrize("path", TEXT_FILES, ids=_id)
def test_no_literal_credential(path):
    for n, line in code_lines(path):
        keys = literal_credentials(line)
        assert not keys, f"{_id(path)}:{n}: {keys} given a literal value: {line.strip()}"


def key_shaped(text: str) -> list[str]:
    """Strings that look generated: 24+ characters mixing upper case, lower case and digits, with a
    run of 13+ between separators (names like AWS_ENDPOINT_URL_S3 or ubuntu-22.04 have neither)."""
    found = []
    for token in re.findall(r"[A-Za-z0-9+/=_-]{24,}", text):
        mixed = all(re.search(c, token) for c in (r"[a-z]", r"[A-Z]", r"\d"))
        if mixed and max(len(seg) for seg in re.split(r"[_/-]", token)) >= 13:
            found.append(token)
    return found


def test_key_shaped_known_answers():
    assert key_shaped("MLFLOW_AUTH_ADMIN_PASSWORD=Zq8vK2mXw9LpR4tYb7NcJ5hG") != []
    assert key_shaped("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") != []
    assert key_shaped("image: nvidia/cuda:12.8.1-runtime-ubuntu24.04 AWS_ENDPOINT_URL_S3 RayClusterNetworkPolicy") == []


@pytest.mark.parametrize("path", TEXT_FILES, ids=_id)
def test_no_key_shaped_strings(path):
    found = key_shaped(path.read_text(encoding="utf-8"))
    assert not found, f"{_id(path)}: {[t[:6] + '...' for t in found]} look like keys"


def test_no_env_file_is_tracked():
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [t for t in tracked if Path(t).name == ".env" or t.endswith((".pem", ".key"))]
    assert ".env" in (DEPLOY / "mlflow/.gitignore").read_text().split()


def test_guide_names_only_files_that_exist():
    text = GUIDE.read_text()
    for ref in set(re.findall(r"(?<![\w/])deploy/[A-Za-z0-9_./*-]+", text)):
        ref = ref.rstrip(".")
        if ref.endswith("/.env"):
            continue  # made by hand from the guide, git-ignored
        assert list(REPO.glob(ref)), f"docs/cluster.md names {ref}, which does not exist"


def test_guide_creates_every_secret_the_manifests_refer_to():
    text = GUIDE.read_text()
    created: dict[str, set[str]] = {}
    for m in re.finditer(r"kubectl create secret generic ([a-z0-9-]+)((?:\s*\\?\s*--from-literal=[A-Za-z0-9_]+=\S*)+)", text):
        created[m.group(1)] = set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", m.group(2)))
    for path in K8S_MANIFESTS:
        for doc in load_docs(path):
            for where, node in walk(doc):
                if isinstance(node, dict) and "secretKeyRef" in node:
                    ref = node["secretKeyRef"]
                    if ref.get("optional"):
                        assert ref["name"] in text, f"{where}: optional Secret {ref['name']} is not documented"
                        continue
                    assert ref["key"] in created.get(ref["name"], set()), (
                        f"{_id(path)} {where}: docs/cluster.md never creates {ref['name']}/{ref['key']}"
                    )
                if isinstance(node, dict) and node.get("secretName"):
                    assert node["secretName"] in created, f"{where}: Secret {node['secretName']} not created"


def test_guide_covers_what_a_cluster_user_needs():
    text = GUIDE.read_text()
    for must in ("docker build", "docker push", "kubectl port-forward", "tpipe submit", "--follow",
                 "tpipe evaluate models:/", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "/dev/shm",
                 "## How access is authenticated", "RAY_AUTH_TOKEN", "ray up deploy/ray-cluster-aws.yaml"):
        assert must in text, f"docs/cluster.md does not cover {must!r}"


def test_guide_uses_real_tpipe_commands():
    from pipeline.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(subparsers.choices)
    prose = re.sub(r"^```.*?^```", "", GUIDE.read_text(), flags=re.M | re.S)
    code = "\n".join([line for _, line in code_lines(GUIDE)] + re.findall(r"`([^`]+)`", prose))
    used = set(re.findall(r"(?:^|[\s`(])tpipe ([a-z]+)\b", code, re.M))
    assert used and used <= commands, f"not tpipe commands: {sorted(used - commands)}"
