"""The merge loop of `bpe.learn_merges`, compiled with numba: same algorithm, same results, arrays instead of lists.

Used when numba is installed and the word table is large (see `bpe.learn_merges`); the pure-Python loop
stays the reference and the tests check that both give identical merges. Only training compiles:
encoding stays in Python (see `BPETokenizer._encode_pieces` for the figures). The compiled code is
cached once per machine in the user's cache folder (`user_cache_dir`).

Layout: all words' symbols in one int32 array `syms` (word i at syms[wstart[i] : wstart[i] + wlen[i]],
merged in place, so a word only shrinks); the pair -> words index is a linked list of entries
(ent_word, ent_next) with a head per pair; a word is visited once per merge (`visited`). A token's
content is a list of atoms (its bytes for byte_bpe), kept to detect a merge whose result already
exists, which then reuses that token's id as the Python loop does.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.core import config as numba_config
from numba.typed import Dict


def user_cache_dir() -> Path:
    """Where numba keeps this module's machine code: $NUMBA_CACHE_DIR, else ~/.cache/tpipe/numba.

    Never `__pycache__` beside this file: that folder may be a model's code inside an MLflow artifact
    store (code_paths) or a read-only install, and a store must not change when a model is loaded.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tpipe" / "numba"


if not numba_config.CACHE_DIR:  # read by `cache=True` below, when each function is decorated
    numba_config.CACHE_DIR = str(user_cache_dir())

_SHIFT = 1 << 21


@njit(cache=True)
def _get(d, k, default):
    if k in d:
        return d[k]
    return np.int64(default)


@njit(cache=True)
def _hash_atoms(buf, off, n):
    h = np.int64(1469598103934665603)
    for k in range(n):
        h = (h ^ np.int64(buf[off + k] + 7)) * np.int64(1099511628211)
    return h


@njit(cache=True)
def _same(buf, off1, n1, off2, n2):
    if n1 != n2:
        return False
    for k in range(n1):
        if buf[off1 + k] != buf[off2 + k]:
            return False
    return True


@njit(cache=True)
def _learn(syms, wstart, wlen, wcount, tbuf0, toff0, tlen0, vocab_size, min_frequency):
    S = np.int64(_SHIFT)
    n_words = wstart.shape[0]
    n_tokens = toff0.shape[0]
    # token contents (atoms), growing as merges add tokens
    tcap = max(vocab_size, n_tokens) + 1
    toff = np.empty(tcap, np.int64)
    tlen = np.empty(tcap, np.int64)
    toff[:n_tokens] = toff0
    tlen[:n_tokens] = tlen0
    bcap = tbuf0.shape[0] * 4 + 1024
    tbuf = np.empty(bcap, np.int64)
    tbuf[: tbuf0.shape[0]] = tbuf0
    bused = tbuf0.shape[0]
    by_hash = Dict.empty(key_type=types.int64, value_type=types.int64)
    for t in range(n_tokens):
        h = _hash_atoms(tbuf, toff[t], tlen[t])
        while h in by_hash:
            h += 1
        by_hash[h] = t

    counts = Dict.empty(key_type=types.int64, value_type=types.int64)
    heads = Dict.empty(key_type=types.int64, value_type=types.int64)
    cap = max(1024, 2 * syms.shape[0])
    ent_word = np.empty(cap, np.int32)
    ent_next = np.empty(cap, np.int64)
    n_ent = 0
    for i in range(n_words):
        s = wstart[i]
        c = wcount[i]
        for j in range(wlen[i] - 1):
            q = syms[s + j] * S + syms[s + j + 1]
            counts[q] = _get(counts, q, 0) + c
            ent_word[n_ent] = i
            ent_next[n_ent] = _get(heads, q, -1)
            heads[q] = n_ent
            n_ent += 1

    heap = [(np.int64(0), np.int64(0))]
    heap.pop()
    for q, c in counts.items():
        if c > 0:
            heap.append((-c, q))
    heapq.heapify(heap)

    visited = np.full(n_words, -1, np.int64)
    merges_a = np.empty(vocab_size + 16, np.int64)
    merges_b = np.empty(vocab_size + 16, np.int64)
    n_merges = 0
    while n_tokens < vocab_size and len(heap) > 0:
        neg, top = heap[0]
        true_count = _get(counts, top, 0)
        if -neg != true_count:  # stale entry
            if true_count > 0:
                heapq.heapreplace(heap, (-true_count, top))
            else:
                heapq.heappop(heap)
            continue
        if true_count < min_frequency:
            break
        heapq.heappop(heap)
        a = top // S
        b = top % S
        # the merged token's content: reuse an existing token with the same atoms
        n_new = tlen[a] + tlen[b]
        if bused + n_new > tbuf.shape[0]:
            bigger = np.empty(tbuf.shape[0] * 2 + n_new, np.int64)
            bigger[:bused] = tbuf[:bused]
            tbuf = bigger
        tbuf[bused : bused + tlen[a]] = tbuf[toff[a] : toff[a] + tlen[a]]
        tbuf[bused + tlen[a] : bused + n_new] = tbuf[toff[b] : toff[b] + tlen[b]]
        h = _hash_atoms(tbuf, bused, n_new)
        new = -1
        while h in by_hash:
            t = by_hash[h]
            if _same(tbuf, toff[t], tlen[t], bused, n_new):
                new = t
                break
            h += 1
        if new < 0:
            new = n_tokens
            toff[new] = bused
            tlen[new] = n_new
            bused += n_new
            by_hash[h] = new
            n_tokens += 1
        if n_merges == merges_a.shape[0]:
            ma = np.empty(merges_a.shape[0] * 2, np.int64)
            mb = np.empty(merges_a.shape[0] * 2, np.int64)
            ma[:n_merges] = merges_a
            mb[:n_merges] = merges_b
            merges_a, merges_b = ma, mb
        merges_a[n_merges] = a
        merges_b[n_merges] = b
        n_merges += 1
        del counts[top]
        e = np.int64(-1)
        if top in heads:
            e = heads[top]
            del heads[top]
        created = Dict.empty(key_type=types.int64, value_type=types.int64)
        while e != -1:
            i = ent_word[e]
            e = ent_next[e]
            if visited[i] == n_merges:
                continue
            visited[i] = n_merges
            s = wstart[i]
            L = wlen[i]
            c = wcount[i]
            out = s
            j = 0
            while j < L:
                x = syms[s + j]
                if x == a and j + 1 < L and syms[s + j + 1] == b:
                    if out > s:
                        prev = syms[out - 1] * S
                        q = prev + a
                        if q != top:
                            counts[q] = _get(counts, q, 0) - c
                        q = prev + new
                        counts[q] = _get(counts, q, 0) + c
                        if n_ent == ent_word.shape[0]:
                            ent_word, ent_next = _grow(ent_word, ent_next, n_ent)
                        ent_word[n_ent] = i
                        ent_next[n_ent] = _get(heads, q, -1)
                        heads[q] = n_ent
                        n_ent += 1
                        created[q] = 1
                    if j + 2 < L:
                        nxt = syms[s + j + 2]
                        q = b * S + nxt
                        if q != top:
                            counts[q] = _get(counts, q, 0) - c
                        q = new * S + nxt
                        counts[q] = _get(counts, q, 0) + c
                        if n_ent == ent_word.shape[0]:
                            ent_word, ent_next = _grow(ent_word, ent_next, n_ent)
                        ent_word[n_ent] = i
                        ent_next[n_ent] = _get(heads, q, -1)
                        heads[q] = n_ent
                        n_ent += 1
                        created[q] = 1
                    syms[out] = new
                    out += 1
                    j += 2
                else:
                    syms[out] = x
                    out += 1
                    j += 1
            wlen[i] = out - s
        for q in created.keys():
            c = _get(counts, q, 0)
            if c > 0:
                heapq.heappush(heap, (-c, q))
    return merges_a[:n_merges], merges_b[:n_merges]


@njit(cache=True)
def _grow(ent_word, ent_next, n):
    w2 = np.empty(ent_word.shape[0] * 2, np.int32)
    n2 = np.empty(ent_word.shape[0] * 2, np.int64)
    w2[:n] = ent_word[:n]
    n2[:n] = ent_next[:n]
    return w2, n2


def learn_merges_numba(
    words: list[list[int]], counts: list[int], tokens: list, vocab_size: int, min_frequency: int
) -> list[tuple[int, int]]:
    """`bpe.learn_merges` on arrays; `tokens` grows in place exactly as the Python loop grows it."""
    lens = np.fromiter((len(w) for w in words), dtype=np.int32, count=len(words))
    syms = np.fromiter((x for w in words for x in w), dtype=np.int64, count=int(lens.sum()))
    return learn_merges_arrays(syms, lens, np.asarray(counts, dtype=np.int64), tokens, vocab_size, min_frequency)


def byte_words_to_arrays(keys: list[bytes], byte_id: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pre-tokens as bytes -> (symbol ids of all words concatenated, word lengths), without Python lists."""
    lut = np.zeros(256, dtype=np.int64)
    for b, i in byte_id.items():
        lut[b] = i
    syms = lut[np.frombuffer(b"".join(keys), dtype=np.uint8)]
    lens = np.fromiter(map(len, keys), dtype=np.int32, count=len(keys))
    return syms, lens


def learn_merges_arrays(
    syms: np.ndarray, lens: np.ndarray, wcount: np.ndarray, tokens: list, vocab_size: int, min_frequency: int
) -> list[tuple[int, int]]:
    """The merge loop on words given as concatenated symbols + lengths; `tokens` grows in place."""
    starts = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=starts[1:])
    syms = np.ascontiguousarray(syms, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int32)
    # Atoms: a token's content. bytes -> its byte values; str (char_bpe symbols, specials) -> its code
    # points, negated so that a str never equals bytes (as in Python). Equal atoms <=> equal tokens.
    offs, lens_t, buf = [], [], []
    for t in tokens:
        offs.append(len(buf))
        if isinstance(t, bytes):
            buf.extend(t)
        else:
            buf.extend(-1 - ord(ch) for ch in t)
        lens_t.append(len(buf) - offs[-1])
    ma, mb = _learn(
        syms,
        starts,
        lens,
        np.ascontiguousarray(wcount, dtype=np.int64),
        np.asarray(buf, dtype=np.int64),
        np.asarray(offs, dtype=np.int64),
        np.asarray(lens_t, dtype=np.int64),
        vocab_size,
        min_frequency,
    )
    merges = list(zip(ma.tolist(), mb.tolist()))
    # Replay on the Python side so that `tokens` ends as the Python loop leaves it.
    token_id = {t: i for i, t in enumerate(tokens)}
    for a, b in merges:
        merged = tokens[a] + tokens[b]
        if merged not in token_id:
            token_id[merged] = len(tokens)
            tokens.append(merged)
    return merges
