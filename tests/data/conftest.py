"""Fixtures for the data tests: a real local Ray, and a stand-in tokenizer until data/tokenizer lands."""

from __future__ import annotations

import sys

import pytest


class ByteTokenizer:
    """A real (tiny) tokenizer: UTF-8 bytes shifted past the 3 special ids. 'é' -> [198, 172]."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 259
    fingerprint = "test-bytes+3"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[b + 3 for b in t.encode("utf-8")] for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", "replace")


def load_byte_tokenizer(tokenizer_dir: str) -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs for the whole session (shared when another fixture started it)."""
    import ray
    import ray.cloudpickle

    # Ray workers cannot import this conftest by name; ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def byte_tokenizer_loader():
    """`tokenizer_loader` for encode_shards: ignores the directory, returns a ByteTokenizer."""
    return load_byte_tokenizer


@pytest.fixture
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()
