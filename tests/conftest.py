import torch
import pytest


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
