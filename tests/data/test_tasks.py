"""data/tasks.py on a real local Ray: a failed task fails the step at once with the user's error, and
the other tasks are left to finish, never cancelled (Ray 2.60's cancel can end the driver)."""

from __future__ import annotations

import sys
import time

import pytest

from data.io import DataError
from data.tasks import gather


def _work(i: int) -> int:
    if i == 0:
        raise DataError("x.tsv line 3: 1 tab-separated fields")
    time.sleep(1.0)
    return i * i


def test_a_failed_task_raises_its_user_error_and_the_others_finish(ray_local):
    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    work = ray.remote(num_cpus=0.5)(_work)
    refs = [work.remote(i) for i in range(4)]
    with pytest.raises(DataError, match=r"^x\.tsv line 3: 1 tab-separated fields$"):
        gather(ray, refs, "prepare: read", "input pieces")
    # Not cancelled: each other task ran to the end and its result is still there to read.
    ready, running = ray.wait(refs[1:], num_returns=3, timeout=0)
    assert running == [] and ray.get(ready) == [1, 4, 9]


def test_results_come_back_in_the_order_of_the_refs(ray_local):
    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    work = ray.remote(num_cpus=0.5)(_work)
    assert gather(ray, [work.remote(i) for i in (3, 1, 2)]) == [9, 1, 4]
