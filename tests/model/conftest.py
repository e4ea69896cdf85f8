"""Model tests run with one intra-op thread: the machine is shared and OpenMP spinning against other
processes makes a 2-thread run many times slower than a 1-thread one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)

