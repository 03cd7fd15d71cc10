"""Proximal Policy Optimization as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives.value.functional import generalized_advantage_estimate

from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.policies.actors import (
    CategoricalActor,
    GaussianActor,
    MLPActor,
    build_actor,
    observation_width,
)
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl.base import OnlineAlgorithm, plain_backward


class PPO(OnlineAlgorithm):
    """PPO with clipped surrogate objective and GAE (Schulman et al. 2017).

    Defaults are Stable-Baselines3's PPO defaults (2048 steps per env per round, 10
    epochs, minibatch 64, lr 3e-4, clip 0.2, GAE λ 0.95, γ 0.99, value coefficient 0.5,
    gradient norm 0.5, Adam eps 1e-5), except that actor and critic are separate MLPs
    (as SB3's ``MlpPolicy``) of ``hidden_sizes``. Each round collects
    ``num_envs * n_steps`` frames, computes advantages once, then runs ``n_epochs`` passes
    of minibatch updates. Minibatches are gathered once per epoch as tensors and the loss is
    :class:`~tdimitation.objectives.PPOClipLoss` on tensors; the optimizer is Adam with
    ``fused=True``. Bootstrapping stops at terminations, not at truncations.

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
        compile_loss: ``torch.compile`` the loss (forward and backward fused into fewer
            kernels; pays a one-off compilation of tens of seconds, worth it on long runs).
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
        compile_loss: bool = False,
    ) -> None:
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
        self.actor: MLPActor = build_actor(
            self.env,
            hidden_sizes=hidden_sizes,
            activation=activation,
            normalize_observations=normalize_observations,
        )
        if isinstance(self.actor, GaussianActor):
            self.actor.log_std.data.fill_(float(log_std_init))
            self.actor.config["log_std_init"] = float(log_std_init)
        elif not isinstance(self.actor, CategoricalActor):
            raise ValueError(f"PPO supports Discrete and Box actions, got {self.actor}")
        self.critic = ValueCritic(
            observation_width(self.env), hidden_sizes, activation, obs_norm=self.actor.obs_norm
        )
        self.loss_module = PPOClipLoss(
            self.actor,
            self.critic,
            clip_epsilon=clip_epsilon,
            vf_coef=vf_coef,
            ent_coef=ent_coef,
            normalize_advantage=normalize_advantage,
        )
        self._loss_fn = self.loss_module.loss_tensors
        if compile_loss:
            self._loss_fn = torch.compile(self.loss_module.loss_tensors, dynamic=False)

    def collection_policy(self) -> MLPActor:
        return self.actor

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        # fused Adam: one kernel per step instead of a loop over tensors (4x faster on
        # CPU at these sizes, speed notes §Q2); eps as SB3's PPO.
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
        steps = batch.shape[1]
        observations = torch.cat([batch["observation"], batch["next", "observation"]], dim=1)
        values = self.critic.value(observations)
        value, next_value = values[:, :steps], values[:, steps:]
        return generalized_advantage_estimate(
            self.hparams.gamma,
            self.hparams.gae_lambda,
            value,
            next_value,
            batch["next", "reward"] if reward_fn is None else reward_fn(batch),
            batch["next", "done"],
            batch["next", "terminated"],
        )

    def training_round(self, batch: TensorDictBase) -> None:
        metrics = self.update(batch, self.optimizers(), self.manual_backward)
        self.log_round(batch, metrics)

    def update(
        self,
        batch: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """PPO's updates on one collected ``[N, T]`` round batch; returns the round's metrics.

        This is the generator interface adversarial and preference algorithms call (they own
        the Trainer): ``backward`` defaults to ``loss.backward()`` (pass the Lightning
        module's ``manual_backward`` for precision plugins), and ``reward_fn``, when given,
        maps the batch to the rewards ``[N, T, 1]`` PPO trains on instead of the env's.
        """
        hp = self.hparams
        backward = backward or plain_backward
        if hp.lr_schedule == "linear":
            for group in optimizer.param_groups:
                group["lr"] = hp.learning_rate * max(1.0 - self.frames / self.total_frames, 0.0)
        advantage, value_target = self.advantages(batch, reward_fn)
        n = batch.numel()
        obs = batch["observation"].reshape(n, -1)
        action = batch["action"].reshape(n, *batch["action"].shape[2:])
        old_log_prob = batch["action_log_prob"].reshape(n)
        advantage, value_target = advantage.reshape(n), value_target.reshape(n)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        n_minibatches = n // hp.batch_size
        logged: list[dict[str, torch.Tensor]] = []
        updates = 0
        for epoch in range(hp.n_epochs):
            # Diagnostics cost kernels per step: compute them in the last epoch only, or in
            # every epoch when early stopping on the KL needs them.
            diagnostics = hp.target_kl is not None or epoch == hp.n_epochs - 1
            # One gather per epoch; minibatches are then contiguous views.
            perm = torch.randperm(n, device=obs.device)
            epoch_tensors = [t[perm] for t in (obs, action, old_log_prob, advantage, value_target)]
            epoch_logged = []
            for i in range(n_minibatches):
                part = slice(i * hp.batch_size, (i + 1) * hp.batch_size)
                out = self._loss_fn(*(t[part] for t in epoch_tensors), diagnostics=diagnostics)
                loss = out["loss_objective"] + out["loss_critic"]
                if "loss_entropy" in out:
                    loss = loss + out["loss_entropy"]
                optimizer.zero_grad(set_to_none=True)
                backward(loss)
                if hp.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm, foreach=True)
                optimizer.step()
                if diagnostics:
                    epoch_logged.append(out)
                updates += 1
            logged = epoch_logged or logged
            if hp.target_kl is not None:
                epoch_kl = float(torch.stack([o["kl_approx"] for o in epoch_logged]).mean())
                if epoch_kl > 1.5 * hp.target_kl:
                    break
        if self.actor.obs_norm is not None:
            # After the update, so this round's stored log-probs matched the policy used.
            self.actor.obs_norm.update(obs)
        # One reduction per key for the whole round (the last epoch's minibatches).
        metrics = {
            key: float(torch.stack([o[key].detach() for o in logged]).mean()) for key in logged[0]
        }
        metrics["explained_variance"] = _explained_variance(
            self.critic.value(obs).detach(), value_target
        )
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["updates"] = float(updates)
        return metrics


@torch.no_grad()
def _explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> float:
    variance = target.var()
    if variance == 0:
        return float("nan")
    return float(1 - (target - prediction.reshape(target.shape)).var() / variance)
