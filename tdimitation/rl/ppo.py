"""Proximal Policy Optimization as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase

from tdimitation.distributed import gather_rows, mean_over_processes
from tdimitation.envs import as_env_id
from tdimitation.fused import FirstMinibatchCheck, FusedOptions, FusedUpdate, fused_update_for, gae
from tdimitation.nn import ImageEncoder, RunningNorm, discounted_returns, scale_by_return_std
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.policies.actors import (
    CategoricalActor,
    GaussianActor,
    MLPActor,
    build_actor,
    image_shape_of,
    observation_width,
)
from tdimitation.policies.adapters import as_actor, as_value_critic
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl.base import OnlineAlgorithm
from tdimitation.rng import randperm
from tdimitation.utils import plain_backward, seeded


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
    of minibatch updates of :class:`~tdimitation.objectives.PPOClipLoss`; the optimizer is
    Adam with ``fused=True``. Bootstrapping stops at terminations, not at truncations.

    **The update.** :meth:`_autograd_update` is the specification: per minibatch, the loss
    module's ``forward``, ``backward``, ``clip_grad_norm_``, ``optimizer.step()``. When
    :func:`~tdimitation.fused.fused_update_for` finds it exact (exactly ``PPOClipLoss``,
    PPO's own MLP actor-critic, float32 on one device, plain Adam, no backward or
    optimizer-step hook), the round runs :class:`~tdimitation.fused.PPOFusedUpdate`
    instead: closed-form gradients (actor and critic hidden layers evaluated together as
    stacked "twin" weights), clipping and Adam on one flat buffer, parameters and Adam's
    moments written back after the round; same parameters up to float rounding, 2.5-3x fewer
    microseconds per minibatch on CPU (``benchmarks/bench_ppo.py``). At the start of every
    fit its gradients are checked once against autograd's on the round's first minibatch;
    if they disagree the fit uses autograd (with a :class:`~tdimitation.fused.
    FusedUpdateWarning`). ``fast_update=False`` forces the autograd path; :attr:`update_path`
    says which path the last update took and why.

    A fused round steps the torch optimizer itself: per-optimizer-step hooks do not fire
    inside it (Lightning's ``on_before_optimizer_step``/backward hooks, when overridden,
    send the round through autograd instead; ``torch.optim`` step hooks are skipped) and
    ``trainer.global_step`` does not count its steps. ``optimizer_steps`` counts every step.

    **Several processes.** Under Lightning's ``ddp`` strategy each process collects
    ``num_envs * n_steps`` frames a round with envs and generators of its own (seeded from
    ``seed`` and its rank; rank 0 draws what a one-process run draws), updates on its own
    minibatches of ``batch_size``, and DDP averages the gradients of each step, so the
    parameters stay identical. ``total_frames`` counts the frames of all processes (a round
    is ``N * num_envs * n_steps`` frames), the observation and return statistics fold in
    every process's data, and ``target_kl`` stops all processes on their mean KL. The
    gradients are averaged in the backward pass, so the autograd update trains
    (:attr:`update_path` says so). Logged episode statistics are the first process's.

    Logged per round: the loss terms and ``entropy``, ``kl_approx``, ``clip_fraction``
    (means over the last epoch's minibatches), ``explained_variance`` of the value targets by
    the values the advantages were computed from (as Stable-Baselines3 reports it), ``lr``,
    the round's number of optimizer steps (``updates``) and the run's (``optimizer_steps``).

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
        normalize_rewards: divide the rewards PPO trains on by the running standard
            deviation of each sub-env's discounted return (as Stable-Baselines3's
            ``VecNormalize(norm_reward=True)``; not centred, clipped to ±10). The statistics
            are folded in once per round, before its advantages, and are checkpointed;
            logged episode returns stay the true ones. The usual setting for MuJoCo tasks.
        log_std_init: initial log standard deviation (continuous actions).
        cnn: image encoder options (:class:`~tdimitation.nn.ImageEncoder` arguments other
            than ``image_shape``) for image observations; None: the Nature-CNN defaults.
        compile_loss: ``torch.compile`` the training step: on the fused path the whole
            minibatch step (closed-form gradients, clipping, Adam) becomes one graph of fused
            kernels; on the autograd path, the loss. Pays a one-off compilation of ~20 s on
            CPU, worth it on long runs.
        fast_update: use the fused update when exact (see above).
        actor: the policy to train instead of a new MLP actor, e.g. a torchrl
            ``ProbabilisticActor`` (``Categorical``/``OneHotCategorical`` for Discrete actions,
            ``TanhNormal`` or ``Normal`` for Box ones). It is wrapped in a
            :class:`~tdimitation.policies.adapters.TorchRLPolicy`, which is :attr:`actor`
            (``actor.module`` is yours) and collects. The fused update needs tdimitation's own
            MLPs, so training takes the autograd path (:attr:`update_path` says why), and the
            checkpoint's exported-policy entry is empty (the weights are in its state dict).
        critic: the state-value critic instead of a new MLP, e.g. a torchrl
            ``ValueOperator`` (wrapped in a :class:`~tdimitation.policies.adapters.TorchRLValue`).
            ``actor`` and ``critic`` are not hyperparameters: pass them again to
            ``load_from_checkpoint``; ``hidden_sizes``, ``activation``,
            ``normalize_observations`` and ``log_std_init`` only shape the networks built here.
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
        normalize_rewards: bool = False,
        log_std_init: float = 0.0,
        cnn: dict[str, Any] | None = None,
        compile_loss: bool = False,
        fast_update: bool = True,
        actor: TensorDictModuleBase | None = None,
        critic: TensorDictModuleBase | None = None,
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
        # Networks are not hyperparameters (checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["actor", "critic"])
        # Initial weights from ``seed``, not from the global RNG's state: runs repeat.
        with seeded(seed):
            if actor is None:
                self.actor: MLPActor | TensorDictModuleBase = build_actor(
                    self.env,
                    hidden_sizes=hidden_sizes,
                    activation=activation,
                    normalize_observations=normalize_observations,
                    cnn=cnn,
                )
            else:
                self.actor = as_actor(actor, self.env.full_action_spec_unbatched["action"])
            image_shape = image_shape_of(self.env)
            if critic is not None:
                self.critic = as_value_critic(critic)
            elif image_shape is None:
                obs_norm = getattr(self.actor, "obs_norm", None)
                self.critic = ValueCritic(
                    observation_width(self.env), hidden_sizes, activation, obs_norm=obs_norm
                )
            else:
                cnn_options = getattr(self.actor, "config", {}).get("cnn", cnn or {})
                encoder = ImageEncoder(image_shape, **cnn_options)
                self.critic = ValueCritic(
                    encoder.out_features, hidden_sizes, activation, encoder=encoder
                )
        if actor is None and isinstance(self.actor, GaussianActor):
            self.actor.log_std.data.fill_(float(log_std_init))
            self.actor.config["log_std_init"] = float(log_std_init)
        elif actor is None and not isinstance(self.actor, CategoricalActor):
            raise ValueError(f"PPO supports Discrete and Box actions, got {self.actor}")
        self.loss_module = PPOClipLoss(
            self.actor,
            self.critic,
            clip_epsilon=clip_epsilon,
            vf_coef=vf_coef,
            ent_coef=ent_coef,
            normalize_advantage=normalize_advantage,
        )
        # Statistics of the discounted return and each sub-env's running return, for
        # normalize_rewards (none otherwise, so default state dicts are unchanged).
        self.return_norm: RunningNorm | None = None
        self._carry: torch.Tensor | None = None
        if normalize_rewards:
            self.return_norm = RunningNorm(())
            self.register_buffer("_return_carry", torch.zeros(num_envs), persistent=True)
        # (loss module, its compiled forward): compiled again when the loss is swapped.
        self._compiled_loss: tuple[torch.nn.Module, Callable] | None = None
        self._fused_check = FirstMinibatchCheck()
        #: Which path the last :meth:`update` took: ``"fused"`` or ``"autograd: <reason>"``.
        self.update_path = ""

    multi_process = True

    def collection_policy(self) -> TensorDictModuleBase:
        return self.actor

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # dict.fromkeys: a user's actor and critic may share a trunk (each parameter once).
        params = list(dict.fromkeys([*self.actor.parameters(), *self.critic.parameters()]))
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
        advantage, value_target, _ = self._advantages(batch, reward_fn, fold_rewards=False)
        return advantage, value_target

    @torch.no_grad()
    def _advantages(
        self,
        batch: TensorDictBase,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
        fold_rewards: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`advantages` and the state values ``[N, T, 1]`` they were computed from.

        With ``normalize_rewards``, the round's rewards are scaled, after folding their
        returns into the statistics when ``fold_rewards`` (training rounds only).
        """
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
        if self.return_norm is not None:
            if fold_rewards:
                done = batch["next", "done"][..., 0]
                returns, carry = discounted_returns(
                    reward[..., 0], done, self._live_return_carry(), self.hparams.gamma
                )
                self._carry = carry
                self._return_carry.copy_(carry)
                # Every process folds in the returns of all: the statistics stay identical.
                self.return_norm.update(gather_rows(self, returns.reshape(-1)))
            reward = scale_by_return_std(reward, self.return_norm)
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

        ``reward_fn`` relabels the whole round once, before the advantages. The steps are
        :meth:`_autograd_update` (the specification) or, when
        :func:`~tdimitation.fused.fused_update_for` finds it exact and it passed this fit's
        first-minibatch check, the fused update; :attr:`update_path` records which and why.
        """
        hp = self.hparams
        if hp.lr_schedule == "linear":
            for group in optimizer.param_groups:
                group["lr"] = hp.learning_rate * max(1.0 - self.frames / self.total_frames, 0.0)
        advantage, value_target, value = self._advantages(batch, reward_fn)
        round_td = self._round_tensordict(batch, advantage, value_target)
        n = round_td.shape[0]
        fused = self._fused_update(optimizer, backward, round_td)
        if isinstance(fused, str):
            self.update_path = f"autograd: {fused}"
            logged, updates = self._autograd_update(round_td, optimizer, backward or plain_backward)
        else:
            self.update_path = "fused"
            logged, updates = fused.run(
                round_td,
                hp.batch_size,
                self._epochs(),
                lambda: randperm(n, self.rng, round_td.device),
                self._stop_early,
            )
        obs_norm = getattr(self.actor, "obs_norm", None)
        if obs_norm is not None:
            # After the update, so this round's stored log-probs matched the policy used;
            # under ddp with every process's observations, so the statistics stay identical.
            obs_norm.update(gather_rows(self, round_td[self.loss_module.tensor_keys.observation]))
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
        metrics["optimizer_steps"] = float(self.optimizer_steps)
        return metrics

    def _round_tensordict(
        self, batch: TensorDictBase, advantage: torch.Tensor, value_target: torch.Tensor
    ) -> TensorDictBase:
        """The round as the loss reads it, ``[N]``: its keys (``set_keys``) name the columns."""
        n = batch.numel()
        keys = self.loss_module.tensor_keys
        obs = batch[keys.observation]
        # The sample the stored log-probability belongs to (unclipped, for bounded Gaussians).
        taken = batch.get("action_sample", None) if keys.action == "action" else None
        taken = batch[keys.action] if taken is None else taken
        return TensorDict(
            {
                # Flat vectors stay [n, d]; images keep their [C, H, W].
                keys.observation: obs.reshape(n, *obs.shape[batch.batch_dims :]),
                keys.action: taken.reshape(n, *taken.shape[2:]),
                keys.sample_log_prob: batch[keys.sample_log_prob].reshape(n),
                keys.advantage: advantage.reshape(n),
                keys.value_target: value_target.reshape(n),
            },
            batch_size=[n],
            device=advantage.device,
        )

    def _fused_update(
        self,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None,
        round_td: TensorDictBase,
    ) -> FusedUpdate | str:
        """The fused update for this round, or why the autograd update runs instead."""
        hp = self.hparams
        if not hp.fast_update:
            return "fast_update=False"
        options = FusedOptions(backward, hp.max_grad_norm, hp.compile_loss)
        update = fused_update_for(self.loss_module, optimizer, options)
        # The first minibatch in collection order: drawing one would move the RNG.
        return self._fused_check(update, optimizer, lambda: round_td[: hp.batch_size])

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
        # Under ddp the processes decide together (one stopping alone would leave the
        # others waiting for its gradients): on the mean over all of them.
        kl = mean_over_processes(self, torch.stack([o["kl_approx"] for o in epoch_logged]).mean())
        return float(kl) > 1.5 * target_kl

    def _live_return_carry(self) -> torch.Tensor:
        """Each sub-env's running discounted return (``normalize_rewards``).

        Kept in an attribute besides the ``_return_carry`` buffer (which checkpoints hold):
        under ``ddp``, DDP may overwrite buffers with the first process's before a forward
        pass (``broadcast_buffers``), and each process's carry belongs to its own envs.
        """
        if self._carry is None:
            self._carry = self._return_carry.clone()
        return self._carry

    def on_fit_start(self) -> None:
        # Read the carry from the buffer again: a checkpoint may just have been loaded.
        self._carry = None

    def _autograd_update(
        self,
        round_td: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """The specification: minibatches through the loss's forward, backward, clip, step."""
        hp = self.hparams
        n = round_td.shape[0]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        loss_fn = self._loss_forward()
        logged: list[dict[str, torch.Tensor]] = []
        updates = 0
        for _, _diagnostics in self._epochs():
            # One gather per epoch; minibatches are then contiguous views.
            epoch_td = round_td[randperm(n, self.rng, round_td.device)]
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
def _explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> float:
    variance = target.var()
    if variance == 0:
        return float("nan")
    return float(1 - (target - prediction.reshape(target.shape)).var() / variance)
