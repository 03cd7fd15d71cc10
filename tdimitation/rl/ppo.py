"""Proximal Policy Optimization as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.envs import as_env_id
from tdimitation.nn import ImageEncoder
from tdimitation.objectives.ppo import PPOClipLoss, PPOGradients
from tdimitation.policies.actors import (
    CategoricalActor,
    GaussianActor,
    MLPActor,
    build_actor,
    image_shape_of,
    observation_width,
)
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl.base import OnlineAlgorithm, plain_backward
from tdimitation.rl.ppo_fused import (
    FlatAdam,
    clip_flat_,
    compile_train_step,
    gae,
    lightning_blocker,
    unwrap_optimizer,
)
from tdimitation.rng import randperm
from tdimitation.utils import seeded


class PPO(OnlineAlgorithm):
    """PPO with clipped surrogate objective and GAE (Schulman et al. 2017).

    Defaults are Stable-Baselines3's PPO defaults (2048 steps per env per round, 10
    epochs, minibatch 64, lr 3e-4, clip 0.2, GAE λ 0.95, γ 0.99, value coefficient 0.5,
    gradient norm 0.5, Adam eps 1e-5), except that actor and critic are separate MLPs
    (as SB3's ``MlpPolicy``) of ``hidden_sizes``. Image observations (3-d, e.g. Atari frame
    stacks) go through an image encoder before each MLP (Nature-CNN by default, options in
    ``cnn``); actor and critic have encoders of their own (SB3's
    ``share_features_extractor=False``), so the value loss does not shape the policy's
    features. Each round collects
    ``num_envs * n_steps`` frames, computes advantages once, then runs ``n_epochs`` passes
    of minibatch updates. Minibatches are gathered once per epoch as tensors and the loss is
    :class:`~tdimitation.objectives.PPOClipLoss` on tensors; the optimizer is Adam with
    ``fused=True``. Bootstrapping stops at terminations, not at truncations.

    **Fast update.** When it is exact to do so (see :meth:`update`), the minibatch steps skip
    autograd and the optimizer's Python machinery: :class:`~tdimitation.objectives.ppo.
    PPOGradients` computes the loss's gradients in closed form (actor and critic hidden layers
    evaluated together as stacked "twin" weights), gradient clipping and Adam run on one
    flat buffer with ``torch.optim.Adam``'s arithmetic, and parameters and Adam's moments are
    written back after the round. Same parameters as the autograd path up to float rounding
    (tested); 2.5-3x fewer microseconds per minibatch on CPU (``benchmarks/bench_ppo.py``).
    ``fast_update=False`` forces the autograd path; :attr:`update_path` says which path the
    last update took and why.

    Logged per round: the loss terms and ``entropy``, ``kl_approx``, ``clip_fraction``
    (means over the last epoch's minibatches), ``explained_variance`` of the value targets by
    the values the advantages were computed from (as Stable-Baselines3 reports it), ``lr``
    and the number of ``updates``.

    Args:
        env_id: environment id (see :func:`~tdimitation.envs.make_env`).
        num_envs: sub-envs stepped together.
        n_steps: steps per sub-env per round.
        total_frames: budget of environment frames.
        seed: seed of envs and RNGs.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
        learning_rate: Adam learning rate (initial value with ``lr_schedule="linear"``).
        lr_schedule: ``"constant"`` or ``"linear"`` (decays to 0 at the budget).
        n_epochs: passes over each round's data.
        batch_size: minibatch size.
        gamma: discount factor.
        gae_lambda: GAE λ.
        clip_epsilon: PPO clip range.
        ent_coef: entropy bonus weight.
        vf_coef: value loss weight.
        max_grad_norm: gradient clipping norm (None: no clipping).
        normalize_advantage: standardise advantages per minibatch.
        target_kl: stop a round's epochs early when the approximate KL exceeds 1.5x this.
        hidden_sizes: hidden widths of actor and critic.
        activation: activation name.
        normalize_observations: running observation normalisation, stored in the policy.
        log_std_init: initial log standard deviation (continuous actions).
        cnn: image encoder options (:class:`~tdimitation.nn.ImageEncoder` arguments other
            than ``image_shape``) for image observations; None: the Nature-CNN defaults.
        compile_loss: ``torch.compile`` the training step: on the fast path the whole
            minibatch step (closed-form gradients, clipping, Adam) becomes one graph of fused
            kernels; on the autograd path, the loss. Pays a one-off compilation of ~20 s on
            CPU, worth it on long runs.
        fast_update: use the closed-form gradients and flat Adam when exact (see above).
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 8,
        n_steps: int = 2048,
        total_frames: int = 1_000_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        learning_rate: float = 3e-4,
        lr_schedule: str = "constant",
        n_epochs: int = 10,
        batch_size: int = 64,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_epsilon: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        normalize_advantage: bool = True,
        target_kl: float | None = None,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        normalize_observations: bool = False,
        log_std_init: float = 0.0,
        cnn: dict[str, Any] | None = None,
        compile_loss: bool = False,
        fast_update: bool = True,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=num_envs * n_steps,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        if lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {lr_schedule!r}")
        if (num_envs * n_steps) % batch_size:
            raise ValueError(
                f"batch_size ({batch_size}) must divide the round size num_envs * n_steps "
                f"({num_envs * n_steps})"
            )
        self.save_hyperparameters()
        # Initial weights from ``seed``, not from the global RNG's state: runs repeat.
        with seeded(seed):
            self.actor: MLPActor = build_actor(
                self.env,
                hidden_sizes=hidden_sizes,
                activation=activation,
                normalize_observations=normalize_observations,
                cnn=cnn,
            )
            image_shape = image_shape_of(self.env)
            if image_shape is None:
                self.critic = ValueCritic(
                    observation_width(self.env),
                    hidden_sizes,
                    activation,
                    obs_norm=self.actor.obs_norm,
                )
            else:
                encoder = ImageEncoder(image_shape, **self.actor.config["cnn"])
                self.critic = ValueCritic(
                    encoder.out_features, hidden_sizes, activation, encoder=encoder
                )
        if isinstance(self.actor, GaussianActor):
            self.actor.log_std.data.fill_(float(log_std_init))
            self.actor.config["log_std_init"] = float(log_std_init)
        elif not isinstance(self.actor, CategoricalActor):
            raise ValueError(f"PPO supports Discrete and Box actions, got {self.actor}")
        self.loss_module = PPOClipLoss(
            self.actor,
            self.critic,
            clip_epsilon=clip_epsilon,
            vf_coef=vf_coef,
            ent_coef=ent_coef,
            normalize_advantage=normalize_advantage,
        )
        # (loss module, its compiled forward): compiled again when the loss is swapped.
        self._compiled_loss: tuple[torch.nn.Module, Callable] | None = None
        self._gradients: PPOGradients | None = None
        self._compiled_step: tuple[tuple, Callable] | None = None
        #: Which path the last :meth:`update` took: ``"fast"`` or ``"autograd: <reason>"``.
        self.update_path = ""

    def collection_policy(self) -> MLPActor:
        return self.actor

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        # fused Adam: one kernel per step instead of a loop over tensors (4x faster on
        # CPU at these sizes); eps as SB3's PPO.
        return torch.optim.Adam(params, lr=self.hparams.learning_rate, eps=1e-5, fused=True)

    @torch.no_grad()
    def advantages(
        self,
        batch: TensorDictBase,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and value targets ``[N, T, 1]`` for a ``[N, T]`` round batch.

        Rewards are the batch's ``("next", "reward")``, or ``reward_fn(batch)`` when given.
        """
        advantage, value_target, _ = self._advantages(batch, reward_fn)
        return advantage, value_target

    @torch.no_grad()
    def _advantages(
        self,
        batch: TensorDictBase,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`advantages` and the state values ``[N, T, 1]`` they were computed from."""
        obs, next_obs = batch["observation"], batch["next", "observation"]
        value = self.critic.value(obs)
        # V(next_obs[t]) is V(obs[t+1]) wherever the two rows are equal (no reset between):
        # evaluate the critic only on the other rows (episode ends and the last step).
        next_value = torch.empty_like(value)
        next_value[:, :-1] = value[:, 1:]
        fresh = torch.ones(next_obs.shape[:2], dtype=torch.bool, device=value.device)
        fresh[:, :-1] = (next_obs[:, :-1] != obs[:, 1:]).flatten(2).any(-1)
        next_value[fresh] = self.critic.value(next_obs[fresh])
        reward = batch["next", "reward"] if reward_fn is None else reward_fn(batch)
        advantage, value_target = gae(
            self.hparams.gamma,
            self.hparams.gae_lambda,
            value,
            next_value,
            reward,
            batch["next", "done"],
            batch["next", "terminated"],
        )
        return advantage, value_target, value

    def update(
        self,
        batch: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """PPO's updates on one collected ``[N, T]`` round (see :meth:`OnlineAlgorithm.update`).

        ``reward_fn`` relabels the whole round once, before the advantages.

        The minibatch steps take the fast path (closed-form gradients, flat Adam; see the
        class docstring) only when it computes exactly what ``backward(loss)`` and
        ``optimizer.step()`` would:

        * ``backward`` is None (``loss.backward()``), or a LightningModule's own
          ``manual_backward`` whose Trainer runs the default 32-bit ``Precision`` plugin on
          a ``SingleDeviceStrategy``. There ``manual_backward`` is ``loss.backward()`` plus
          the ``on_before_backward``/``on_after_backward`` hooks, and a
          ``LightningOptimizer`` step is ``optimizer.step()`` plus the
          ``on_before_optimizer_step`` hook and the ``global_step`` counter; the fast path
          is taken only when neither the module nor any callback overrides those hooks
          (or ``backward``), and it still advances ``global_step`` once per minibatch.
          Mixed or double precision (autocast, gradient scaling), other strategies
          (gradient synchronisation) and custom backward functions take the autograd path;
        * the optimizer is ``torch.optim.Adam``/``AdamW`` without weight decay, AMSGrad,
          ``maximize``, step hooks or per-group hyperparameters, over exactly the actor's
          and critic's parameters; autocast is off; and the networks are supported
          (:meth:`PPOGradients.unsupported_reason`).

        :attr:`update_path` records the path taken.
        """
        hp = self.hparams
        if hp.lr_schedule == "linear":
            for group in optimizer.param_groups:
                group["lr"] = hp.learning_rate * max(1.0 - self.frames / self.total_frames, 0.0)
        advantage, value_target, value = self._advantages(batch, reward_fn)
        n = batch.numel()
        keys = self.loss_module.tensor_keys  # set_keys names what the update reads
        obs = batch[keys.observation]
        obs = obs.reshape(n, *obs.shape[batch.batch_dims :])
        # The sample the stored log-probability belongs to (unclipped, for bounded Gaussians).
        taken = batch.get("action_sample", None) if keys.action == "action" else None
        taken = batch[keys.action] if taken is None else taken
        action = taken.reshape(n, *taken.shape[2:])
        old_log_prob = batch[keys.sample_log_prob].reshape(n)
        advantage, value_target = advantage.reshape(n), value_target.reshape(n)
        tensors = (obs, action, old_log_prob, advantage, value_target)
        blocker = self._fast_update_blocker(optimizer, backward)
        self.update_path = "fast" if blocker is None else f"autograd: {blocker}"
        if blocker is None:
            logged, updates = self._fast_update(optimizer, *tensors)
        else:
            logged, updates = self._autograd_update(optimizer, backward or plain_backward, *tensors)
        if self.actor.obs_norm is not None:
            # After the update, so this round's stored log-probs matched the policy used.
            self.actor.obs_norm.update(obs)
        # One reduction per key for the whole round (the last epoch's minibatches).
        metrics = {
            key: float(torch.stack([o[key].detach() for o in logged]).mean()) for key in logged[0]
        }
        # Of the values the advantages were computed from, as Stable-Baselines3 reports it.
        metrics["explained_variance"] = _explained_variance(value.reshape(n), value_target)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        # forward() always reports the entropy term; the fused step only when it trains.
        metrics.setdefault("loss_entropy", 0.0)
        metrics["updates"] = float(updates)
        self.optimizer_steps += updates
        return metrics

    def _epochs(self) -> Iterator[tuple[int, bool]]:
        """``(epoch, diagnostics)``; diagnostics cost kernels, so only in the last epoch
        (or in every epoch when early stopping on the KL needs them).
        """
        hp = self.hparams
        for epoch in range(hp.n_epochs):
            yield epoch, hp.target_kl is not None or epoch == hp.n_epochs - 1

    def _stop_early(self, epoch_logged: list[dict[str, torch.Tensor]]) -> bool:
        target_kl = self.hparams.target_kl
        if target_kl is None:
            return False
        return float(torch.stack([o["kl_approx"] for o in epoch_logged]).mean()) > 1.5 * target_kl

    def _autograd_update(
        self,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
        obs: torch.Tensor,
        action: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantage: torch.Tensor,
        value_target: torch.Tensor,
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """The reference path: autograd through :class:`PPOClipLoss`, ``optimizer.step()``."""
        hp = self.hparams
        n = obs.shape[0]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        loss_fn = self._loss_forward()
        keys = self.loss_module.tensor_keys
        # The round as the loss reads it: its keys (set_keys) name the columns.
        round_td = TensorDict(
            {
                keys.observation: obs,
                keys.action: action,
                keys.sample_log_prob: old_log_prob,
                keys.advantage: advantage,
                keys.value_target: value_target,
            },
            batch_size=[n],
        )
        logged: list[dict[str, torch.Tensor]] = []
        updates = 0
        for _, _diagnostics in self._epochs():
            # One gather per epoch; minibatches are then contiguous views.
            epoch_td = round_td[randperm(n, self.rng, obs.device)]
            epoch_logged = []
            for i in range(n // hp.batch_size):
                out = loss_fn(epoch_td[i * hp.batch_size : (i + 1) * hp.batch_size])
                loss = sum(value for key, value in out.items() if key.startswith("loss_"))
                optimizer.zero_grad(set_to_none=True)
                backward(loss)
                if hp.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm, foreach=True)
                optimizer.step()
                epoch_logged.append({k: v.detach() for k, v in out.items()})
                updates += 1
            logged = epoch_logged
            if self._stop_early(epoch_logged):
                break
        return logged, updates

    def _loss_forward(self) -> Callable[[TensorDictBase], TensorDictBase]:
        """``self.loss_module``'s forward, compiled with ``compile_loss`` (the current loss)."""
        loss = self.loss_module
        if not self.hparams.compile_loss:
            return loss
        if self._compiled_loss is None or self._compiled_loss[0] is not loss:
            self._compiled_loss = (loss, torch.compile(loss, dynamic=False))
        return self._compiled_loss[1]

    @torch.no_grad()
    def _fast_update(
        self,
        optimizer: torch.optim.Optimizer,
        obs: torch.Tensor,
        action: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantage: torch.Tensor,
        value_target: torch.Tensor,
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """The same steps as :meth:`_autograd_update` with closed-form gradients and flat Adam.

        Consumes the RNG identically (one ``randperm`` per epoch), so both paths visit the
        same minibatches.
        """
        hp = self.hparams
        grads = self._gradients
        n, size = obs.shape[0], hp.batch_size
        count = n // size
        # Observation normalisation is fixed during the update: apply it once per round.
        inputs = grads.features(obs)
        actions = grads.encode_actions(action)
        adam = FlatAdam(unwrap_optimizer(optimizer), grads)
        train_step = self._train_step(adam, size)
        logged: list[dict[str, torch.Tensor]] = []
        updates = 0
        for _, diagnostics in self._epochs():
            perm = randperm(n, self.rng, obs.device)
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
            if self._stop_early(epoch_logged):
                break
        adam.finish()
        return logged, updates

    def _train_step(self, adam: FlatAdam, size: int) -> Callable:
        """One minibatch step of the fast path: gradients, clipping, Adam, all in place.

        With ``compile_loss`` the whole step (no autograd in it) is one ``torch.compile``d
        graph, compiled once per model (two variants: with and without diagnostics).
        """
        grads, max_norm = self._gradients, self.hparams.max_grad_norm
        grads.prepare(size)  # buffers allocated outside compiled code
        weights, grad_views = grads.views(adam.params), grads.views(adam.grad)

        def eager(x, a, old_log_prob, advantage_weight, value_target, diagnostics):
            out = grads.step(
                weights, grad_views, x, a, old_log_prob, advantage_weight, value_target, diagnostics
            )
            if max_norm is not None:
                clip_flat_(adam.grad, max_norm)
            adam.step()
            return out

        if not self.hparams.compile_loss:
            return eager
        constants = (adam.beta1, adam.beta2, adam.eps, max_norm)
        if self._compiled_step is None or self._compiled_step[0] != constants:
            self._compiled_step = (constants, compile_train_step(grads, *constants))
        compiled = self._compiled_step[1]

        def step(x, a, old_log_prob, advantage_weight, value_target, diagnostics):
            if not adam.started:  # the optimizer's own first step creates its state
                return eager(x, a, old_log_prob, advantage_weight, value_target, diagnostics)
            adam.flat_steps += 1
            return compiled(
                adam.params,
                adam.grad,
                adam.exp_avg,
                adam.exp_avg_sq,
                adam.step_tensor,
                adam.lr_tensor,
                x,
                a,
                old_log_prob,
                advantage_weight,
                value_target,
                diagnostics,
            )

        return step

    def _fast_update_blocker(
        self, optimizer: torch.optim.Optimizer, backward: Callable | None
    ) -> str | None:
        """Why this update must take the autograd path (None: the fast path is exact)."""
        if not self.hparams.fast_update:
            return "fast_update=False"
        if type(self.loss_module) is not PPOClipLoss:
            # The fused update implements PPOClipLoss exactly; a subclass may change the loss.
            return f"loss {type(self.loss_module).__name__} is not PPOClipLoss itself"
        if torch.is_autocast_enabled(next(self.actor.parameters()).device.type):
            return "autocast is enabled"
        # Checked every round (cheap): parameters may have been frozen or replaced since.
        reason = PPOGradients.unsupported_reason(self.loss_module)
        if reason is not None:
            return reason
        if self._gradients is None or set(map(id, self._gradients.parameters())) != set(
            map(id, self.loss_module.parameters())
        ):
            self._gradients = PPOGradients(self.loss_module)
        reason = lightning_blocker(optimizer, backward)
        if reason is not None:
            return reason
        return FlatAdam.unsupported_reason(unwrap_optimizer(optimizer), self._gradients)


@torch.no_grad()
def _explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> float:
    variance = target.var()
    if variance == 0:
        return float("nan")
    return float(1 - (target - prediction.reshape(target.shape)).var() / variance)
