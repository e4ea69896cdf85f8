"""Sequence framing: how a sentence's token ids become a row the model reads. Written once here.

    source row:  ids + [eos]              the encoder's input, (B, S)
    target row:  [bos] + ids + [eos]      the decoder reads tgt[:, :-1] and predicts tgt[:, 1:], (B, T)
    padding:     rows right-padded with pad_id to the longest row of the batch

A model with `max_seq_len` positions takes at most max_seq_len - 1 source ids and max_seq_len - 2
target ids (the room its special tokens need). The list forms (`frame_source`, `frame_target`,
`pad_rows`) serve the Translator, validation BLEU and the pictures; the loader's collate frames a
whole batch at once from flat arrays (`frame_sources`, `frame_targets`), with the same result
(tests/data/test_framing.py).
"""

from __future__ import annotations

import numpy as np


def frame_source(ids: list[int], eos: int, max_len: int) -> list[int]:
    """Source ids clipped to the model's max_len - 1, then EOS.

    >>> frame_source([5, 6, 7], eos=2, max_len=3)
    [5, 6, 2]
    """
    return ids[: max_len - 1] + [eos]


def frame_target(ids: list[int], bos: int, eos: int, max_len: int) -> list[int]:
    """BOS, target ids clipped to the model's max_len - 2, then EOS.

    >>> frame_target([5, 6, 7], bos=1, eos=2, max_len=4)
    [1, 5, 6, 2]
    """
    return [bos] + ids[: max_len - 2] + [eos]


def pad_rows(rows: list[list[int]], pad: int) -> np.ndarray:
    """Framed rows as one (B, W) int64 array, right-padded with `pad`.

    >>> pad_rows([[5, 2], [7, 8, 2]], pad=0)
    array([[5, 2, 0],
           [7, 8, 2]])
    """
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    starts = np.zeros(len(rows), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    values = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lens.sum()))
    return pad_gather(values, starts, lens, int(lens.max(initial=0)), 0, pad)


def frame_sources(values: np.ndarray, starts: np.ndarray, lens: np.ndarray, eos: int, pad: int) -> np.ndarray:
    """Rows values[starts[i] : starts[i] + lens[i]] framed as sources: (B, max len + 1), ids + [eos]."""
    src = pad_gather(values, starts, lens, int(lens.max()) + 1, 0, pad)
    src[np.arange(len(lens)), lens] = eos
    return src


def frame_targets(values: np.ndarray, starts: np.ndarray, lens: np.ndarray, bos: int, eos: int, pad: int) -> np.ndarray:
    """Rows values[starts[i] : starts[i] + lens[i]] framed as targets: (B, max len + 2), [bos] + ids + [eos]."""
    tgt = pad_gather(values, starts, lens, int(lens.max()) + 2, 1, pad)
    tgt[:, 0] = bos
    tgt[np.arange(len(lens)), lens + 1] = eos
    return tgt


def pad_gather(values: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int, shift: int, pad: int) -> np.ndarray:
    """Rows values[starts[i] : starts[i] + lens[i]] placed at column `shift` of a (B, width) pad-filled array.

    >>> pad_gather(np.array([5, 6, 7]), np.array([0, 2]), np.array([2, 1]), 3, 0, 0)
    array([[5, 6, 0],
           [7, 0, 0]])
    """
    out = np.full((len(lens), width), pad, dtype=np.int64)
    col = np.arange(width - shift)
    valid = col[None, :] < lens[:, None]  # (B, width - shift)
    idx = starts[:, None] + col[None, :]
    out[:, shift:][valid] = values[idx[valid]]
    return out
