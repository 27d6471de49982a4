"""Your own nn.Module trained by MGRIT over its training steps: the weights serial training gives.

    .venv/bin/python examples/mgrit_train_own_module.py

Training is the evolution ``w_{i+1} = Phi_i(w_i)`` (one optimizer step per training step, the
batches drawn up front in a seeded DataLoader order).  MGRIT solves all steps at once and
converges to the weights that ``torch.optim`` produces step by step.  Called on every rank of a
process group, ``train_mgrit`` splits the steps between the ranks; ``torchpint.run.launch(fn,
nproc=2)`` starts 2 such processes (call it under ``if __name__ == "__main__":``, as here).  On a
few cores that is slower than serial training (docs/mgrit-training.md has the cost model).
"""

import torch
from torch import nn

from torchpint.training import SGD, BatchSchedule, MGRITOptions, TrainingTask, torch_optim_train, train_mgrit


class TwoLayerNet(nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long()  # a rule for the network to learn
    torch.manual_seed(0)
    model = TwoLayerNet(6, 16, 2).double()
    steps = 128
    task = TrainingTask(model, nn.functional.cross_entropy,
                        BatchSchedule.from_loader(x, y, steps, batch_size=20, seed=1),  # the DataLoader's order
                        SGD(lr=0.1))

    result = train_mgrit(task, MGRITOptions(cycle="V", lr_max=0.8))  # coarse steps: lr x2 per level, at most 0.8
    reference = torch_optim_train(task, keep="last")  # torch.optim.SGD, one step after another
    difference = float((result.weights - reference.weights).abs().max())
    print(f"MGRIT V-cycle over {steps} steps: {result.iterations} iterations, converged {result.converged}, "
          f"residuals {' '.join(f'{r:.1e}' for r in result.residuals)}")
    print(f"final weights vs torch.optim.SGD: largest difference {difference:.1e}")
    task.load_into(model, result.weights)  # destination first, then the flat weights
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).double().mean())
    print(f"training accuracy of the MGRIT weights: {accuracy:.3f}")


if __name__ == "__main__":
    main()
