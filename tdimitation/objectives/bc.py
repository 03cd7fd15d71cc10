"""Behavioral-cloning loss as a torchrl ``LossModule``.

torchrl's own ``BCLoss`` cannot train a stochastic discrete policy on integer actions (it
feeds the *sampled* action to a cross-entropy) and has no entropy or L2
terms, so tdimitation has its own, with ``imitation``'s metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.errors import PolicyError
from tdimitation.policies.adapters import as_actor

# Activations whose derivative the analytic path knows, as f(grad, output) -> grad of input.
_ACTIVATION_BACKWARD = {
    nn.Tanh: (torch.tanh, torch.ops.aten.tanh_backward),
    nn.ReLU: (torch.relu, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
}


class BCLoss(LossModule):
    """Negative log-likelihood of expert actions, entropy bonus and L2 penalty.

    ``loss = neglogp - ent_weight * entropy + l2_weight * l2_norm`` with
    ``l2_norm = ½ Σ ||θ||²`` over the policy's parameters. Stochastic policies are read
    through :class:`~tdimitation.objectives.protocols.ActionEvaluator`
    (``evaluate_actions(observation, action) -> (log_prob, entropy)``): tdimitation's
    categorical and Gaussian actors, and torchrl ``ProbabilisticActor`` modules, which the
    constructor wraps in a :class:`~tdimitation.policies.adapters.TorchRLPolicy` (the
    wrapped module keeps its parameters; ``loss.policy.module`` is yours). For squashed
    Gaussians the entropy is estimated from a sample. Other policies are treated as
    deterministic: ``neglogp`` is then the squared error between the policy's (float)
    action and the expert's, and the entropy is 0; discrete deterministic policies are
    refused (an index has no gradient).

    Returns (``forward``/``loss_tensors``): ``loss``, ``neglogp``, ``entropy``,
    ``ent_loss``, ``prob_true_act`` (mean probability, or density, of the expert action),
    ``l2_norm``, ``l2_loss``.

    Keys (``set_keys``): ``observation``, ``action`` (the expert's action).

    Args:
        policy: the policy being trained (tdimitation actor, torchrl ``ProbabilisticActor``
            or a deterministic TensorDict module).
        ent_weight: weight of the entropy bonus.
        l2_weight: weight of the L2 penalty (use this instead of an optimizer's
            ``weight_decay``, which Adam couples to the gradient scale).
    """

    @dataclass
    class _AcceptedKeys:
        observation: NestedKey = "observation"
        action: NestedKey = "action"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self, policy: TensorDictModuleBase, *, ent_weight: float = 1e-3, l2_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.policy = as_actor(policy)
        self.ent_weight = float(ent_weight)
        self.l2_weight = float(l2_weight)
        self._tensor_keys = self._AcceptedKeys()
        self._minus_ones_cache: torch.Tensor | None = None

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action]

    @property
    def out_keys(self) -> list[str]:
        return ["loss", "neglogp", "entropy", "ent_loss", "prob_true_act", "l2_norm", "l2_loss"]

    def _log_prob_entropy(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        evaluate = getattr(self.policy, "evaluate_actions", None)
        if evaluate is not None:
            return evaluate(observation, action)
        log_prob_fn = getattr(self.policy, "log_prob", None)
        sample_fn = getattr(self.policy, "sample", None)
        if log_prob_fn is not None and sample_fn is not None:
            # Squashed Gaussian: no closed-form entropy; estimate it from one sample.
            _, sample_log_prob = sample_fn(observation)
            return log_prob_fn(observation, action), -sample_log_prob
        return None

    def loss_tensors(
        self, observation: torch.Tensor, action: torch.Tensor, diagnostics: bool = True
    ) -> dict[str, torch.Tensor]:
        """The loss (and, if ``diagnostics``, all metrics) from observations and actions.

        Training loops that log once per block of steps pass ``diagnostics=False`` for the
        others; the loss is the same, only ``loss`` is returned, and fewer kernels run.
        """
        stochastic = self._log_prob_entropy(observation, action)
        if stochastic is not None:
            log_prob, entropy = stochastic
            neglogp = -log_prob.mean()
            entropy = entropy.mean()
        else:
            td = TensorDict({"observation": observation}, batch_size=observation.shape[:1])
            predicted = self.policy(td)["action"]
            if not predicted.is_floating_point():
                raise PolicyError(
                    f"BC cannot regress onto the discrete actions of the deterministic "
                    f"{type(self.policy).__name__}: use a stochastic policy (a torchrl "
                    "ProbabilisticActor with a Categorical distribution, or CategoricalActor)"
                )
            # Regression onto the expert's action: squared error summed over action dims.
            error = (predicted - action).pow(2).reshape(observation.shape[0], -1)
            neglogp = error.sum(-1).mean()
            entropy = None
        loss = neglogp
        if self.ent_weight != 0.0 and entropy is not None:
            ent_loss = -self.ent_weight * entropy
            loss = loss + ent_loss
        l2_norm = None
        if self.l2_weight != 0.0:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            l2_norm = torch.stack([p.pow(2).sum() for p in params]).sum() / 2
            loss = loss + self.l2_weight * l2_norm
        if not diagnostics:
            return {"loss": loss}
        zero = torch.zeros((), device=observation.device)
        entropy = zero if entropy is None else entropy
        l2_norm = zero if l2_norm is None else l2_norm
        if stochastic is not None:
            prob_true_act = log_prob.detach().exp().mean()
        else:
            prob_true_act = torch.full((), float("nan"), device=observation.device)
        return {
            "loss": loss,
            "neglogp": neglogp,
            "entropy": entropy,
            "ent_loss": -self.ent_weight * entropy,
            "prob_true_act": prob_true_act,
            "l2_norm": l2_norm,
            "l2_loss": self.l2_weight * l2_norm,
        }

    # ------------------------------------------------------- analytic gradients
    def analytic_layers(self) -> list[tuple[nn.Linear, Any]] | None:
        """The ``(linear, activation backward)`` layers if the analytic path applies, else None.

        It applies to tdimitation's :class:`~tdimitation.policies.CategoricalActor` (not a
        subclass overriding its maths) whose network is Linear layers with biases and
        ``tanh``/``relu`` activations, and whose parameters all require gradients.
        """
        from tdimitation.policies.actors import CategoricalActor

        policy = self.policy
        if not isinstance(policy, CategoricalActor):
            return None
        for name in ("logits", "evaluate_actions", "features"):
            if getattr(type(policy), name) is not getattr(CategoricalActor, name):
                return None
        modules = list(policy.net)  # Linear, activation, ..., Linear
        if len(modules) % 2 == 0:
            return None
        layers: list[tuple[nn.Linear, Any]] = []
        for i in range(0, len(modules), 2):
            linear, activation = modules[i], None
            if type(linear) is not nn.Linear or linear.bias is None:
                return None
            if i + 1 < len(modules):
                activation = _ACTIVATION_BACKWARD.get(type(modules[i + 1]))
                if activation is None:
                    return None
            layers.append((linear, activation))
        expected = [t for linear, _ in layers for t in (linear.weight, linear.bias)]
        actual = list(policy.parameters())
        if len(actual) != len(expected):
            return None
        if any(a is not b for a, b in zip(actual, expected, strict=True)):
            return None
        if not all(p.requires_grad for p in actual):
            return None
        return layers

    def analytic_gradients(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        layers: list[tuple[nn.Linear, Any]],
        scale: float = 1.0,
        diagnostics: bool = False,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Gradients of ``scale * loss`` without autograd, for a categorical MLP policy.

        ``layers`` comes from :meth:`analytic_layers`. Returns the gradients in the order of
        ``policy.parameters()`` and, if ``diagnostics``, the metrics of :meth:`loss_tensors`
        (else an empty dict). Same loss, same gradients as autograd's on
        :meth:`loss_tensors` up to float rounding (tested), at a fraction of the cost: one
        ``backward()`` through PyTorch's autograd engine costs more than the whole
        hand-written pass at batch 32 on a CPU.

        With logits ``z``, ``lp = log_softmax(z)``, ``p = exp(lp)`` and ``H = -Σ p lp``:
        ``d(-lp[a])/dz = p - onehot(a)`` and ``d(-H)/dz = p (lp + H)``, so the loss's
        gradient with respect to the logits is ``(p - onehot(a) + ent_weight p (lp + H)) /
        batch``; it is then carried back through the Linear layers and activations.
        """
        with torch.no_grad():
            policy = self.policy
            x = policy.features(observation)
            inputs = []  # input of each Linear layer
            for linear, activation in layers:
                inputs.append(x)
                x = F.linear(x, linear.weight, linear.bias)
                if activation is not None:
                    x = activation[0](x)
            lp = torch.log_softmax(x, -1)
            grad = lp.exp()
            if self.ent_weight != 0.0 or diagnostics:
                neg_entropy = (grad * lp).sum(-1, keepdim=True)
            if self.ent_weight != 0.0:
                grad = torch.addcmul(grad, grad, lp - neg_entropy, value=self.ent_weight)
            index = action.long().unsqueeze(-1)
            grad.scatter_add_(-1, index, self._minus_ones(index, grad.dtype))
            grad.mul_(scale / observation.shape[0])
            grads: list[torch.Tensor] = []
            for i in range(len(layers) - 1, -1, -1):
                linear, _ = layers[i]
                grads.append(grad.sum(0))
                grads.append(torch.mm(grad.t(), inputs[i]))
                if i > 0:
                    grad = layers[i - 1][1][1](torch.mm(grad, linear.weight), inputs[i])
            grads.reverse()  # weight, bias of the first layer, ...
            if self.l2_weight != 0.0:
                alpha = self.l2_weight * scale
                params = list(policy.parameters())
                grads = [g.add_(p, alpha=alpha) for g, p in zip(grads, params, strict=True)]
            if not diagnostics:
                return grads, {}
            log_prob = lp.gather(-1, index).squeeze(-1)
            neglogp = -log_prob.mean()
            entropy = -neg_entropy.mean()
            if self.l2_weight != 0.0:
                l2_norm = torch.stack([p.pow(2).sum() for p in policy.parameters()]).sum() / 2
            else:
                l2_norm = torch.zeros((), device=observation.device)
            ent_loss = -self.ent_weight * entropy
            l2_loss = self.l2_weight * l2_norm
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

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        k = self.tensor_keys
        td = tensordict.reshape(-1)
        return TensorDict(self.loss_tensors(td.get(k.observation), td.get(k.action)), batch_size=[])
