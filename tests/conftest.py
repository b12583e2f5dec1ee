import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(2)

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture(scope="session")
def tiny():
    from tinymodels import tiny_hybrid
    return tiny_hybrid()


@pytest.fixture(scope="session")
def tiny_images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def xxs():
    from qhyvit_fx.models import create_model
    return create_model("mobilevit_xxs").model
