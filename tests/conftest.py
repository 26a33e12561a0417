import os
from pathlib import Path

import pytest
import torch

# Every state_dict key and shape of the RepDistiller / mdistiller CIFAR models at 100 classes (a copy of
# shared/reference/cifar_state_dicts.json, kept here so that the check runs in a fresh clone).
REFERENCE = Path(__file__).resolve().parent / "reference" / "cifar_state_dicts.json"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
