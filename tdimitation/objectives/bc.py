"""Behavioral-cloning loss as a torchrl ``LossModule``.

torchrl's own ``BCLoss`` cannot train a stochastic discrete policy on integer actions (it
feeds the *sampled* action to a cross-entropy) and has no entropy or L2
terms, so tdimitation has its own, with ``imitation``'s metrics. It is the specification
of BC's update; :mod:`tdimitation.fused.bc` holds its closed-form gradients for categorical
MLP policies (checked against it: :func:`tdimitation.fused.fused_update_for`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from tdimitation.errors import PolicyError
from tdimitation.policies.adapters import as_actor


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

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        k = self.tensor_keys
        td = tensordict.reshape(-1)
        return TensorDict(self.loss_tensors(td.get(k.observation), td.get(k.action)), batch_size=[])
