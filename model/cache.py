"""Key/value caches for incremental decoding.

Self-attention keys/values grow by one position per decoding step (written into a buffer allocated
once for `capacity` positions, so a step costs no reallocation); cross-attention keys/values depend
only on the source, so they are projected once and reused at every step.

Notation: B batch (sentences × beams), H heads, L cached length, D head dim.
"""

from __future__ import annotations

from torch import Tensor


class LayerCache:
    """One decoder layer's keys and values."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0  # positions already cached; also the position of the next token
        self.k: Tensor | None = None  # (B, H, capacity, D)
        self.v: Tensor | None = None
        self.cross_k: Tensor | None = None  # (B, H, S, D), set on the first step
        self.cross_v: Tensor | None = None

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) after the cached prefix; return the whole (B, H, length, D) views."""
        B, H, T, D = k.shape
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; step {end} does not fit")
        if self.k is None:
            self.k = k.new_empty(B, H, self.capacity, D)
            self.v = v.new_empty(B, H, self.capacity, D)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Keep rows `index` (B',) of the cache.

        Beam search passes cross=False: a beam's parent is a beam of the same sentence, whose memory rows
        (and so cross-attention K/V) are identical, so copying them every step would be wasted work.
        """
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)
        if cross and self.cross_k is not None:
            self.cross_k = self.cross_k.index_select(0, index)
            self.cross_v = self.cross_v.index_select(0, index)


class DecoderCache:
    """All decoder layers' caches; `length` is the number of target positions already decoded."""

    def __init__(self, n_layers: int, capacity: int):
        self.layers = [LayerCache(capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        for layer in self.layers:
            layer.reorder(index, cross)
