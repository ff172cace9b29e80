"""Shared fixtures of the library's unit tests."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread avoids OpenMP waits on a busy machine (restored after).

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
