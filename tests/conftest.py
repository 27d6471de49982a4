import os

import torch

# Tests run many small solves; one thread each keeps 2-core machines responsive and results
# independent of the thread count.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
