"""TokenBatchLoader: token-budget batches from token shards, bucketed by length, DDP-aware, resumable.

The plan of an epoch is computed from the length columns alone (8 bytes a row), the same on every
rank, from (seed, epoch):

    1. the row groups of all files, permuted;                      (shuffle=False: in file order)
    2. consecutive row groups form pools of about `pool_rows` rows;
    3. in each pool, rows sorted by length (random tie order) and cut greedily into batches with
       B x (max S + max T) <= max_tokens, where S = src_len + 1 (eos), T = tgt_len + 2 (bos, eos);
       the batches of a pool are then permuted;
    4. while the batch count is not a multiple of world_size, the batch with the most rows is split
       in two, so that every rank gets the same number of batches (uneven counts hang DDP) and the
       ranks together see every row exactly once;
    5. rank r takes batches r, r + W, r + 2W, ...

Token ids are read through Arrow one pool at a time (only the pools holding this rank's batches),
so memory stays flat as the corpus grows. `state_dict()` is (epoch, position): a loader restored
from it yields exactly the batches an uninterrupted one would have yielded next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from data.framing import frame_sources, frame_targets
from data.io import DataError


class TokenBatchLoader:
    """Iterate token-budget batches: {"src": LongTensor (B, S), "tgt": LongTensor (B, T)}.

    Args:
        paths: token shards (Parquet with src_ids, tgt_ids, src_len, tgt_len), e.g. `token_files(dir, "train")`.
        max_tokens: budget per batch, counting padding: B x (S + T) <= max_tokens.
        pad_id, bos_id, eos_id: the tokenizer's special ids.
        seed: shuffling seed; epoch e's order depends only on (seed, e).
        rank, world_size: this DDP rank and the number of ranks.
        shuffle: False keeps file order (validation); batches are still length-bucketed.
        pool_rows: rows sorted together for bucketing: larger is less padding, smaller is more random.
    """

    def __init__(
        self,
        paths: list[str],
        *,
        max_tokens: int,
        pad_id: int,
        bos_id: int,
        eos_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        pool_rows: int = 32768,
    ) -> None:
        if not paths:
            raise ValueError("TokenBatchLoader needs at least one token shard path")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..world_size-1 (world_size={world_size})")
        self.paths = [os.fspath(p) for p in paths]
        self.max_tokens, self.seed, self.rank, self.world_size = max_tokens, seed, rank, world_size
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.shuffle, self.pool_rows = shuffle, pool_rows
        self.epoch, self.position = 0, 0
        self._files: dict[int, pq.ParquetFile] = {}

        # Row groups as (file, row group, first global row, rows); lengths of every row, 2 bytes
        # each when they fit: with this rank's plan, the only per-row state kept (the corpus is not).
        units, src_len, tgt_len, start = [], [], [], 0
        for f, path in enumerate(self.paths):
            pf = pq.ParquetFile(path)
            for missing in {"src_ids", "tgt_ids", "src_len", "tgt_len"} - set(pf.schema_arrow.names):
                raise DataError(f"{path} has no column {missing!r}; is it a token shard from encode_shards?")
            md = pf.metadata
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                if n:
                    units.append((f, g, start, n))
                    start += n
            lens = pf.read(columns=["src_len", "tgt_len"])
            sl, tl = lens.column("src_len").to_numpy(), lens.column("tgt_len").to_numpy()
            if len(sl):
                cost = (sl.astype(np.int64) + 1) + (tl.astype(np.int64) + 2)
                worst = int(np.argmax(cost))
                if cost[worst] > max_tokens:
                    raise DataError(
                        f"row {worst} of {path} needs {cost[worst]} tokens (src_len {sl[worst]} + 1, "
                        f"tgt_len {tl[worst]} + 2) but max_tokens is {max_tokens} (train.max_tokens)"
                    )
            small = max(int(sl.max(initial=0)), int(tl.max(initial=0))) < np.iinfo(np.uint16).max
            src_len.append(sl.astype(np.uint16) if small else sl)
            tgt_len.append(tl.astype(np.uint16) if small else tl)
            del lens, sl, tl
        self._units = np.array(units, dtype=np.int64).reshape(-1, 4)
        self._src_len, self._tgt_len = np.concatenate(src_len), np.concatenate(tgt_len)  # int32 if any file needs it
        del src_len, tgt_len
        self.n_rows = len(self._src_len)
        if self.n_rows < world_size:
            raise DataError(
                f"{self.n_rows} rows in {len(self.paths)} token shard(s) ({self.paths[0]}, ...) cannot give each "
                f"of {world_size} rank(s) a batch; is this split empty?"
            )
        self._plan_epoch: int | None = None
        self._plan = np.zeros((0, 3), np.int64)  # this rank's batches: [pool, start, end) into its bucket order
        self._pools: list[np.ndarray] = []  # unit ids of each pool
        self._buckets: list[np.ndarray] = []  # each pool's positions sorted by length

    # ----------------------------------------------------------------------------------------
    # The plan

    def _pool_rows(self, units: np.ndarray) -> np.ndarray:
        """Global row ids of a pool, in the order its row groups are read."""
        return np.concatenate(
            [np.arange(self._units[u, 2], self._units[u, 2] + self._units[u, 3], dtype=np.int64) for u in units]
        )

    def _make_plan(self, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """The same on all ranks: (pools as unit ids, each pool's positions in bucket order, and every
        batch of the epoch as a row [pool, start, end) into its pool's bucket order)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._units)) if self.shuffle else np.arange(len(self._units))
        pools, cur, cur_rows = [], [], 0
        for u in order:
            cur.append(u)
            cur_rows += int(self._units[u, 3])
            if cur_rows >= self.pool_rows:
                pools.append(np.array(cur))
                cur, cur_rows = [], 0
        if cur:
            pools.append(np.array(cur))
        # Batches as index ranges rather than arrays: 4 bytes a row and 24 a batch, no Python objects.
        buckets, tables = [], []
        for p, pool in enumerate(pools):
            rows = self._pool_rows(pool)
            pos = rng.permutation(len(rows)) if self.shuffle else np.arange(len(rows))  # random order of ties
            s = self._src_len[rows[pos]].astype(np.int32) + 1
            t = self._tgt_len[rows[pos]].astype(np.int32) + 2
            order = np.lexsort((t, s))  # by padded source length, then target length
            pos, s, t = pos[order].astype(np.int32), s[order], t[order]
            bounds = np.array([0, *_cut_batches(s, t, self.max_tokens), len(pos)], dtype=np.int64)
            starts, ends = bounds[:-1], bounds[1:]
            if self.shuffle:
                perm = rng.permutation(len(starts))
                starts, ends = starts[perm], ends[perm]
            buckets.append(pos)
            tables.append(np.stack([np.full(len(starts), p, dtype=np.int64), starts, ends], axis=1))
        batches = np.concatenate(tables)  # (n_batches, 3)
        while len(batches) % self.world_size:
            i = int(np.argmax(batches[:, 2] - batches[:, 1]))  # the first of the largest
            p, a, b = (int(x) for x in batches[i])
            if b - a < 2:
                raise DataError(
                    f"cannot split {len(batches)} single-row batches evenly over {self.world_size} ranks "
                    f"({self.paths[0]}, ...); raise train.max_tokens or add data"
                )
            mid = a + (b - a) // 2
            batches = np.concatenate([batches[:i], [[p, a, mid], [p, mid, b]], batches[i + 1 :]])
        return pools, buckets, batches

    def _ensure_plan(self) -> None:
        if self._plan_epoch != self.epoch:
            self._plan_epoch = None
            self._pools, self._buckets, self._plan = [], [], np.zeros((0, 3), np.int64)  # free the old plan first
            self._pools, self._buckets, batches = self._make_plan(self.epoch)
            self._plan = np.ascontiguousarray(batches[self.rank :: self.world_size])
            self._plan_epoch = self.epoch

    def epoch_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Global row ids of this rank's batches in `epoch` (default: the current one), for tests and tools."""
        if epoch is None or epoch == self.epoch:
            self._ensure_plan()
            pools, buckets, plan = self._pools, self._buckets, self._plan
        else:
            pools, buckets, batches = self._make_plan(epoch)
            plan = batches[self.rank :: self.world_size]
        rows = {p: self._pool_rows(pools[p]) for p in set(plan[:, 0].tolist())}
        return [rows[p][buckets[p][a:b]] for p, a, b in plan.tolist()]

    # ----------------------------------------------------------------------------------------
    # The protocol the training loop uses

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; the current epoch keeps its position (resume)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch; the same on every rank."""
        self._ensure_plan()
        return len(self._plan)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "max_tokens": self.max_tokens,
            "n_rows": self.n_rows,
            "shuffle": self.shuffle,
            "pool_rows": self.pool_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` stopped; refuses a state whose batches would differ from this loader's."""
        for key in ("seed", "world_size", "max_tokens", "n_rows", "shuffle", "pool_rows"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has {getattr(self, key)!r}; "
                    "an exact resume needs the same data, seed, world_size and batching"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's remaining batches of the current epoch; then the epoch advances by one.

        A state saved after the last batch of an epoch gives one empty pass, then the next epoch:
        the same batches in the same order, and the epoch count stays in step with a trainer's.
        """
        self._ensure_plan()
        loaded_pool, pool = -1, None
        while self.position < len(self._plan):
            p, a, b = (int(x) for x in self._plan[self.position])
            pos = self._buckets[p][a:b]
            if p != loaded_pool:
                pool, loaded_pool = None, p  # free the previous pool before reading the next
                pool = self._read_pool(self._pools[p])
            batch = self._collate(pool, pos)
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    # ----------------------------------------------------------------------------------------
    # Reading and collating

    def _file(self, f: int) -> pq.ParquetFile:
        if f not in self._files:
            self._files[f] = pq.ParquetFile(self.paths[f], memory_map=True)
        return self._files[f]

    def _read_pool(self, units: np.ndarray) -> dict[str, np.ndarray]:
        """The ids of a pool's row groups as flat int32 arrays, with where each global row starts."""
        src_vals, tgt_vals, rows = [], [], []
        for u in units:
            f, g, first, n = (int(x) for x in self._units[u])
            t = self._file(f).read_row_group(g, columns=["src_ids", "tgt_ids"])
            src_vals.append(t.column("src_ids").combine_chunks().flatten().to_numpy())
            tgt_vals.append(t.column("tgt_ids").combine_chunks().flatten().to_numpy())
            rows.append(np.arange(first, first + n, dtype=np.int64))
        rows_all = np.concatenate(rows)
        src_len, tgt_len = self._src_len[rows_all].astype(np.int64), self._tgt_len[rows_all].astype(np.int64)
        src_start = np.zeros(len(rows_all), np.int64)
        tgt_start = np.zeros(len(rows_all), np.int64)
        np.cumsum(src_len[:-1], out=src_start[1:])
        np.cumsum(tgt_len[:-1], out=tgt_start[1:])
        return {
            "src_len": src_len,
            "tgt_len": tgt_len,
            "src": np.concatenate(src_vals),
            "tgt": np.concatenate(tgt_vals),
            "src_start": src_start,
            "tgt_start": tgt_start,
        }

    def _collate(self, pool: dict[str, np.ndarray], pos: np.ndarray) -> dict[str, torch.Tensor]:
        sl, tl = pool["src_len"][pos], pool["tgt_len"][pos]
        src = frame_sources(pool["src"], pool["src_start"][pos], sl, self.eos_id, self.pad_id)  # (B, S)
        tgt = frame_targets(pool["tgt"], pool["tgt_start"][pos], tl, self.bos_id, self.eos_id, self.pad_id)  # (B, T)
        return {"src": torch.from_numpy(src), "tgt": torch.from_numpy(tgt)}


def _cut_batches(s: np.ndarray, t: np.ndarray, max_tokens: int) -> list[int]:
    """Greedy cut points for rows in bucket order: a batch grows while rows x (max s + max t) fits.

    >>> _cut_batches(np.array([2, 2, 3, 9]), np.array([3, 3, 3, 9]), 12)
    [2, 3]

    A plain loop on Python ints (about 0.7 us a row): numpy over windows was slower, since batches
    hold only tens of rows.
    """
    cuts, n, ms, mt = [], 0, 0, 0
    for i, (a, b) in enumerate(zip(s.tolist(), t.tolist())):
        ns, nt = max(ms, a), max(mt, b)
        if n and (n + 1) * (ns + nt) > max_tokens:
            cuts.append(i)
            n, ms, mt = 1, a, b
        else:
            n, ms, mt = n + 1, ns, nt
    return cuts
