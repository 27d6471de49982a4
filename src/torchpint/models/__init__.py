"""Networks in stem/blocks/head form, ready to be split for parareal over depth."""

from torchpint.models.base import SequentialNet, StemBlocksHead
from torchpint.models.counting import count_flops, count_parameters
from torchpint.models.mlp import mlp
from torchpint.models.registry import build_model, model_names
from torchpint.models.resnet import preact_resnet
from torchpint.models.resnet1d import resnet1d
from torchpint.models.vgg import vgg16

__all__ = [
    "SequentialNet",
    "StemBlocksHead",
    "build_model",
    "count_flops",
    "count_parameters",
    "mlp",
    "model_names",
    "preact_resnet",
    "resnet1d",
    "vgg16",
]
