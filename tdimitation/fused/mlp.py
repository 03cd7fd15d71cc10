"""Reading tdimitation's MLP networks for the fused updates: layers, activations, actors.

One layout reader and one activation table serve PPO's and BC's closed-form gradients. A
network they accept is exactly what :func:`tdimitation.nn.build_mlp` builds: ``Linear``
layers with biases separated by one activation type from :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tdimitation.policies.actors import CategoricalActor, GaussianActor


@dataclass(frozen=True)
class Activation:
    """An activation as the closed-form gradients run it.

    Attributes:
        forward_: the activation applied in place (to a fresh pre-activation tensor: its
            output is what the backward pass needs).
        backward: ``(gradient of the output, output) -> gradient of the input``, with the
            kernel autograd itself runs for that activation.
    """

    forward_: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(grad, out, 0)


#: The activations the fused updates implement, by module type.
ACTIVATIONS: dict[type[nn.Module], Activation] = {
    nn.Tanh: Activation(torch.tanh_, torch.ops.aten.tanh_backward),
    nn.ReLU: Activation(torch.relu_, _relu_backward),
}


@dataclass(frozen=True)
class MLPLayout:
    """The ``Linear`` layers of a ``build_mlp`` network and its activation.

    Attributes:
        linears: the layers, input first (the last one is the output head).
        activation_type: the activation's module type (None without hidden layers).
    """

    linears: list[nn.Linear]
    activation_type: type[nn.Module] | None

    @property
    def activation(self) -> Activation | None:
        return ACTIVATIONS.get(self.activation_type)

    @property
    def hidden_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(m.weight.shape) for m in self.linears[:-1]]

    def parameters(self) -> list[nn.Parameter]:
        """Weight and bias of each layer, in the network's order."""
        return [t for linear in self.linears for t in (linear.weight, linear.bias)]


def mlp_layout(net: nn.Module | None) -> MLPLayout | None:
    """The layout of ``net`` if it is a Linear/activation stack the fused updates know."""
    if type(net) is not nn.Sequential or len(net) % 2 != 1:
        return None
    modules = list(net)
    linears, activations = modules[0::2], {type(m) for m in modules[1::2]}
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if len(activations) > 1 or not activations <= set(ACTIVATIONS):
        return None
    return MLPLayout(linears, next(iter(activations), None))


def actor_kind(actor: nn.Module) -> str | None:
    """``"categorical"``/``"gaussian"`` for exactly those actor classes, else None.

    Exact types: a subclass may change what the network computes.
    """
    return {CategoricalActor: "categorical", GaussianActor: "gaussian"}.get(type(actor))
