"""BC's fused update: the loss's gradients in closed form for categorical MLP policies.

:class:`BCGradients` computes :class:`~tdimitation.objectives.BCLoss` and its gradients
without autograd; :class:`BCFusedUpdate` runs a block of optimizer steps with them and
:class:`~tdimitation.fused.adam.FlatAdam`. The autograd update in
:class:`tdimitation.algorithms.BC` is the specification; this reproduces its arithmetic
(tested against it, and checked at the start of every fit on the first minibatch:
:func:`tdimitation.fused.fused_update_for`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import nn

from tdimitation.fused.adam import FlatAdam, adam_refusal
from tdimitation.fused.mlp import actor_kind, mlp_layout
from tdimitation.objectives.bc import BCLoss


class BCGradients:
    """:class:`~tdimitation.objectives.BCLoss` and its gradients, without autograd.

    For tdimitation's :class:`~tdimitation.policies.CategoricalActor` (the class itself)
    whose network is Linear layers with biases and a tanh or ReLU activation, and whose
    parameters all train. One ``backward()`` through autograd costs more than the whole
    hand-written pass at batch 32 on a CPU.

    With logits ``z``, ``lp = log_softmax(z)``, ``p = exp(lp)`` and ``H = -Σ p lp``:
    ``d(-lp[a])/dz = p - onehot(a)`` and ``d(-H)/dz = p (lp + H)``, so the loss's gradient
    with respect to the logits is ``(p - onehot(a) + ent_weight p (lp + H)) / batch``; it is
    then carried back through the Linear layers and activations, and the L2 penalty adds
    ``l2_weight θ``.

    Args:
        loss: the loss whose policy and weights to use.
    """

    def __init__(self, loss: BCLoss) -> None:
        reason = self.unsupported_reason(loss)
        if reason is not None:
            raise ValueError(f"BCGradients: {reason}")
        self.loss = loss
        layout = mlp_layout(loss.policy.net)
        self.linears = layout.linears
        self.activation = layout.activation
        self._minus_ones_cache: torch.Tensor | None = None

    @staticmethod
    def unsupported_reason(loss: BCLoss) -> str | None:
        """Why :class:`BCGradients` cannot handle ``loss``'s policy (None: it can)."""
        policy = loss.policy
        if actor_kind(policy) != "categorical":
            return (
                f"policy {type(policy).__name__} (the fused BC update implements "
                "CategoricalActor itself)"
            )
        if getattr(policy, "encoder", None) is not None:
            return "image encoders (convolutions) are trained through autograd"
        layout = mlp_layout(policy.net)
        if layout is None:
            return "the policy is not a Linear/activation stack with tanh or ReLU"
        expected, actual = layout.parameters(), list(policy.parameters())
        if len(actual) != len(expected) or any(
            a is not b for a, b in zip(actual, expected, strict=True)
        ):
            return "the policy has parameters outside its MLP"
        if not all(p.requires_grad for p in actual):
            return "some parameters are frozen"
        return None

    def parameters(self) -> list[nn.Parameter]:
        """The policy's parameters, in the order of the gradients."""
        return list(self.loss.policy.parameters())

    @torch.no_grad()
    def __call__(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        scale: float = 1.0,
        diagnostics: bool = False,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Gradients of ``scale * loss``, in the order of the policy's parameters.

        Also returns, if ``diagnostics``, the metrics of :meth:`BCLoss.loss_tensors` (else
        an empty dict).
        """
        loss, policy = self.loss, self.loss.policy
        activation, last = self.activation, len(self.linears) - 1
        x = policy.features(observation)
        inputs = []  # input of each Linear layer
        for k, linear in enumerate(self.linears):
            inputs.append(x)
            x = F.linear(x, linear.weight, linear.bias)
            if k < last:
                x = activation.forward_(x)
        lp = torch.log_softmax(x, -1)
        grad = lp.exp()
        if loss.ent_weight != 0.0 or diagnostics:
            neg_entropy = (grad * lp).sum(-1, keepdim=True)
        if loss.ent_weight != 0.0:
            grad = torch.addcmul(grad, grad, lp - neg_entropy, value=loss.ent_weight)
        index = action.long().unsqueeze(-1)
        grad.scatter_add_(-1, index, self._minus_ones(index, grad.dtype))
        grad.mul_(scale / observation.shape[0])
        grads: list[torch.Tensor] = []
        for k in range(last, -1, -1):
            grads.append(grad.sum(0))
            grads.append(torch.mm(grad.t(), inputs[k]))
            if k > 0:
                grad = activation.backward(torch.mm(grad, self.linears[k].weight), inputs[k])
        grads.reverse()  # weight, bias of the first layer, ...
        if loss.l2_weight != 0.0:
            alpha = loss.l2_weight * scale
            params = list(policy.parameters())
            grads = [g.add_(p, alpha=alpha) for g, p in zip(grads, params, strict=True)]
        if not diagnostics:
            return grads, {}
        log_prob = lp.gather(-1, index).squeeze(-1)
        neglogp = -log_prob.mean()
        entropy = -neg_entropy.mean()
        if loss.l2_weight != 0.0:
            l2_norm = torch.stack([p.pow(2).sum() for p in policy.parameters()]).sum() / 2
        else:
            l2_norm = torch.zeros((), device=observation.device)
        ent_loss = -loss.ent_weight * entropy
        l2_loss = loss.l2_weight * l2_norm
        metrics = {
            "loss": neglogp + ent_loss + l2_loss,
            "neglogp": neglogp,
            "entropy": entropy,
            "ent_loss": ent_loss,
            "prob_true_act": log_prob.exp().mean(),
            "l2_norm": l2_norm,
            "l2_loss": l2_loss,
        }
        return grads, metrics

    def _minus_ones(self, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        cached = self._minus_ones_cache
        if (
            cached is None
            or cached.shape != like.shape
            or cached.dtype != dtype
            or cached.device != like.device
        ):
            cached = torch.full(like.shape, -1.0, dtype=dtype, device=like.device)
            self._minus_ones_cache = cached
        return cached


class BCFusedUpdate:
    """A block of BC optimizer steps with closed-form gradients and :class:`FlatAdam`.

    Built by :func:`tdimitation.fused.fused_update_for` for exactly
    :class:`~tdimitation.objectives.BCLoss` over a policy :class:`BCGradients` supports, in
    float32 on one device, with an Adam :func:`~tdimitation.fused.adam.adam_refusal`
    accepts. Adam's update is the call ``optimizer.step()`` makes, on the parameters and
    the optimizer's own state (bit for bit the same); optimizer step hooks and Lightning's
    per-step hooks do not run inside a block.

    Args:
        loss: the loss whose gradients to compute.
        optimizer: the torch optimizer over the policy's parameters.
    """

    #: The loss this update implements, and the loss options it reads.
    loss_class = BCLoss
    options = ("ent_weight", "l2_weight")

    def __init__(self, loss: BCLoss, optimizer: torch.optim.Optimizer) -> None:
        self.loss, self.optimizer = loss, optimizer
        self.gradients = BCGradients(loss)
        self.adam = FlatAdam(optimizer, self.gradients.parameters())

    @classmethod
    def refusal(cls, loss: BCLoss, optimizer: torch.optim.Optimizer) -> str | None:
        """Why this update cannot replace autograd for ``loss`` and ``optimizer`` (None: it can)."""
        reason = BCGradients.unsupported_reason(loss)
        if reason is not None:
            return reason
        return adam_refusal(optimizer, list(loss.policy.parameters()))

    def parameters(self) -> list[nn.Parameter]:
        """The trained parameters, in the order of :meth:`minibatch_gradients`."""
        return self.gradients.parameters()

    def reference_loss(self, minibatch: TensorDictBase) -> torch.Tensor:
        """What the autograd update differentiates: ``forward``'s ``loss``."""
        return self.loss(minibatch)["loss"]

    def minibatch_gradients(self, minibatch: TensorDictBase) -> list[torch.Tensor]:
        """The closed-form gradients of :meth:`reference_loss` on ``minibatch``."""
        keys = self.loss.tensor_keys
        return self.gradients(minibatch[keys.observation], minibatch[keys.action])[0]

    @torch.no_grad()
    def run_block(
        self,
        obs_batches: Sequence[torch.Tensor],
        act_batches: Sequence[torch.Tensor],
        steps: int,
        accumulate: int,
        last: int,
    ) -> dict[str, torch.Tensor]:
        """``steps`` optimizer steps, each on the sum of ``accumulate`` micro-batches.

        Micro-batch ``i`` is ``obs_batches[i]``/``act_batches[i]``, gradients scaled by
        ``1/accumulate`` as the autograd update scales the loss. Returns the metrics of
        micro-batch ``last`` (``{}`` if it is not one).
        """
        scale = 1.0 / accumulate
        out: dict[str, torch.Tensor] = {}
        for k in range(steps):
            grads = None
            for m in range(accumulate):
                i = k * accumulate + m
                step_grads, metrics = self.gradients(
                    obs_batches[i], act_batches[i], scale, diagnostics=i == last
                )
                grads = (
                    step_grads
                    if grads is None
                    else [g.add_(h) for g, h in zip(grads, step_grads, strict=True)]
                )
                if i == last:
                    out = metrics
            self.adam.step(grads)
        return out
