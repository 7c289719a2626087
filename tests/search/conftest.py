"""The search tests build many small supernets: one thread runs them fastest, and far faster than threads fighting
over the few shared cores of a test machine."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These small models run fastest on one thread, and far slower when threads fight over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
