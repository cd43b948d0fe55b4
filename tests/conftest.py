import torch
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cuda",
                     help="the device tests/test_device.py compares with the CPU (default cuda; skipped where unavailable)")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device under test (``--device``); the test is skipped where it is not available."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"device {device} is not available here")
    return device
