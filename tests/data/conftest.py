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


def _init_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def _ray_session():
    """Starts the session's Ray (unless another fixture already did) and stops it at the end."""
    import ray
    import ray.cloudpickle

    # Ray workers cannot import this conftest by name; ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        _init_ray()
    yield
    if started and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A real local Ray with 2 CPUs, shared by the session (or with another fixture that started it).

    Checked for each test: under `make test` (pytest-xdist) a worker process runs test files of other
    folders between these, and a pipeline test's own Ray (pipeline_testlib.fresh_ray) shuts the shared
    one down on its way out.
    """
    import ray

    if not ray.is_initialized():
        _init_ray()
    return ray


@pytest.fixture
def byte_tokenizer_loader():
    """`tokenizer_loader` for encode_shards: ignores the directory, returns a ByteTokenizer."""
    return load_byte_tokenizer


@pytest.fixture
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()
