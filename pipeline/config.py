"""The pipeline's typed configuration: one dataclass per component, loaded from YAML in `conf/`.

`load_config("default", ["train.max_steps=100"])` reads `conf/default.yaml`, applies the dotted
overrides and checks every key, type and range. A mistake is refused with one line that names the
key path and what is allowed, before Ray, MLflow or torch are touched. Settings of two sections that
cannot work together are refused once, by check_across_sections, whenever a PipelineConfig is built.
The typed-YAML machinery (plain scalars typed by their field, range checks) is pipeline/config_schema.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.config import DataConfig
from data.tokenizer.config import TokenizerConfig
from model.config import PRESET_DIR, ModelConfig
from pipeline.config_schema import ConfigError, Text, describe, from_dict, read_yaml

__all__ = [  # ConfigError and describe live in config_schema.py and are imported from here
    "CONF_DIR", "ConfigError", "EvalConfig", "MLflowConfig", "PipelineConfig", "RayConfig", "RegistryConfig",
    "TrainConfig", "check_across_sections", "config_from_dict", "describe", "load_config", "parse_duration",
    "resolve_config_path",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class TrainConfig:
    """How the model is trained (Ray Train + Lightning)."""

    num_workers: int = field(default=2, metadata={"min": 1, "help": "DDP workers (Ray Train actors)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker; nccl instead of gloo"})
    cpus_per_worker: float = field(default=1.0, metadata={"min": 0.0, "help": "CPUs Ray reserves per worker"})
    node_resource: str = field(
        default="", metadata={"help": "a custom Ray resource (`ray start --resources`) each worker asks one unit of, "
                                      "to keep training on the nodes that offer it; empty: none"}
    )
    max_steps: int = field(default=2000, metadata={"min": 1, "help": "optimizer steps in total"})
    max_tokens: int = field(
        default=2048, metadata={"min": 16, "help": "tokens (source + target, padded) per batch per worker"}
    )
    lr: float = field(default=2e-3, metadata={"min": 0.0, "help": "peak learning rate"})
    warmup_steps: int = field(default=200, metadata={"min": 0, "help": "linear warmup steps"})
    schedule: str = field(
        default="inverse_sqrt",
        metadata={
            "choices": ["inverse_sqrt", "cosine", "linear", "constant"],
            "help": "decay after warmup; cosine and linear reach 0 at max_steps or at max_time, whichever comes first",
        },
    )
    max_time: str = field(
        default="",
        metadata={
            "help": "wall-clock training budget such as 90s, 20m, 1h30m (empty: none); training stops at the first "
            "optimizer step past it (or at max_steps), counting the time of an interrupted attempt it resumes"
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "min": 0.0,
            "max": 0.99999,
            "help": "exponential moving average of the weights, saved as the trained model (0: off; e.g. 0.999); "
            "the decay is min(ema_decay, (1 + n) / (10 + n)) after n updates so short runs are not dominated by "
            "the random initialisation",
        },
    )
    weight_decay: float = field(default=0.01, metadata={"min": 0.0, "help": "AdamW weight decay"})
    adam_beta2: float = field(
        default=0.98,
        metadata={"min": 0.0, "max": 0.99999, "help": "AdamW β2: 0.98 is the paper's; 0.999 (PyTorch's and HF's "
                                                     "default) learned faster in bench/quality.py's short CPU runs"},
    )
    adam_eps: float = field(default=1e-9, metadata={"min": 0.0, "help": "AdamW ε (the paper's 1e-9; PyTorch's 1e-8)"})
    label_smoothing: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5, "help": "ε_ls"})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0, "help": "max gradient norm (0: off)"})
    accumulate_grad_batches: int = field(default=1, metadata={"min": 1, "help": "batches per optimizer step"})
    val_every_steps: int = field(default=500, metadata={"min": 1, "help": "validation interval in steps"})
    log_every_steps: int = field(default=25, metadata={"min": 1, "help": "metric logging interval"})
    precision: str = field(
        default="auto",
        metadata={
            "choices": ["auto", "32", "bf16-mixed", "bf16-true"],
            "help": "auto: bf16-mixed on GPU, fp32 on CPU; bf16-true also keeps weights in bf16 (faster on GPU)",
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    threads_per_worker: int = field(default=1, metadata={"min": 1, "help": "torch intra-op threads per worker"})
    keep_checkpoints: int = field(default=2, metadata={"min": 1, "help": "Ray Train keeps the k best by val_loss"})
    max_failures: int = field(default=2, metadata={"min": -1, "help": "worker failures survived (-1: unlimited)"})
    storage_path: str | None = field(
        default=None, metadata={"help": "Ray Train storage: a folder or s3:// URI (None: under the tpipe home)"}
    )

    def __post_init__(self) -> None:
        parse_duration(self.max_time, "train.max_time")  # refuse a malformed budget before Ray starts

    @property
    def max_seconds(self) -> float:
        """max_time in seconds; 0.0 when there is no time budget."""
        return parse_duration(self.max_time, "train.max_time")


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str, key: str = "duration") -> float:
    """'1h30m' -> 5400.0, '20m' -> 1200.0, '90s' or '90' -> 90.0, '' -> 0.0 (no budget)."""
    import re

    t = text.strip().lower()
    if not t:
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", t)
    if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
        raise ValueError(f"{key}: {text!r} is not a duration; write it like 90s, 20m, 1h30m or 2d")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{key}: {text!r} is not a positive duration")
    return seconds


@dataclass
class EvalConfig:
    """How a model is evaluated and what decoding translation uses."""

    beam_size: int = field(default=1, metadata={"min": 1, "help": "1 is greedy"})
    length_penalty: float = field(default=1.0, metadata={"min": 0.0, "help": "GNMT-style α for beam search"})
    max_len: int = field(default=64, metadata={"min": 1, "help": "longest generated target"})
    max_len_a: float = field(
        default=0.0,
        metadata={"min": 0.0, "help": "with max_len_b, each translation stops at a·S + b tokens, S its source's tokens "
                                      "(fairseq's --max-len-a/-b; stops an undertrained model's repetition loops); 0: off"},
    )
    max_len_b: int = field(default=0, metadata={"help": "see max_len_a"})
    batch_size: int = field(default=64, metadata={"min": 1, "help": "sentences per decoding batch"})
    max_sentences: int = field(default=0, metadata={"min": 0, "help": "evaluate at most this many (0: all)"})


@dataclass
class RegistryConfig:
    """Where the trained model is registered and how it is promoted."""

    model_name: str = field(default="tpipe-demo", metadata={"help": "MLflow registered model name"})
    promote_metric: str = field(
        default="bleu", metadata={"choices": ["bleu", "chrf", "exact_match"], "help": "higher is better"}
    )


@dataclass
class RayConfig:
    """Which Ray cluster to use."""

    address: str | None = field(default=None, metadata={"help": "None: start a local Ray (or RAY_ADDRESS)"})
    num_cpus: int | None = field(default=None, metadata={"min": 1, "help": "CPUs of a local Ray (None: all)"})
    task_resource: str = field(
        default="", metadata={"help": "a custom Ray resource (`ray start --resources`) each task of the data steps "
                                      "asks one unit of, to keep them on the nodes that offer it; empty: none "
                                      "(train.node_resource places the training workers)"}
    )


@dataclass
class MLflowConfig:
    """Where runs and models are tracked."""

    tracking_uri: str | None = field(
        default=None, metadata={"help": "None: MLFLOW_TRACKING_URI or sqlite under the tpipe home"}
    )
    experiment: str = field(default="tpipe", metadata={"help": "MLflow experiment name"})


@dataclass
class PipelineConfig:
    """Everything `tpipe run` needs. Saved, resolved, with every run."""

    seed: int = field(default=1234, metadata={"min": 0, "help": "one seed for data, tokenizer and training"})
    run_name: str = field(default="tpipe", metadata={"help": "prefix of the MLflow run name"})
    artifact_root: str = field(default="", metadata={
        "help": "where step outputs live: empty = $TPIPE_HOME/artifacts; a folder, or a URI pyarrow opens "
                "(s3://bucket/prefix, gs://...), mirrored locally in $TPIPE_HOME/artifacts"})
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)

    def __post_init__(self) -> None:
        check_across_sections(self)  # every way a config is built (file, overrides, a worker's dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all when none), e.g. `cfg.fingerprint("data", "tokenizer")`."""
        d = self.to_dict()
        picked = {s: d[s] for s in sections} if sections else d
        blob = json.dumps(picked, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading


def resolve_config_path(name_or_path: str | None) -> Path:
    """`None` -> conf/default.yaml; `tiny-e2e` -> conf/tiny-e2e.yaml; otherwise a file path."""
    if name_or_path is None:
        return CONF_DIR / "default.yaml"
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        return p
    candidate = CONF_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    names = sorted(q.stem for q in CONF_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown config '{name_or_path}'; give a .yaml path or one of: {', '.join(names)}")


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read YAML, expand presets, apply `key.sub=value` overrides, validate. Raises ConfigError."""
    path = resolve_config_path(name_or_path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    _expand_presets(raw)
    return from_dict(PipelineConfig, raw, "")


def config_from_dict(raw: dict[str, Any]) -> PipelineConfig:
    """Rebuild a config from `to_dict()` output (for example inside a Ray worker)."""
    return from_dict(PipelineConfig, raw, "")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{item}' has an empty key part")
    try:
        value = read_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = Text(text)
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if isinstance(nxt, str) and i == 0 and p in _PRESET_SECTIONS:
            nxt = {"preset": nxt}  # `model: tiny` then `model.d_model=256`
        if nxt is None:
            nxt = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set '{key}'")
        node[p] = nxt
        node = nxt
    node[parts[-1]] = value


_PRESET_SECTIONS = ("model",)


def _expand_presets(raw: dict[str, Any]) -> None:
    """`model: tiny` or `model: {preset: tiny, ...}` -> ModelConfig.from_name("tiny") with the rest on top."""
    value = raw.get("model")
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict) or "preset" not in value:
        return
    name = value.pop("preset")
    names = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    if name not in names:
        raise ConfigError(f"model.preset: unknown preset '{name}'; allowed: {', '.join(names)}")
    raw["model"] = dataclasses.asdict(ModelConfig.from_name(name)) | value


def check_across_sections(cfg: PipelineConfig) -> None:
    """Refuse settings of two sections that cannot work together, naming both keys.

    (Whether train.max_tokens holds the longest pair depends on the data: pipeline/train.py
    check_training_inputs measures it before Ray Train starts.)
    """
    side, seq = cfg.data.max_tokens_per_side, cfg.model.max_seq_len
    if side > seq - 2:  # a side is framed with a begin and an end token: [bos] + tgt + [eos]
        raise ConfigError(
            f"data.max_tokens_per_side={side} does not fit model.max_seq_len={seq} (a side plus its begin and end "
            f"tokens); lower data.max_tokens_per_side to at most {seq - 2} or raise model.max_seq_len"
        )
