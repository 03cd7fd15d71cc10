"""Clipped PPO loss on plain tensors, as a torchrl ``LossModule``.

Same mathematics as torchrl's ``ClipPPOLoss(critic_coeff=vf_coef, loss_critic_type="l2",
normalize_advantage=True)`` with an entropy bonus (checked in the tests: equal losses and
gradients), but computed straight from tensors: ``ClipPPOLoss`` clones the TensorDict,
swaps functional parameters and builds a distribution per call, which costs ~0.5 ms per
minibatch on CPU — more than the arithmetic at batch 64.

:class:`PPOGradients` goes one step further for PPO's own MLP actor-critics: the same loss
with its gradients in closed form (no autograd graph), over stacked "twin" actor/critic
weights in one flat buffer; PPO's fast update path uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.policies.actors import CategoricalActor, GaussianActor
from tdimitation.policies.critics import ValueCritic


class PPOClipLoss(LossModule):
    """Clipped surrogate policy loss, squared-error value loss and entropy bonus.

    ``forward(td)`` reads the keys below from a TensorDict and returns ``loss_objective``,
    ``loss_critic``, ``loss_entropy`` (sum them to train) and the diagnostics
    ``entropy``, ``kl_approx``, ``clip_fraction``. The actor must also have
    ``log_prob(observation, action)``. :meth:`loss_tensors` computes the same
    from tensors, for training loops that index minibatches as tensors.

    Keys (``set_keys``): ``observation``, ``action``, ``sample_log_prob``
    (``"action_log_prob"``), ``advantage``, ``value_target``.

    Args:
        actor: a policy with ``evaluate_actions(observation, action) -> (log_prob,
            entropy)`` (tdimitation's ``CategoricalActor`` / ``GaussianActor``).
        critic: a module with ``value(observation) -> [..., 1]`` (``ValueCritic``).
        clip_epsilon: PPO clip range.
        vf_coef: weight of the value loss.
        ent_coef: weight of the entropy bonus.
        normalize_advantage: standardise advantages per minibatch.
    """

    @dataclass
    class _AcceptedKeys:
        observation: NestedKey = "observation"
        action: NestedKey = "action"
        sample_log_prob: NestedKey = "action_log_prob"
        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor: TensorDictModuleBase,
        critic: TensorDictModuleBase,
        *,
        clip_epsilon: float = 0.2,
        vf_coef: float = 0.5,
        ent_coef: float = 0.0,
        normalize_advantage: bool = True,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic
        self.clip_epsilon = float(clip_epsilon)
        self.vf_coef = float(vf_coef)
        self.ent_coef = float(ent_coef)
        self.normalize_advantage = normalize_advantage
        self._tensor_keys = self._AcceptedKeys()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # Advantages are computed outside the loss; nothing to forward.
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.observation, k.action, k.sample_log_prob, k.advantage, k.value_target]

    @property
    def out_keys(self) -> list[str]:
        return [
            "loss_objective",
            "loss_critic",
            "loss_entropy",
            "entropy",
            "kl_approx",
            "clip_fraction",
        ]

    def loss_tensors(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantage: torch.Tensor,
        value_target: torch.Tensor,
        diagnostics: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The loss terms (and, if ``diagnostics``, entropy/KL/clip fraction) from tensors.

        ``advantage`` and ``value_target`` are ``[B]``. Training loops that log only some
        minibatches pass ``diagnostics=False`` for the others: with a zero entropy
        coefficient that also keeps the entropy out of the graph (fewer kernels per step).
        """
        need_entropy = self.ent_coef != 0.0 or diagnostics
        if need_entropy:
            log_prob, entropy = self.actor.evaluate_actions(observation, action)
        else:
            log_prob, entropy = self.actor.log_prob(observation, action), None
        if self.normalize_advantage and advantage.numel() > 1:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        log_ratio = log_prob - old_log_prob
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - self.clip_epsilon, 1 + self.clip_epsilon)
        loss_objective = -torch.minimum(ratio * advantage, clipped * advantage).mean()
        value = self.critic.value(observation).squeeze(-1)
        out = {
            "loss_objective": loss_objective,
            "loss_critic": self.vf_coef * (value_target - value).pow(2).mean(),
        }
        if self.ent_coef != 0.0:
            out["loss_entropy"] = -self.ent_coef * entropy.mean()
        if diagnostics:
            with torch.no_grad():
                out["entropy"] = entropy.mean()
                # Schulman's low-variance KL estimator, as SB3 and torchrl report it.
                out["kl_approx"] = ((ratio - 1) - log_ratio).mean()
                out["clip_fraction"] = ((ratio - 1).abs() > self.clip_epsilon).float().mean()
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        k = self.tensor_keys
        td = tensordict.reshape(-1)
        n = td.shape[0]
        out = self.loss_tensors(
            td.get(k.observation),
            td.get(k.action),
            td.get(k.sample_log_prob).reshape(n),
            td.get(k.advantage).reshape(n),
            td.get(k.value_target).reshape(n),
        )
        if "loss_entropy" not in out:
            out["loss_entropy"] = torch.zeros((), device=out["loss_objective"].device)
        return TensorDict(out, batch_size=[])


# --------------------------------------------------------------------------------------
# Analytic gradients for MLP actor-critics (the fast path of PPO's update)
# --------------------------------------------------------------------------------------

# In place on the pre-activation (a fresh tensor), as their outputs are what backward needs.
_ACTIVATION_FORWARD = {nn.Tanh: torch.tanh_, nn.ReLU: torch.relu_}
# The kernels autograd itself runs for these activations, given the activation's output.
_ACTIVATION_BACKWARD = {
    nn.Tanh: torch.ops.aten.tanh_backward,
    nn.ReLU: lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
}


@dataclass
class ActorCriticViews:
    """Views of one flat buffer in the layout of :class:`PPOGradients`.

    ``hidden_weight[k]`` is ``[2, out, in]`` (actor, critic) and ``hidden_bias[k]`` is
    ``[2, out]``; the heads are ``[out, in]`` / ``[out]``; ``log_std`` is the Gaussian
    actor's (None for categorical actors).
    """

    hidden_weight: list[torch.Tensor]
    hidden_bias: list[torch.Tensor]
    actor_weight: torch.Tensor
    actor_bias: torch.Tensor
    critic_weight: torch.Tensor
    critic_bias: torch.Tensor
    log_std: torch.Tensor | None

    def __post_init__(self) -> None:
        # Derived views the forward pass uses, made once rather than per minibatch.
        self.hidden_weight_t = [w.transpose(1, 2) for w in self.hidden_weight]
        self.hidden_bias_row = [b.unsqueeze(1) for b in self.hidden_bias]
        self.actor_weight_t = self.actor_weight.t()
        self.critic_weight_t = self.critic_weight.t()


def _actor_kind(actor: nn.Module) -> str | None:
    """``"categorical"``/``"gaussian"`` for exactly those actor classes, else None."""
    return {CategoricalActor: "categorical", GaussianActor: "gaussian"}.get(type(actor))


def _mlp_layers(net: nn.Module) -> tuple[list[nn.Linear], type | None] | None:
    """The Linear layers and the activation type of a ``build_mlp`` net, or None."""
    if not isinstance(net, nn.Sequential) or len(net) % 2 != 1:
        return None
    layers = list(net)
    linears, activations = layers[0::2], {type(m) for m in layers[1::2]}
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if len(activations) > 1 or not activations <= set(_ACTIVATION_FORWARD):
        return None
    return linears, next(iter(activations), None)


class PPOGradients:
    """The PPO loss of :class:`PPOClipLoss` and its exact gradients, without autograd.

    For the MLP actors PPO trains (``CategoricalActor``, ``GaussianActor``) and a
    ``ValueCritic`` with the same hidden sizes and a tanh or ReLU activation, the gradient
    of ``loss_objective + loss_critic + loss_entropy`` is a short closed form (below).
    Writing it out replaces ~25 autograd nodes per minibatch, whose bookkeeping costs more
    than the arithmetic at batch 64 on CPU, by about 30 plain kernels; the test suite checks
    it against autograd through :class:`PPOClipLoss` (which matches torchrl's
    ``ClipPPOLoss``).

    Parameters live in one flat buffer in a "twin" layout: each hidden layer's actor and
    critic weights are stacked ``[2, out, in]``, so both networks' hidden layers run as one
    batched matmul (``baddbmm``) forward and two backward: the same function, half the
    kernels. :meth:`load`/:meth:`store` copy between the modules' parameters and such a
    buffer; optimizer states (Adam's moments) use the same layout.

    Gradients, for a minibatch of size ``B`` with normalised advantages ``A``, ratio
    ``r = exp(log π(a|s) - log π_old)``, ``s1 = r A``, ``s2 = clip(r, 1 ± ε) A``:

    * ``∂L/∂log π = -s1 / B`` where ``s1 <= s2`` (the unclipped term is the minimum; ties
      only occur inside the clip range or at ``A = 0``), else 0;
    * categorical: ``∂log π/∂logits = onehot(a) - softmax``, and the entropy bonus
      ``-c mean(H)`` adds ``c/B · p (log p + H)``;
    * Gaussian: ``∂log π/∂μ = (a - μ)/σ²``, ``∂log π/∂log σ = (a - μ)²/σ² - 1``, and the
      entropy bonus adds ``-c`` to ``∂L/∂log σ``;
    * value: ``∂L/∂V = 2 c_v (V - V_target) / B``;
    * then the usual backward through ``Linear`` and the activation (with the kernels
      autograd uses: ``tanh_backward``, ``threshold_backward``).

    Args:
        loss: the :class:`PPOClipLoss` whose actor, critic and coefficients to use.
    """

    def __init__(self, loss: PPOClipLoss) -> None:
        reason = self.unsupported_reason(loss)
        if reason is not None:
            raise ValueError(f"PPOGradients: {reason}")
        self.loss = loss
        actor, critic = loss.actor, loss.critic
        actor_linears, activation = _mlp_layers(actor.net)
        critic_linears, _ = _mlp_layers(critic.net)
        self.categorical = _actor_kind(actor) == "categorical"
        self.activation = _ACTIVATION_FORWARD.get(activation)
        self.activation_backward = _ACTIVATION_BACKWARD.get(activation)
        # (parameters stored in one segment, the segment's shape), in flat order
        pairs: list[tuple[list[nn.Parameter], tuple[int, ...]]] = []
        for a, c in zip(actor_linears[:-1], critic_linears[:-1], strict=True):
            pairs.append(([a.weight, c.weight], (2, *a.weight.shape)))
            pairs.append(([a.bias, c.bias], (2, *a.bias.shape)))
        for p in (actor_linears[-1].weight, actor_linears[-1].bias):
            pairs.append(([p], tuple(p.shape)))
        for p in (critic_linears[-1].weight, critic_linears[-1].bias):
            pairs.append(([p], tuple(p.shape)))
        if not self.categorical:
            pairs.append(([actor.log_std], tuple(actor.log_std.shape)))
        self._segments: list[tuple[int, tuple[int, ...]]] = []
        self._param_slots: list[tuple[nn.Parameter, int, int | None]] = []
        offset = 0
        for index, (params, shape) in enumerate(pairs):
            self._segments.append((offset, shape))
            for k, p in enumerate(params):
                self._param_slots.append((p, index, k if len(params) > 1 else None))
            offset += math.prod(shape)
        self.numel = offset
        self.n_hidden = len(actor_linears) - 1
        self._grad_hidden: torch.Tensor | None = None
        self._grad_hidden_parts: tuple[torch.Tensor, torch.Tensor] = ()

    @staticmethod
    def unsupported_reason(loss: PPOClipLoss) -> str | None:
        """Why :class:`PPOGradients` cannot handle ``loss``'s networks (None: it can)."""
        actor, critic = loss.actor, loss.critic
        # Exact types: a subclass may change what the networks compute.
        if _actor_kind(actor) is None:
            return f"unsupported actor {type(actor).__name__}"
        if type(critic) is not ValueCritic:
            return f"unsupported critic {type(critic).__name__}"
        if getattr(actor, "encoder", None) is not None or critic.encoder is not None:
            return "image encoders (convolutions) are trained through autograd"
        parsed = [_mlp_layers(getattr(m, "net", None)) for m in (actor, critic)]
        if parsed[0] is None or parsed[1] is None:
            return "the networks are not Linear/activation stacks with tanh or ReLU"
        (a_lin, a_act), (c_lin, c_act) = parsed
        hidden = [tuple(m.weight.shape) for m in a_lin[:-1]]
        if hidden != [tuple(m.weight.shape) for m in c_lin[:-1]] or (hidden and a_act != c_act):
            return "actor and critic differ in hidden sizes or activation"
        if c_lin[-1].out_features != 1:
            return "the critic does not output one value"
        params = list(actor.parameters()) + list(critic.parameters())
        if len({id(p) for p in params}) != len(params):
            return "actor and critic share parameters"
        extra = 0 if _actor_kind(actor) == "categorical" else 1  # log_std
        if len(params) != 2 * len(a_lin) + 2 * len(c_lin) + extra:
            return "the actor or critic has parameters outside its MLP"
        if len({(p.dtype, p.device) for p in params}) != 1:
            return "parameters differ in dtype or device"
        if not all(p.requires_grad for p in params):
            return "some parameters are frozen"
        return None

    # ------------------------------------------------------------------ layout
    def parameters(self) -> list[nn.Parameter]:
        """The parameters this class computes gradients for (actor's and critic's)."""
        return [p for p, _, _ in self._param_slots]

    @property
    def dtype(self) -> torch.dtype:
        return self._param_slots[0][0].dtype

    def new_buffer(self) -> torch.Tensor:
        """An uninitialised flat buffer for parameters, gradients or optimizer moments."""
        ref = self._param_slots[0][0]
        return torch.empty(self.numel, dtype=ref.dtype, device=ref.device)

    def views(self, flat: torch.Tensor) -> ActorCriticViews:
        """Structured views of a flat buffer (no copies)."""
        parts = [flat[o : o + math.prod(s)].view(s) for o, s in self._segments]
        n = 2 * self.n_hidden
        return ActorCriticViews(
            hidden_weight=parts[0:n:2],
            hidden_bias=parts[1:n:2],
            actor_weight=parts[n],
            actor_bias=parts[n + 1],
            critic_weight=parts[n + 2],
            critic_bias=parts[n + 3],
            log_std=None if self.categorical else parts[n + 4],
        )

    def param_views(self, flat: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``(parameter, view of flat shaped like it)`` for every parameter."""
        parts = [flat[o : o + math.prod(s)].view(s) for o, s in self._segments]
        return [(p, parts[i] if k is None else parts[i][k]) for p, i, k in self._param_slots]

    @torch.no_grad()
    def load(self, flat: torch.Tensor, tensors: dict[nn.Parameter, torch.Tensor] | None = None):
        """Copy the parameters (or ``tensors[param]``, e.g. optimizer moments) into ``flat``."""
        for p, view in self.param_views(flat):
            view.copy_(p if tensors is None else tensors[p])
        return flat

    @torch.no_grad()
    def store(self, flat: torch.Tensor, tensors: dict[nn.Parameter, torch.Tensor] | None = None):
        """Copy ``flat`` back into the parameters (or into ``tensors[param]``)."""
        for p, view in self.param_views(flat):
            (p if tensors is None else tensors[p]).copy_(view)

    # --------------------------------------------------------------- the step
    @torch.no_grad()
    def features(self, observation: torch.Tensor) -> torch.Tensor:
        """Network inputs ``[2, N, obs_dim]`` (actor's, critic's), normalised as each does."""
        actor, critic = self.loss.actor, self.loss.critic
        x = actor.features(observation)
        if critic.obs_norm is actor.obs_norm:
            return x.unsqueeze(0).expand(2, *x.shape)
        xc = observation if critic.obs_norm is None else critic.obs_norm(observation)
        return torch.stack([x, xc])

    @torch.no_grad()
    def encode_actions(self, action: torch.Tensor) -> torch.Tensor:
        """Actions as the step takes them: one-hot rows (categorical) or ``[N, A]`` floats."""
        if self.categorical:
            n_actions = self.loss.actor.config["n_actions"]
            return torch.nn.functional.one_hot(action.long(), n_actions).to(self.dtype)
        return action.to(self.dtype)

    @torch.no_grad()
    def advantage_weights(self, advantage: torch.Tensor) -> torch.Tensor:
        """Per-sample weights of the ratio in the loss, ``[M, B]`` for minibatch rows ``[M, B]``.

        The advantages standardised per row (minibatch) as :class:`PPOClipLoss` does, times
        ``-1/B``: the objective is then ``sum(max(r w, clip(r) w))`` and its gradient with
        respect to ``log π`` is ``r w`` where the unclipped term wins, which saves a kernel
        per minibatch.
        """
        size = advantage.shape[-1]
        if self.loss.normalize_advantage and size > 1:
            std, mean = torch.std_mean(advantage, dim=-1, keepdim=True)
            return (advantage - mean).div_(std.add_(1e-8).mul_(-size))
        return advantage * (-1.0 / size)

    def prepare(self, batch_size: int) -> None:
        """Allocate the reused buffers for minibatches of ``batch_size`` (optional: :meth:`step`
        allocates them on first use; call it before compiling :meth:`step`).
        """
        if self.n_hidden:
            width = self._segments[2 * self.n_hidden - 1][1][-1]
            self._workspace(batch_size, width)

    def _workspace(self, size: int, width: int) -> torch.Tensor:
        """A reused ``[2, size, width]`` buffer for the hidden layers' gradients."""
        buffer = self._grad_hidden
        ref = self._param_slots[0][0]
        if (
            buffer is None
            or buffer.shape != (2, size, width)
            or buffer.dtype != ref.dtype
            or buffer.device != ref.device
        ):
            buffer = self._grad_hidden = ref.new_empty((2, size, width))
            self._grad_hidden_parts = (buffer[0], buffer[1])
        return buffer

    def step(
        self,
        weights: ActorCriticViews,
        grads: ActorCriticViews,
        inputs: torch.Tensor,
        action: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantage_weight: torch.Tensor,
        value_target: torch.Tensor,
        diagnostics: bool = False,
    ) -> dict[str, torch.Tensor] | None:
        """Write the loss's gradients into ``grads``; return the loss terms if ``diagnostics``.

        ``inputs`` ``[2, B, obs_dim]`` from :meth:`features`, ``action`` from
        :meth:`encode_actions`, ``advantage_weight`` ``[B]`` from :meth:`advantage_weights`,
        ``old_log_prob`` ``[B]``, ``value_target`` ``[B, 1]`` (or ``[B]``), none of them
        requiring gradients. The returned dict has the keys of
        :meth:`PPOClipLoss.loss_tensors`.
        """
        loss = self.loss
        batch = inputs.shape[1]
        if value_target.dim() == 1:
            value_target = value_target.unsqueeze(-1)
        # Forward: hidden layers of actor and critic together, [2, B, width].
        hidden = [inputs]
        h = inputs
        for w_t, b in zip(weights.hidden_weight_t, weights.hidden_bias_row, strict=True):
            h = self.activation(torch.baddbmm(b, h, w_t))
            hidden.append(h)
        h_actor, h_critic = h.unbind(0)
        out = torch.addmm(weights.actor_bias, h_actor, weights.actor_weight_t)
        value = torch.addmm(weights.critic_bias, h_critic, weights.critic_weight_t)  # [B, 1]
        if self.categorical:
            log_p = torch.log_softmax(out, -1)
            log_prob = (log_p * action).sum(-1)
        else:
            log_std = weights.log_std
            var = (2 * log_std).exp()
            diff = action - out
            scaled = diff / var
            log_prob = (
                -0.5 * (diff * scaled).sum(-1)
                - log_std.sum()
                - 0.5 * out.shape[-1] * math.log(2 * math.pi)
            )
        log_ratio = log_prob - old_log_prob
        ratio = log_ratio.exp()
        eps = loss.clip_epsilon
        # With w = -A/B the loss is sum(max(r w, clip(r) w)); the unclipped term wins where
        # r w >= clip(r) w (ties only inside the clip range or at A = 0), and there
        # dL/dlog π = dL/dr · r = r w.
        surrogate = ratio * advantage_weight
        clipped = ratio.clamp(1 - eps, 1 + eps).mul_(advantage_weight)
        terms = {}
        if diagnostics:
            terms["loss_objective"] = torch.maximum(surrogate, clipped).sum()
            terms["loss_critic"] = loss.vf_coef * (value_target - value).pow(2).mean()
        grad_log_prob = surrogate.masked_fill_(surrogate < clipped, 0.0).unsqueeze(-1)
        grad_value = (value - value_target).mul_(2 * loss.vf_coef / batch)
        entropy = None
        if self.categorical:
            prob = log_p.exp()
            grad_out = (action - prob).mul_(grad_log_prob)
            if loss.ent_coef != 0.0 or diagnostics:
                entropy = -(prob * log_p).sum(-1)
            if loss.ent_coef != 0.0:
                # d(-c mean H)/dlogits = c/B p (log p + H)
                bonus = (log_p + entropy.unsqueeze(-1)).mul_(prob)
                grad_out.add_(bonus, alpha=loss.ent_coef / batch)
        else:
            grad_out = scaled * grad_log_prob
            # sum_b g_b ((a-μ)²/σ² - 1), then the entropy bonus -c per dimension
            torch.mm(grad_log_prob.t(), diff * scaled, out=grads.log_std.unsqueeze(0))
            grads.log_std.sub_(grad_log_prob.sum() + loss.ent_coef)
            if diagnostics or loss.ent_coef != 0.0:
                entropy_value = log_std.sum() + 0.5 * log_std.numel() * (1 + math.log(2 * math.pi))
                entropy = entropy_value.expand(batch)
        # Backward through the heads.
        torch.mm(grad_out.t(), h_actor, out=grads.actor_weight)
        torch.sum(grad_out, 0, out=grads.actor_bias)
        torch.mm(grad_value.t(), h_critic, out=grads.critic_weight)
        torch.sum(grad_value, 0, out=grads.critic_bias)
        if self.n_hidden:
            grad_h = self._workspace(batch, h.shape[-1])
            grad_h_actor, grad_h_critic = self._grad_hidden_parts
            torch.mm(grad_out, weights.actor_weight, out=grad_h_actor)
            torch.mm(grad_value, weights.critic_weight, out=grad_h_critic)
            for k in range(self.n_hidden - 1, -1, -1):
                grad_z = self.activation_backward(grad_h, hidden[k + 1])
                torch.bmm(grad_z.transpose(1, 2), hidden[k], out=grads.hidden_weight[k])
                torch.sum(grad_z, 1, out=grads.hidden_bias[k])
                if k:
                    grad_h = torch.bmm(grad_z, weights.hidden_weight[k])
        if not diagnostics:
            return None
        if loss.ent_coef != 0.0:
            terms["loss_entropy"] = -loss.ent_coef * entropy.mean()
        terms["entropy"] = entropy.mean()
        terms["kl_approx"] = ((ratio - 1) - log_ratio).mean()
        terms["clip_fraction"] = ((ratio - 1).abs() > eps).float().mean()
        return terms
