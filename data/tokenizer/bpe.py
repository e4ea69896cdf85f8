"""The two halves of BPE on integer symbols: learning merges from word counts, and applying them.

Learning (Sennrich et al. 2016, run the way Hugging Face `tokenizers` runs it) is specified by
`textbook_merges` below, the whole algorithm in a dozen lines:

    words {(a, b, c): 5, (a, b): 2}  ->  pair counts {(a, b): 7, (b, c): 5}  ->  merge (a, b) into X
    words {(X, c): 5, (X,): 2}       ->  pair counts {(X, c): 5}             ->  merge (X, c) ...

It recounts every pair after every merge. `learn_merges` (and its numba copy, _bpe_numba.py) gives
the same merges incrementally; tests/data/tokenizer/test_tokenizer_merge_parity.py ties the three.
The loop is incremental: a merge visits only the words that contain the pair (the pair -> words index),
adjusts the counts of the neighbouring pairs, and pushes the pairs it created onto a heap. Heap entries
are not updated in place; an entry whose count no longer matches the table is stale and is re-pushed
with the true count when it surfaces. Equal counts go to the smallest (left id, right id), which is
Hugging Face's tie-break.

Applying: inside one pre-token, repeatedly merge the adjacent pair with the lowest rank (all its
occurrences, left to right) until no pair has a rank. This equals applying the merge list in order.
"""

from __future__ import annotations

import heapq
import importlib.util
from collections import defaultdict
from collections.abc import Callable, Iterable

# Pairs are packed as left * _SHIFT + right inside the merge loop (ids stay below 2**21).
_SHIFT = 1 << 21
# Larger than any rank.
_NO_RANK = 1 << 62


def count_pairs(ids: Iterable[int]) -> dict[tuple[int, int], int]:
    """[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}"""
    ids = list(ids)
    counts: dict[tuple[int, int], int] = {}
    for p in zip(ids, ids[1:]):
        counts[p] = counts.get(p, 0) + 1
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Every occurrence of `pair`, left to right, becomes `new`: [1, 2, 3, 1, 2], (1, 2), 9 -> [9, 3, 9]"""
    out, j, n = [], 0, len(ids)
    while j < n:
        if j + 1 < n and ids[j] == pair[0] and ids[j + 1] == pair[1]:
            out.append(new)
            j += 2
        else:
            out.append(ids[j])
            j += 1
    return out


def textbook_merges(words: list[list[int]], counts: list[int], tokens: list, vocab_size: int, min_frequency: int = 1):
    """The specification of `learn_merges`: count adjacent pairs, merge the most frequent, repeat.

        words [[0, 1, 2], [0, 1]], counts [5, 2], tokens [b'a', b'b', b'c']
        pairs {(0, 1): 7, (1, 2): 5} -> merge (0, 1) into 3 = b'ab'  -> words [[3, 2], [3]]
        pairs {(3, 2): 5}            -> merge (3, 2) into 4 = b'abc' -> words [[4], [4]]
        -> merges [(0, 1), (3, 2)]; tokens gains b'ab' and b'abc'

    Ties go to the smallest (left id, right id); a merge whose result is already a token reuses that
    id. O(merges x corpus): for tests and for reading, never for training.
    """
    words = [list(w) for w in words]
    token_id = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[int, int]] = []
    while len(tokens) < vocab_size:
        pairs: dict[tuple[int, int], int] = {}
        for w, c in zip(words, counts):
            for p, k in count_pairs(w).items():
                pairs[p] = pairs.get(p, 0) + k * c
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p], p))  # the most frequent, then the smallest
        if pairs[pair] < min_frequency:
            break
        merged = tokens[pair[0]] + tokens[pair[1]]
        if merged not in token_id:
            token_id[merged] = len(tokens)
            tokens.append(merged)
        merges.append(pair)
        words = [merge_pair(w, pair, token_id[merged]) for w in words]
    return merges


def merge_backend(choice: str, n_words: int) -> str:
    """Which merge loop runs: 'python' (the reference) or 'numba' (the same loop compiled).

    auto: numba when it is installed and there are at least NUMBA_MIN_WORDS words (below that the
    Python loop finishes before numba would have loaded its compiled code).
    """
    if choice not in ("auto", "python", "numba"):
        raise ValueError(f"tokenizer.merge_backend must be auto, python or numba, got {choice!r}")
    if choice == "python":
        return "python"
    if importlib.util.find_spec("numba") is None:
        if choice == "numba":
            raise ValueError("tokenizer.merge_backend=numba but numba is not installed (pip install numba)")
        return "python"
    return "numba" if choice == "numba" or n_words >= NUMBA_MIN_WORDS else "python"


NUMBA_MIN_WORDS = 20_000


def learn_merges(
    words: list[list[int]],
    counts: list[int],
    tokens: list,
    vocab_size: int,
    min_frequency: int,
    progress: Callable[[int, tuple[int, int], int], None] | None = None,
    backend: str = "python",
) -> list[tuple[int, int]]:
    """Merge until `tokens` (id -> bytes or str) has `vocab_size` entries; `words` and `tokens` grow in place.

    words [[1, 2, 3], [1, 2]], counts [5, 2], tokens [.., b'a', b'b', b'c'] -> merges [(1, 2), (4, 3)],
    tokens gains b'ab' (id 4) and b'abc' (id 5).

    A merge whose result is already a token (b'a' + b'bc' after b'ab' + b'c') reuses that token's id and
    adds no entry, as Hugging Face's trainer does, so there can be more merges than new tokens.
    Stops early when no pair is seen `min_frequency` times (the caller reports how many it found).
    """
    if len(tokens) >= vocab_size:
        return []
    if backend == "numba":
        from data.tokenizer._bpe_numba import learn_merges_numba

        return learn_merges_numba(words, counts, tokens, vocab_size, min_frequency)
    if vocab_size >= _SHIFT:
        raise ValueError(f"vocab_size {vocab_size} is too large for the merge loop (at most {_SHIFT - 1})")
    token_id = {t: i for i, t in enumerate(tokens)}
    # A pair (x, y) is the int x * _SHIFT + y: cheaper to build and hash than a tuple, and ordered the
    # same way, so the heap's "smallest pair first" is still Hugging Face's tie-break.
    pair_counts: dict[int, int] = defaultdict(int)
    # pair -> indices of words that contain it (possibly stale: a word may have lost the pair since;
    # visiting it then finds nothing, which is cheaper than removing entries on every merge).
    where: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(words):
        if len(w) < 2:
            continue
        c = counts[i]
        for x, y in zip(w, w[1:]):
            q = x * _SHIFT + y
            pair_counts[q] += c
            where[q].append(i)

    # (-count, pair): the most frequent first, then the smallest (left id, right id).
    heap = [(-c, q) for q, c in pair_counts.items() if c > 0]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(tokens) < vocab_size and heap:
        neg, top = heap[0]
        true_count = pair_counts.get(top, 0)
        if -neg != true_count:  # stale: the pair lost occurrences since this entry was pushed
            if true_count > 0:
                heapq.heapreplace(heap, (-true_count, top))
            else:
                heapq.heappop(heap)
            continue
        if true_count < min_frequency:
            break
        heapq.heappop(heap)
        a, b = divmod(top, _SHIFT)
        merged = tokens[a] + tokens[b]
        new = token_id.get(merged)
        if new is None:
            new = token_id[merged] = len(tokens)
            tokens.append(merged)
        merges.append((a, b))
        del pair_counts[top]
        new_left = new * _SHIFT
        b_left = b * _SHIFT
        created: set[int] = set()
        created_add = created.add
        for i in set(where.pop(top, ())):
            w = words[i]
            if a not in w:
                continue  # stale index: the word lost every `a` since it was recorded
            # Jump from one `a` to the next with list.index (C speed); most words hold the pair once.
            left = w.count(a)
            j = w.index(a)
            n = len(w)
            c = counts[i]
            out: list[int] = []
            start = 0
            while True:
                left -= 1
                if j + 1 < n and w[j + 1] == b:
                    if j > start:
                        out += w[start:j]
                    if out:
                        prev = out[-1] * _SHIFT
                        q = prev + a
                        if q != top:
                            pair_counts[q] -= c
                        q = prev + new
                        pair_counts[q] += c
                        where[q].append(i)
                        created_add(q)
                    if j + 2 < n:
                        nxt = w[j + 2]
                        q = b_left + nxt
                        if q != top:
                            pair_counts[q] -= c
                        q = new_left + nxt
                        pair_counts[q] += c
                        where[q].append(i)
                        created_add(q)
                    out.append(new)
                    start = j = j + 2
                    if a == b:
                        left -= 1  # the pair used up two of the counted `a`s
                else:
                    j += 1
                if left <= 0:
                    break
                j = w.index(a, j)
            if start:
                if start < n:
                    out += w[start:]
                words[i] = out
        for q in created:
            c = pair_counts[q]
            if c > 0:
                heapq.heappush(heap, (-c, q))
        if progress is not None:
            progress(len(merges), (a, b), true_count)
    return merges


def apply_merges(ids: list[int], ranks: dict[tuple[int, int], int], results: dict[tuple[int, int], int]) -> list[int]:
    """Merge inside one pre-token. ranks {(1, 2): 0, (9, 3): 1}, results {(1, 2): 9, (9, 3): 10}:

    [1, 2, 3, 1, 2] -> [1, 2] is rank 0 -> [9, 3, 9] -> (9, 3) is rank 1 -> [10, 9]

    One rank per adjacent pair, kept up to date around each merge; min() and index() run at C speed
    and the leftmost occurrence of the lowest rank merges first, which is merging all of them left to right.
    """
    n = len(ids)
    if n < 2:
        return ids
    if n > 512:
        return _apply_merges_heap(ids, ranks, results)
    get = ranks.get
    inf = _NO_RANK
    ids = list(ids)
    rs = [get(p, inf) for p in zip(ids, ids[1:])]
    while True:
        r = min(rs)
        if r == inf:
            return ids
        k = rs.index(r)
        new = results[(ids[k], ids[k + 1])]
        ids[k] = new
        del ids[k + 1]
        del rs[k]
        if k > 0:
            rs[k - 1] = get((ids[k - 1], new), inf)
        if k < len(rs):
            rs[k] = get((new, ids[k + 1]), inf)
        elif not rs:
            return ids


def _apply_merges_heap(ids: list[int], ranks: dict[tuple[int, int], int], results: dict[tuple[int, int], int]) -> list[int]:
    """apply_merges for long pre-tokens in O(n log n): a linked list of symbols and a heap of (rank, position).

    Ties in rank go to the leftmost position, which is what merging all occurrences left to right does.
    """
    n = len(ids)
    sym = list(ids)
    nxt = list(range(1, n + 1))  # n means "none"
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for i in range(n - 1):
        r = ranks.get((sym[i], sym[i + 1]))
        if r is not None:
            heap.append((r, i, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    while heap:
        r, i, a, b = heapq.heappop(heap)
        j = nxt[i] if alive[i] else n
        if j >= n or sym[i] != a or sym[j] != b:
            continue  # stale: one side was merged away since this entry was pushed
        sym[i] = results[(a, b)]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
        p = prv[i]
        if p >= 0:
            rr = ranks.get((sym[p], sym[i]))
            if rr is not None:
                heapq.heappush(heap, (rr, p, sym[p], sym[i]))
        k = nxt[i]
        if k < n:
            rr = ranks.get((sym[i], sym[k]))
            if rr is not None:
                heapq.heappush(heap, (rr, i, sym[i], sym[k]))
    return [sym[i] for i in range(n) if alive[i]]


def trace_merges(
    ids: list[int], ranks: dict[tuple[int, int], int], results: dict[tuple[int, int], int]
) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """apply_merges that also returns each step as (rank, left, right, new), for `tokenizer explain`."""
    steps = []
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
        if not pairs:
            break
        pair = min(pairs, key=ranks.__getitem__)
        new = results[pair]
        steps.append((ranks[pair], pair[0], pair[1], new))
        ids = merge_pair(ids, pair, new)
    return ids, steps
