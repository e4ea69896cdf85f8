"""Pictures for MLflow: the attention heatmap of one example, per layer, rendered to PNG (Agg, no display).

    ins = model.inspect(src_ids, tgt_ids)                    # model.transformer.Inspection
    attention_heatmap_png(ins, src_tokens, tgt_tokens, "attention.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: Ray workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# (attribute of Inspection / key of the mapping, panel title, query tokens, key tokens)
_KINDS = (
    ("encoder_self", "encoder self-attention", "src", "src"),
    ("decoder_self", "decoder self-attention", "tgt", "tgt"),
    ("cross", "cross-attention", "tgt", "src"),
)


def _as_array(w: Any) -> np.ndarray:
    """A torch tensor or array-like (H, Tq, Tk) or (Tq, Tk) -> float ndarray."""
    if hasattr(w, "detach"):  # a torch.Tensor; imported lazily so this module does not need torch
        w = w.detach().float().cpu().numpy()
    return np.asarray(w, dtype=np.float64)


def attention_heatmap_png(
    weights: Any,
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    path: str | Path,
    head: int | None = None,
    dpi: int = 100,
) -> Path:
    """Render one example's attention, one row per kind (encoder self, decoder self, cross), one column
    per layer, and save it to `path` (PNG). Returns the path.

    Args:
        weights: a `model.transformer.Inspection`, or a mapping with any of the keys
            "encoder_self", "decoder_self", "cross", each a list (one per layer) of (H, Tq, Tk) weights.
        src_tokens: the S source token strings, in order (the keys of cross-attention).
        tgt_tokens: the T decoder-input token strings (BOS first) (the queries of cross-attention).
        path: where to write the PNG; parent folders are created.
        head: draw this head only; None averages the heads.
    """
    get = weights.get if isinstance(weights, Mapping) else lambda k: getattr(weights, k, None)
    tokens = {"src": list(src_tokens), "tgt": list(tgt_tokens)}
    rows = []
    for key, title, q_side, k_side in _KINDS:
        layers = get(key)
        if not layers:
            continue
        mats = []
        for i, w in enumerate(layers):
            a = _as_array(w)
            if a.ndim == 3:
                if head is not None and not 0 <= head < a.shape[0]:
                    raise ValueError(f"head={head} but {key} layer {i} has {a.shape[0]} heads")
                a = a.mean(axis=0) if head is None else a[head]
            want = (len(tokens[q_side]), len(tokens[k_side]))
            if a.shape != want:
                raise ValueError(
                    f"{key} layer {i} weights are {a.shape} but the tokens give {want} "
                    f"({q_side} × {k_side}); pass the tokens of the inspected example"
                )
            mats.append(a)
        rows.append((title, q_side, k_side, mats))
    if not rows:
        raise ValueError("no attention weights given: expected encoder_self, decoder_self or cross")

    n_cols = max(len(m) for _, _, _, m in rows)
    side = 0.28 * max(len(tokens["src"]), len(tokens["tgt"])) + 1.5
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(side * n_cols, side * len(rows)), squeeze=False)
    for r, (title, q_side, k_side, mats) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(mats):
                ax.axis("off")
                continue
            ax.imshow(mats[c], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_title(f"{title}, layer {c}" + ("" if head is None else f", head {head}"), fontsize=8)
            ax.set_xticks(range(len(tokens[k_side])), tokens[k_side], rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens[q_side])), tokens[q_side], fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)  # figures are global state in pyplot; a long training run would leak them
    return path
