"""Typed configuration: every kind of mistake is refused with one line naming the key path."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, PipelineConfig, config_from_dict, load_config


def test_default_and_presets_load():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.model.d_model == 128 and cfg.model.n_encoder_layers == 2  # model: tiny
    base = load_config(None, ["model=base"])
    assert (base.model.d_model, base.model.n_heads, base.model.n_encoder_layers) == (512, 8, 6)
    big = load_config(None, ["model.preset=big"])
    assert big.model.d_model == 1024


def test_overrides_apply_with_types():
    cfg = load_config("smoke", ["train.lr=0.01", "model.d_model=64", "data.paths=[a.tsv, b.tsv]", "data.source=files"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.model.d_model == 64
    assert cfg.data.paths == ["a.tsv", "b.tsv"]


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("train.lr=1e-3", ("train", "lr"), 0.001),  # YAML 1.1 reads 1e-3 as a string
        ("train.lr=2", ("train", "lr"), 2.0),
        ("run_name=2024", ("run_name",), "2024"),  # an int to YAML
        ("registry.model_name=yes", ("registry", "model_name"), "yes"),  # a bool to YAML 1.1
        ("registry.model_name=1.5", ("registry", "model_name"), "1.5"),
        ("mlflow.experiment=null-model", ("mlflow", "experiment"), "null-model"),
        ("artifact_root='null'", ("artifact_root",), "null"),  # quoted: the text itself
        ("train.use_gpu=yes", ("train", "use_gpu"), True),
        ("train.use_gpu=off", ("train", "use_gpu"), False),
        ("train.storage_path=null", ("train", "storage_path"), None),
        ("train.storage_path=", ("train", "storage_path"), None),
        ("data.tsv_columns=[0, 2]", ("data", "tsv_columns"), [0, 2]),
        ("tokenizer.special_tokens=[<pad>, <s>, </s>, 2024, yes]", ("tokenizer", "special_tokens"),
         ["<pad>", "<s>", "</s>", "2024", "yes"]),
    ],
)
def test_override_parsed_against_the_field_type(override, key, value):
    cfg = load_config("smoke", [override])
    got = cfg
    for part in key:
        got = getattr(got, part)
    assert got == value and type(got) is type(value)
    assert config_from_dict(cfg.to_dict()) == cfg  # plain Python values, dumpable as YAML


def test_yaml_file_scalars_typed_by_field(tmp_path):
    """The same rule in a config file: `run_name: 2024` is a name, `lr: 1e-3` a float."""
    path = tmp_path / "mine.yaml"
    path.write_text("run_name: 2024\nregistry:\n  model_name: no\ntrain:\n  lr: 1e-3\n  storage_path: ~\n",
                    encoding="utf-8")
    cfg = load_config(str(path))
    assert (cfg.run_name, cfg.registry.model_name, cfg.train.lr, cfg.train.storage_path) == ("2024", "no", 0.001, None)
    assert load_config(str(path)).to_yaml() == cfg.to_yaml()


def test_config_keys_shows_the_named_configs_values():
    """`tpipe config smoke --keys` lists smoke's values (and the overrides), not the dataclass defaults."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "smoke", "train.lr=1e-3", "--keys"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if line.strip()}
    assert rows["run_name"] == "'smoke'" and rows["train.max_steps"] == "30" and rows["train.lr"] == "0.001"
    assert rows["registry.model_name"] == "'tpipe-smoke'"


def test_round_trip_through_dict():
    cfg = load_config("smoke")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.fingerprint() == config_from_dict(cfg.to_dict()).fingerprint()
    assert cfg.fingerprint("data") != cfg.fingerprint("train")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("foo=1", "unknown key 'foo'; allowed: seed, run_name, artifact_root, data"),
        ("train.lrr=1", "unknown key 'train.lrr'; allowed: num_workers"),
        ("model.dmodel=8", "unknown key 'model.dmodel'"),
        ("train.lr=abc", "train.lr: expected float, got 'abc'"),
        ("train.max_steps=1.5", "train.max_steps: expected int, got 1.5"),
        ("train.use_gpu=maybe", "train.use_gpu: expected bool, got 'maybe'"),
        ("train.max_steps=true", "train.max_steps: expected int, got True"),
        ("data.paths=notalist", "data.paths: expected a list of str"),
        ("tokenizer.special_tokens=[[1], 2, 3]", "tokenizer.special_tokens[0]: expected str"),
        ("train.max_steps=0", "train.max_steps: 0 is below the minimum 1"),
        ("train.label_smoothing=0.9", "train.label_smoothing: 0.9 is above the maximum 0.5"),
        ("model.norm=batchnorm", "model.norm: 'batchnorm' is not allowed; allowed: layernorm, rmsnorm"),
        ("tokenizer.kind=wordpiece", "tokenizer.kind: 'wordpiece' is not allowed; allowed: byte_bpe, char_bpe, sentencepiece"),
        ("model.n_heads=3", "model.d_model=128 is not divisible by model.n_heads=3"),
        ("data.source=files", "data.paths is empty but data.source=files"),
        ("model.preset=huge", "model.preset: unknown preset 'huge'; allowed: base, big, tiny"),
        ("train=5", "train: expected a mapping of TrainConfig fields"),
        ("train.lr.x=1", "'train.lr' is a value, not a section"),
    ],
)
def test_refused_with_key_path(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["data.max_tokens_per_side=127"], ("data.max_tokens_per_side=127", "model.max_seq_len=128")),
        (["model.max_seq_len=64"], ("data.max_tokens_per_side=126", "model.max_seq_len=64")),
        (["model=base", "data.max_tokens_per_side=300"], ("data.max_tokens_per_side=300", "model.max_seq_len=256")),
    ],
)
def test_settings_across_sections_refused_naming_both_keys(overrides, keys):
    """A side of data.max_tokens_per_side tokens plus its begin and end tokens must fit model.max_seq_len."""
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert all(k in str(e.value) for k in keys) and "\n" not in str(e.value)
    assert load_config(None, ["model.max_seq_len=64", "data.max_tokens_per_side=62"]).model.max_seq_len == 64


def test_preset_expanded_by_model_config_from_name():
    from model.config import ModelConfig

    assert load_config(None, ["model=base"]).model == ModelConfig.from_name("base")
    assert load_config(None, ["model=base", "model.dropout=0.2"]).model == ModelConfig.from_name("base", dropout=0.2)


def test_malformed_override_and_unknown_config(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown config 'nope'; give a .yaml path or one of: .*default"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ntrain:\n  lr: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{bad}.* line \d+: not valid YAML"):
        load_config(str(bad))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_cli_refuses_bad_value_fast_and_before_ray(tmp_path):
    """`tpipe run` with a bad value exits 2 in under 2 s, names the key, starts no Ray, writes nothing."""
    env = {"PATH": "/usr/bin:/bin", "TPIPE_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "model.norm=batchnorm"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=30,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2
    assert "model.norm" in proc.stderr and "allowed: layernorm, rmsnorm" in proc.stderr
    assert elapsed < 2.0, f"config error took {elapsed:.2f}s"
    assert not (tmp_path / "home").exists()  # nothing started, nothing written


def test_config_loads_without_torch_or_ray():
    code = (
        "import sys; from pipeline.config import load_config; load_config('default');"
        "import pipeline.cli; pipeline.cli.build_parser();"
        "bad = [m for m in ('torch', 'ray', 'mlflow', 'lightning') if m in sys.modules]; print(bad); assert not bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unreachable_tracking_server_is_a_clear_bounded_error(tmp_path):
    """A tracking URI nobody answers: exit 3 with the URI in the message, before Ray or any write."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    env = {"PATH": "/usr/bin:/bin", "TPIPE_HOME": str(tmp_path / "home"), "HOME": str(tmp_path),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"MLflow tracking server http://127.0.0.1:{port} did not answer" in proc.stderr
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "home" / "artifacts").exists() and not (tmp_path / "home" / "runs").exists()
    assert "ray: started" not in proc.stdout  # Ray was never started


def test_every_command_has_help():
    """`tpipe --help` and each command's --help describe every option (tokenizer commands included)."""
    from pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "config", "status", "evaluate", "translate", "ui", "submit", "jobs", "tokenizer"} <= set(sub.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help" and not isinstance(action, type(sub)):
                assert action.help, f"tpipe {name}: option {action.dest} has no help"
    run_help = sub.choices["run"].format_help()
    for option in ("--address", "--from", "--until", "--json", "key=value"):
        assert option in run_help
