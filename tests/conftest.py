import importlib
import os
import pkgutil

import pytest
import torch

import torchpint
from torchpint.testing.processes import isolated_port

launch = importlib.import_module("torchpint.run.launch")  # the module (torchpint.run.launch is also a function)

# Tests run many small solves; one thread each keeps 2-core machines responsive and results
# independent of the thread count.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The fork server that starts the tests' local workers imports every torchpint module (and with them
# scikit-learn, scipy, numba), matplotlib and torch._dynamo once, not each worker anew: the library
# preloads only torch and the CLI, and a worker of paranet or layer-parallel training then spends
# about 3 s of CPU importing (1.3 s its modules, 1.6 s torch._dynamo, which the first torch.optim
# optimizer imports), far more than its training takes at the tests' sizes.  Workers are still fresh
# processes forked from that server, as the library starts them.
launch._PRELOAD = [*launch._PRELOAD, "torch._dynamo", "matplotlib.pyplot",
                   *(m.name for m in pkgutil.walk_packages(torchpint.__path__, "torchpint.") if m.name != "torchpint.__main__")]

# Local workers' process groups take their port from this xdist worker's own range (see
# isolated_port): with two xdist workers, the other one's jobs must not be given the same port.
launch.free_port = isolated_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests first (otherwise in collection order): with ``-n 2`` (pytest-xdist, see
    pyproject.toml) the long multi-process tests are dealt out to both workers at the start and the
    short ones fill the gaps, instead of one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
