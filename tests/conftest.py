import os

import pytest
import torch

# On 2 cores, tiny ops are much faster with one thread (and parallel test workers don't fight).
torch.set_num_threads(int(os.environ.get("MINIDS_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
