import os

import pytest
import torch

# tests/ is on sys.path through pytest's own `pythonpath` (pyproject.toml), so every folder
# imports nets.py and helpers.py

torch.set_num_threads(int(os.environ.get("LOPINFER_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
