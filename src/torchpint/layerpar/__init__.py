"""Layer-parallel residual networks: MGRIT across the layers, forward and adjoint (backward).

The complementary approach to the parareal networks (:mod:`torchpint.paranet`): the network
is kept exactly, and its forward pass ``x_{k+1} = x_k + h f_k(x_k)`` and its backward pass are
solved with MGRIT across the layers (Günther, Ruthotto, Schroder, Cyr, Gauger 2020; the style
of torchbraid), in pure PyTorch on :mod:`torchpint.engine` and torch.distributed.

    from torchpint.layerpar import LayerParallel
    net = LayerParallel(lambda: nn.Sequential(nn.Linear(32, 32), nn.Tanh()), layers=64, T=4.0,
                        opening=nn.Linear(64, 32), closing=nn.Linear(32, 10), levels=3, cf=4)
    opt = torch.optim.SGD(net.local_parameters(), lr=0.05)
    loss = F.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
    serial = net.to_sequential()          # the same network, sharing the weights

Design (see the module docstrings for the details):

* Forward: points ``0..L`` on the grid ``t_k = k h``; the step from ``t0`` to ``t1`` uses layer
  ``round(t0/h)`` with the step ``(round(t1/h) - round(t0/h)) h``, so coarse level ``l`` steps
  with every ``cf^l``-th layer's weights and the step ``cf^l h`` (as torchbraid).
* Backward: a custom autograd function whose backward solves the adjoint chain
  ``lambda_k = lambda_{k+1} + h J_{f_k}(x_k)^T lambda_{k+1}`` with MGRIT in reversed time, on
  ``ReversedComm`` and the mirrored partition (each rank keeps its layers and states),
  linearised at the forward solution (coarse levels: the injected states, the coarse layers,
  the larger step: the exact adjoint of the coarse forward step).  The forward solve's last
  sweep keeps its steps with their autograd graphs, so every adjoint step is a backward pass
  through them (no recomputation), and the adjoint's last sweep takes each layer's
  ``h (d f_k/d theta_k)^T lambda_{k+1}`` from the same backward pass as its step; the opening
  layer gets ``lambda_0``.  Converged, everything equals the serial autograd to the tolerance.
* One level (the exact pass): plain autograd through each rank's block of layers, pipelined
  over the ranks (one process: the serial network itself); equal to serial to rounding.
* ``final_relax`` (default on): each multilevel solve ends with C-, then F-relaxation and the
  last point from the one before it (torchbraid's final FC relaxation), in the last sweep the
  backward pass needs anyway; ``warm_start``: each solve starts from the previous call's
  solution when the batch shape is the same (else cold); ``last_stats`` has the iterations.
* Distribution (:mod:`~torchpint.layerpar.layout`): rank ``r`` owns the points ``[lo, hi)``
  and the layers whose input point it owns; before each forward it refreshes its copies of the
  few layers owned elsewhere that its first point on each level steps with (``lo - 1`` on the
  finest level); after the forward solve it also keeps the step of layer ``hi - 1`` (computed
  by the next rank, but adjoint-stepped here).  Opening and closing layers live on rank 0, which sends ``x_0``'s
  shape, receives ``x_L`` and sends ``dL/dx_L``; the output is shared with every rank so every
  rank runs the same training loop.
* Steps of a batch of intervals are one call: vmapped over stacked weights (GPU) or a loop of
  plain module calls (CPU, where vmapped convolutions are slower), ``step_mode``.
* Layer x data parallelism (``P = P_layers x D``): :func:`~torchpint.layerpar.layout.layer_data_comms`
  splits the world into ``D`` layer groups (each one network, on its :func:`batch_shard` of the
  batch) and ``P_layers`` data groups; ``LayerParallel(comm=layer, data_comm=data)`` and, after
  ``loss.backward()``, ``net.average_gradients(share)``: one flattened all-reduce per step gives
  every copy the whole batch's gradients.
* Non-finite values: the first layer that turns finite activations (or adjoint states) into
  NaN/Inf is named, the same on every rank; if the exact pass is finite, the coarse level is
  blamed (its larger steps are unstable).

Limitations: step layers must be pure functions of (parameters, input) of the same shape
(no batch norm buffers, no dropout); every rank keeps a full copy of the module (only the
activations are distributed).  Measurements: docs/layer-parallel.md.
"""

from torchpint.layerpar.layout import LayerLayout, batch_shard, layer_data_comms, layer_data_ranks, plan_layout
from torchpint.layerpar.network import (
    LayerParallel,
    NonFiniteActivationError,
    ResidualStep,
)

__all__ = [
    "LayerLayout",
    "LayerParallel",
    "NonFiniteActivationError",
    "ResidualStep",
    "batch_shard",
    "layer_data_comms",
    "layer_data_ranks",
    "plan_layout",
]
