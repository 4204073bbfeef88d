import numpy as np
import pytest

import mindspore as ms

ms.set_device("CPU")
ms.runtime.launch_blocking()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
