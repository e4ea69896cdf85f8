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

# Families that cover CJK, in order of preference; any other installed font that covers it also serves.
_CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
                 "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN", "Microsoft YaHei",
                 "SimHei", "PingFang SC", "Hiragino Sans GB", "Arial Unicode MS")
_CJK_FILE_HINTS = ("cjk", "wqy", "droidsansfallback", "sourcehan", "uming", "ukai", "yahei", "simhei", "pingfang",
                   "hiragino", "arialuni", "notosanssc", "notoserifsc")
_BASE_FAMILY = "DejaVu Sans"  # matplotlib's own font: Latin, Greek, Cyrillic, symbols
_charmaps: dict[str, frozenset[int]] = {}
_fonts: list[tuple[str, frozenset[int]]] = []  # (family, code points it covers), base font first


def _charmap(path: str) -> frozenset[int]:
    if path not in _charmaps:
        from matplotlib.ft2font import FT2Font

        try:
            _charmaps[path] = frozenset(FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            _charmaps[path] = frozenset()
    return _charmaps[path]


def label_fonts() -> list[tuple[str, frozenset[int]]]:
    """The fonts tick labels are drawn with: DejaVu Sans, then a CJK-capable font if this machine has one.

    Looked up once: in matplotlib's font list first, then in the system's font folders (a font
    installed after matplotlib built its cache, e.g. Debian's fonts-noto-cjk). Nothing is downloaded.
    """
    if _fonts:
        return _fonts
    from matplotlib import font_manager

    base = font_manager.findfont(_BASE_FAMILY, fallback_to_default=True)
    _fonts.append((_BASE_FAMILY, _charmap(base)))
    han = ord("中")
    known = sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name not in _CJK_FAMILIES, f.name))
    for f in known:
        if (f.name in _CJK_FAMILIES or any(h in Path(f.fname).name.lower() for h in _CJK_FILE_HINTS)) \
                and han in _charmap(f.fname):
            _fonts.append((f.name, _charmap(f.fname)))
            return _fonts
    weights = ("bold", "black", "heavy", "light", "thin", "medium", "semibold", "demilight", "extralight")
    candidates = [p for p in font_manager.findSystemFonts() if any(h in Path(p).name.lower() for h in _CJK_FILE_HINTS)]
    # the regular face first: tick labels are regular text
    for path in sorted(candidates, key=lambda p: (any(w in Path(p).name.lower() for w in weights), p)):
        if han in _charmap(path):
            font_manager.fontManager.addfont(path)
            name = font_manager.FontProperties(fname=path).get_name()
            _fonts.append((name, _charmap(path)))
            break
    return _fonts


def token_label(token: str | bytes) -> str:
    r"""How a token is written on an axis: its text where it is whole UTF-8 and every character has a
    glyph; escapes where not, so nothing is drawn as an empty box or U+FFFD.

    b' the' -> ' the';  b'\xe4\xb8\xad' -> '中' (with a CJK font; else '\u4e2d');  b'\xe4\xb8' -> '\xe4\xb8'
    """
    text = token.decode("utf-8", "backslashreplace") if isinstance(token, bytes) else token
    covered = [cmap for _, cmap in label_fonts()]
    return "".join(
        c if c == "\\" or any(ord(c) in cmap for cmap in covered) else
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        for c in text
    )


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
    src_tokens: Sequence[str | bytes],
    tgt_tokens: Sequence[str | bytes],
    path: str | Path,
    head: int | None = None,
    dpi: int = 100,
) -> Path:
    """Render one example's attention, one row per kind (encoder self, decoder self, cross), one column
    per layer, and save it to `path` (PNG). Returns the path.

    Args:
        weights: a `model.transformer.Inspection`, or a mapping with any of the keys
            "encoder_self", "decoder_self", "cross", each a list (one per layer) of (H, Tq, Tk) weights.
        src_tokens: the S source tokens, in order (the keys of cross-attention): str, or the token's
            bytes (a byte-level token may be part of a character); labelled by `token_label`.
        tgt_tokens: the T decoder-input tokens (BOS first) (the queries of cross-attention).
        path: where to write the PNG; parent folders are created.
        head: draw this head only; None averages the heads.
    """
    get = weights.get if isinstance(weights, Mapping) else lambda k: getattr(weights, k, None)
    tokens = {"src": [token_label(t) for t in src_tokens], "tgt": [token_label(t) for t in tgt_tokens]}
    families = [name for name, _ in label_fonts()]
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
            ax.set_xticks(range(len(tokens[k_side])), tokens[k_side], rotation=90, fontsize=6, fontfamily=families)
            ax.set_yticks(range(len(tokens[q_side])), tokens[q_side], fontsize=6, fontfamily=families)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)  # figures are global state in pyplot; a long training run would leak them
    return path
