"""PPO's fused update: the loss's gradients in closed form, flat clipping, :class:`FlatAdam`.

:class:`PPOGradients` computes :class:`~tdimitation.objectives.PPOClipLoss` and its exact
gradients for PPO's own MLP actor-critics without autograd; :class:`PPOFusedUpdate` runs a
round's minibatch steps with it. The autograd update in :class:`tdimitation.rl.PPO` is the
specification; this reproduces its arithmetic (tested against it, and checked at the start
of every fit on the first minibatch: :func:`tdimitation.fused.fused_update_for`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import nn

from tdimitation.fused.adam import FlatAdam, adam_formula_, adam_refusal, clip_flat_
from tdimitation.fused.mlp import actor_kind, mlp_layout
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.policies.critics import ValueCritic


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
        actor_layout, critic_layout = mlp_layout(actor.net), mlp_layout(critic.net)
        actor_linears, critic_linears = actor_layout.linears, critic_layout.linears
        self.categorical = actor_kind(actor) == "categorical"
        activation = actor_layout.activation
        self.activation = None if activation is None else activation.forward_
        self.activation_backward = None if activation is None else activation.backward
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
        if actor_kind(actor) is None:
            return f"unsupported actor {type(actor).__name__}"
        if type(critic) is not ValueCritic:
            return f"unsupported critic {type(critic).__name__}"
        if getattr(actor, "encoder", None) is not None or critic.encoder is not None:
            return "image encoders (convolutions) are trained through autograd"
        actor_layout = mlp_layout(getattr(actor, "net", None))
        critic_layout = mlp_layout(getattr(critic, "net", None))
        if actor_layout is None or critic_layout is None:
            return "the networks are not Linear/activation stacks with tanh or ReLU"
        hidden = actor_layout.hidden_shapes
        if hidden != critic_layout.hidden_shapes or (
            hidden and actor_layout.activation_type != critic_layout.activation_type
        ):
            return "actor and critic differ in hidden sizes or activation"
        if critic_layout.linears[-1].out_features != 1:
            return "the critic does not output one value"
        params = list(actor.parameters()) + list(critic.parameters())
        if len({id(p) for p in params}) != len(params):
            return "actor and critic share parameters"
        extra = 0 if actor_kind(actor) == "categorical" else 1  # log_std
        if len(params) != 2 * len(actor_layout.linears) + 2 * len(critic_layout.linears) + extra:
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


# --------------------------------------------------------------------------------------
# The round's update
# --------------------------------------------------------------------------------------


@dataclass
class _Cached:
    """Per loss module: its gradients object and compiled steps, reused across rounds."""

    parameter_ids: list[int]
    gradients: PPOGradients
    compiled: dict[tuple, Callable]


# Weak keys: a loss module that is dropped takes its cached buffers and graphs with it.
_CACHE: weakref.WeakKeyDictionary[PPOClipLoss, _Cached] = weakref.WeakKeyDictionary()


def _gradients_for(loss: PPOClipLoss) -> _Cached:
    ids = [id(p) for p in loss.parameters()]
    cached = _CACHE.get(loss)
    if cached is None or cached.parameter_ids != ids:
        cached = _CACHE[loss] = _Cached(ids, PPOGradients(loss), {})
    return cached


def compile_train_step(
    grads: PPOGradients, beta1: float, beta2: float, eps: float, max_norm: float | None
) -> Callable:
    """``torch.compile`` of a whole fused step: closed-form gradients, clipping, Adam."""

    def train_step(
        params, grad, exp_avg, exp_avg_sq, step, lr, x, a, olp, weight, target, diagnostics
    ):
        out = grads.step(
            grads.views(params), grads.views(grad), x, a, olp, weight, target, diagnostics
        )
        if max_norm is not None:
            clip_flat_(grad, max_norm)
        adam_formula_(params, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps)
        return out

    return torch.compile(train_step, dynamic=False, fullgraph=True)


class PPOFusedUpdate:
    """A round of PPO minibatch steps without autograd or the optimizer's Python wrapper.

    Built by :func:`tdimitation.fused.fused_update_for` for exactly
    :class:`~tdimitation.objectives.PPOClipLoss` over networks :class:`PPOGradients`
    supports, in float32 on one device, with an Adam :func:`~tdimitation.fused.adam.
    adam_refusal` accepts. Per minibatch: the closed-form gradients into one flat buffer,
    ``clip_grad_norm_`` on it (:func:`~tdimitation.fused.adam.clip_flat_`), then
    :class:`~tdimitation.fused.adam.FlatAdam`; parameters and Adam's state are written back
    after the round. Optimizer step hooks and Lightning's per-step hooks do not run inside.

    Args:
        loss: the loss whose gradients to compute.
        optimizer: the torch optimizer over the actor's and critic's parameters.
        max_grad_norm: gradient clipping norm (None: no clipping).
        compile: ``torch.compile`` the whole minibatch step (one graph, compiled once per
            loss module and hyperparameters).
    """

    #: The loss this update implements, and the loss options it reads.
    loss_class = PPOClipLoss
    options = ("clip_epsilon", "vf_coef", "ent_coef", "normalize_advantage")

    def __init__(
        self,
        loss: PPOClipLoss,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float | None = None,
        compile: bool = False,
    ) -> None:
        self.loss, self.optimizer = loss, optimizer
        self.max_grad_norm, self.compile = max_grad_norm, compile
        self._cached = _gradients_for(loss)
        self.gradients = self._cached.gradients

    @classmethod
    def refusal(cls, loss: PPOClipLoss, optimizer: torch.optim.Optimizer) -> str | None:
        """Why this update cannot replace autograd for ``loss`` and ``optimizer`` (None: it can)."""
        reason = PPOGradients.unsupported_reason(loss)
        if reason is not None:
            return reason
        return adam_refusal(optimizer, _gradients_for(loss).gradients.parameters())

    def parameters(self) -> list[nn.Parameter]:
        """The trained parameters, in the order of :meth:`minibatch_gradients`."""
        return self.gradients.parameters()

    def reference_loss(self, minibatch: TensorDictBase) -> torch.Tensor:
        """What the autograd update differentiates: the sum of ``forward``'s loss terms."""
        out = self.loss(minibatch)
        return sum(value for key, value in out.items() if key.startswith("loss_"))

    @torch.no_grad()
    def minibatch_gradients(self, minibatch: TensorDictBase) -> list[torch.Tensor]:
        """The closed-form gradients of :meth:`reference_loss` on ``minibatch``."""
        grads, keys = self.gradients, self.loss.tensor_keys
        size = minibatch.numel()
        flat_grad = grads.new_buffer()
        grads.step(
            grads.views(grads.load(grads.new_buffer())),
            grads.views(flat_grad),
            grads.features(minibatch[keys.observation]),
            grads.encode_actions(minibatch[keys.action]),
            minibatch[keys.sample_log_prob].reshape(size),
            grads.advantage_weights(minibatch[keys.advantage].reshape(1, size))[0],
            minibatch[keys.value_target].reshape(size, 1),
        )
        return [view for _, view in grads.param_views(flat_grad)]

    @torch.no_grad()
    def run(
        self,
        round_td: TensorDictBase,
        batch_size: int,
        epochs: Iterable[tuple[int, bool]],
        permutation: Callable[[], torch.Tensor],
        stop_early: Callable[[list[dict[str, torch.Tensor]]], bool],
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """The round's steps, as PPO's autograd update takes them.

        ``round_td`` ``[N]`` holds the loss's keys; ``epochs`` yields ``(epoch,
        diagnostics)``; ``permutation()`` draws each epoch's order (one draw per epoch, as
        the autograd update, so both visit the same minibatches); ``stop_early`` sees the
        epoch's diagnostics. Returns the last epoch's diagnostics and the number of steps.
        """
        grads, keys = self.gradients, self.loss.tensor_keys
        n, size = round_td.shape[0], batch_size
        count = n // size
        # Observation normalisation is fixed during the update: apply it once per round.
        inputs = grads.features(round_td[keys.observation])
        actions = grads.encode_actions(round_td[keys.action])
        old_log_prob = round_td[keys.sample_log_prob].reshape(n)
        advantage = round_td[keys.advantage].reshape(n)
        value_target = round_td[keys.value_target].reshape(n)
        adam = FlatAdam(self.optimizer, grads.parameters(), layout=grads)
        train_step = self._train_step(adam, size)
        logged: list[dict[str, torch.Tensor]] = []
        updates = 0
        for _, diagnostics in epochs:
            perm = permutation()
            # [count, 2, size, d]: each minibatch's twin inputs contiguous.
            x = inputs[:, perm].view(2, count, size, -1).transpose(0, 1).contiguous()
            a = actions[perm].view(count, size, -1)
            olp = old_log_prob[perm].view(count, size)
            adv = grads.advantage_weights(advantage[perm].view(count, size))
            vt = value_target[perm].view(count, size, 1)
            epoch_logged = []
            for i in range(count):
                out = train_step(x[i], a[i], olp[i], adv[i], vt[i], diagnostics)
                if diagnostics:
                    epoch_logged.append(out)
                updates += 1
            logged = epoch_logged or logged
            if stop_early(epoch_logged):
                break
        adam.finish()
        return logged, updates

    def _train_step(self, adam: FlatAdam, size: int) -> Callable:
        """One minibatch step: gradients, clipping, Adam, all in place on the flat buffers.

        With ``compile`` the whole step (no autograd in it) is one ``torch.compile``d graph,
        compiled once per loss module (two variants: with and without diagnostics).
        """
        grads, max_norm = self.gradients, self.max_grad_norm
        grads.prepare(size)  # buffers allocated outside compiled code
        weights, grad_views = grads.views(adam.params[0]), grads.views(adam.grad)

        def eager(x, a, old_log_prob, advantage_weight, value_target, diagnostics):
            out = grads.step(
                weights, grad_views, x, a, old_log_prob, advantage_weight, value_target, diagnostics
            )
            if max_norm is not None:
                clip_flat_(adam.grad, max_norm)
            adam.step()
            return out

        if not self.compile:
            return eager
        beta1, beta2 = adam.betas
        constants = (beta1, beta2, adam.eps, max_norm)
        compiled_steps = self._cached.compiled
        if constants not in compiled_steps:
            compiled_steps[constants] = compile_train_step(grads, *constants)
        compiled = compiled_steps[constants]
        tensors: list[torch.Tensor] = []

        def step(x, a, old_log_prob, advantage_weight, value_target, diagnostics):
            if not adam.started:  # the optimizer's own first step creates its state
                return eager(x, a, old_log_prob, advantage_weight, value_target, diagnostics)
            if not tensors:
                # Step count and learning rate as float64 tensors: exact bias corrections.
                # Shape [1], not []: torch 2.13's compiled graphs dropped the in-place
                # increment of a 0-d CPU tensor input (the step count stayed put).
                device = adam.params[0].device
                count = adam.step_count + adam.flat_steps
                tensors.append(torch.tensor([count], dtype=torch.float64, device=device))
                tensors.append(torch.tensor([adam.lr], dtype=torch.float64, device=device))
            adam.flat_steps += 1  # applied by the compiled graph, written back by finish()
            return compiled(
                adam.params[0],
                adam.grad,
                adam.exp_avgs[0],
                adam.exp_avg_sqs[0],
                tensors[0],
                tensors[1],
                x,
                a,
                old_log_prob,
                advantage_weight,
                value_target,
                diagnostics,
            )

        return step
