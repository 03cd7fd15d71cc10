"""Deep Q-learning (DQN) for Discrete actions, as a LightningModule.

Each round collects ``frames_per_batch`` frames with an epsilon-greedy
:class:`~tdimitation.policies.QValueActor`, adds them to a replay buffer and, once
``learning_starts`` frames are in, runs ``gradient_steps`` minibatch updates of the one-step
Q-learning loss (Huber, as Stable-Baselines3), syncing the target network every
``target_update_interval`` gradient steps (hard copy, or Polyak averaging with ``tau < 1``).
Epsilon decays linearly over the first ``exploration_fraction`` of the frame budget, after
``learning_starts`` frames of uniformly random actions (as Stable-Baselines3).

The defaults are the rl-baselines3-zoo CartPole-v1 hyperparameters (train_freq 256 and
128 gradient steps per round, Adam 2.3e-3, batch 64, 256-256 ReLU network; the zoo's
target update every 10 env steps amounts to one sync per round, which is what
``target_update_interval=128`` does here).

The loss is :class:`~tdimitation.objectives.QLearningLoss` (in
:mod:`tdimitation.objectives.dqn`), re-exported here for the older import path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Categorical as CategoricalSpec
from torchrl.data import MultiCategorical, ReplayBuffer

from tdimitation.envs import as_env_id
from tdimitation.errors import SpaceMismatchError
from tdimitation.objectives.dqn import QLearningLoss
from tdimitation.policies.actors import QValueActor, build_actor
from tdimitation.policies.adapters import EpsilonGreedyQPolicy
from tdimitation.rl.base import OnlineAlgorithm
from tdimitation.utils import check_positive, plain_backward, seeded

__all__ = ["DQN", "QLearningLoss"]


class DQN(OnlineAlgorithm):
    """Deep Q-learning (Mnih et al., 2015) for Discrete action spaces.

    The policy is :attr:`actor` (:class:`~tdimitation.policies.QValueActor`, or an
    :class:`~tdimitation.policies.adapters.EpsilonGreedyQPolicy` over ``qnet``): epsilon-greedy
    while collecting, greedy under deterministic exploration. Checkpoints restore the
    networks (online and target), optimizer, observation normaliser, replay buffer (sized
    to its contents), frame and update counters and RNG states; the exported policy is a
    greedy copy (``epsilon = 0``) of the actor.

    Args:
        env_id: gymnasium id with a Discrete action space.
        num_envs: sub-envs stepped together.
        frames_per_batch: frames collected per round (SB3's ``train_freq`` in frames).
        total_frames: the run's budget of environment frames.
        seed: seed of the env and of the RNGs.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
        buffer_size: replay-buffer capacity in transitions.
        batch_size: minibatch size of each gradient step.
        learning_starts: frames of uniformly random actions before the first update.
        gamma: discount factor.
        lr: Adam learning rate.
        gradient_steps: gradient steps per round (``-1``: one per frame collected).
        target_update_interval: gradient steps between target-network updates.
        tau: target update coefficient (1 = hard copy, < 1 = Polyak averaging).
        exploration_fraction: fraction of ``total_frames`` over which epsilon decays.
        exploration_initial_eps: epsilon at the start of the decay.
        exploration_final_eps: epsilon after the decay.
        double_dqn: use the double-DQN target.
        max_grad_norm: gradient-norm clipping threshold (``None``: no clipping).
        hidden_sizes: hidden layer widths of the Q-network.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
        normalize_observations: normalise observations with running statistics (updated
            after each round's gradient steps; the target network shares them).
        loss_function: ``"smooth_l1"`` (Huber, as SB3) or ``"l2"``.
        qnet: the Q-network to train instead of a new MLP, e.g. a torchrl ``ValueOperator``
            writing ``action_value`` or a ``QValueActor``; :attr:`actor` is then an
            :class:`~tdimitation.policies.adapters.EpsilonGreedyQPolicy` over it
            (``actor.q_network.module`` is yours). Not a hyperparameter: pass it again to
            ``load_from_checkpoint``. ``hidden_sizes``, ``activation`` and
            ``normalize_observations`` then go unused, and the checkpoint's exported-policy
            entry is empty (the weights are in its state dict).
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 8,
        frames_per_batch: int = 256,
        total_frames: int = 50_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        buffer_size: int = 100_000,
        batch_size: int = 64,
        learning_starts: int = 1000,
        gamma: float = 0.99,
        lr: float = 2.3e-3,
        gradient_steps: int = 128,
        target_update_interval: int = 128,
        tau: float = 1.0,
        exploration_fraction: float = 0.16,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.04,
        double_dqn: bool = False,
        max_grad_norm: float | None = 10.0,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        normalize_observations: bool = False,
        loss_function: str = "smooth_l1",
        qnet: TensorDictModuleBase | None = None,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        super().__init__(
            env_id=env_id,
            num_envs=num_envs,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        # Networks are not hyperparameters (checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["qnet"])
        check_positive(batch_size=batch_size, buffer_size=buffer_size)
        check_positive(target_update_interval=target_update_interval)
        if buffer_size < batch_size:
            raise ValueError(
                f"buffer_size ({buffer_size}) is smaller than batch_size ({batch_size})"
            )
        if gradient_steps < -1:
            raise ValueError(
                f"gradient_steps must be >= 0, or -1 for one per frame; got {gradient_steps}"
            )
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if not 0.0 <= exploration_fraction <= 1.0:
            raise ValueError(f"exploration_fraction must be in [0, 1], got {exploration_fraction}")
        for name, eps in (("initial", exploration_initial_eps), ("final", exploration_final_eps)):
            if not 0.0 <= eps <= 1.0:
                raise ValueError(f"exploration_{name}_eps must be in [0, 1], got {eps}")
        act_spec = self.env.full_action_spec_unbatched["action"]
        if not isinstance(act_spec, CategoricalSpec) or isinstance(act_spec, MultiCategorical):
            raise SpaceMismatchError(
                f"DQN needs a Discrete action space, but {env_id} has {type(act_spec).__name__} "
                f"actions of shape {tuple(act_spec.shape)}; use SAC or PPO for continuous or "
                "multi-discrete actions"
            )
        # Initial weights from ``seed``, not from the global RNG's state: runs repeat.
        if qnet is not None:
            self.actor: QValueActor | EpsilonGreedyQPolicy = EpsilonGreedyQPolicy(qnet)
        else:
            with seeded(seed):
                self.actor = build_actor(
                    self.env,
                    kind="qvalue",
                    hidden_sizes=hidden_sizes,
                    activation=activation,
                    normalize_observations=normalize_observations,
                )
        # Frame 0 is in the random warm-up unless learning starts at once (exploration_rate(0),
        # from the arguments: a driving algorithm sets this module's hparams after __init__).
        self.actor.epsilon.fill_(1.0 if learning_starts > 0 else float(exploration_initial_eps))
        self.loss = QLearningLoss(
            self.actor, gamma=gamma, double_dqn=double_dqn, loss_function=loss_function
        )
        # Sampled with an explicit size (a block of minibatches per round), so no batch_size.
        self.buffer = self.make_transition_buffer(buffer_size)
        self.num_updates = 0  # gradient steps so far (restored from checkpoints)

    # ------------------------------------------------------------- exploration
    def exploration_rate(self, frames: int) -> float:
        """Epsilon after ``frames`` frames: 1 during the random warm-up, then linear decay.

        As Stable-Baselines3: ``initial + (final - initial) * min(1, frames / (fraction *
        total_frames))``, and uniformly random actions before ``learning_starts`` frames.
        """
        hp = self.hparams
        if frames < hp.learning_starts:
            return 1.0
        span = hp.exploration_fraction * self.total_frames
        progress = 1.0 if span <= 0 else min(frames / span, 1.0)
        return float(
            hp.exploration_initial_eps
            + progress * (hp.exploration_final_eps - hp.exploration_initial_eps)
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The round collects at the start of training_step: give it its scheduled epsilon
        # (also right after a resume, whatever the checkpoint held).
        self.actor.epsilon.fill_(self.exploration_rate(self.frames))

    # ------------------------------------------------------------------ policy
    def collection_policy(self) -> QValueActor | EpsilonGreedyQPolicy:
        return self.actor

    def export_policy(self) -> QValueActor | EpsilonGreedyQPolicy:
        """A greedy copy of the actor (``epsilon = 0``) for saving and evaluation."""
        policy = copy.deepcopy(self.actor).cpu()
        policy.epsilon.zero_()
        return policy

    # ---------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.actor.parameters())
        try:
            # Fused Adam is ~4x faster per step on CPU for small networks.
            return torch.optim.Adam(params, lr=self.hparams.lr, fused=True)
        except RuntimeError:  # device or dtype without a fused kernel
            return torch.optim.Adam(params, lr=self.hparams.lr)

    def replay_buffers(self) -> dict[str, ReplayBuffer]:
        return {"replay": self.buffer}

    def _gradient_steps(self) -> int:
        steps = self.hparams.gradient_steps
        return self.frames_per_batch if steps == -1 else int(steps)

    def sync_frames(self, frames: int) -> None:
        """Set the frame counter (as a driven component) and the epsilon it schedules."""
        super().sync_frames(frames)
        self.actor.epsilon.fill_(self.exploration_rate(self.frames))

    def update(
        self,
        batch: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
        sample_fn: Callable[[int], TensorDictBase] | None = None,
    ) -> dict[str, float]:
        """Store one round and run its gradient steps (see :meth:`OnlineAlgorithm.update`).

        ``reward_fn`` relabels each round's block of sampled transitions; ``sample_fn(n)``,
        when given, supplies the ``n`` transitions of a round's minibatches (``n`` a
        multiple of ``batch_size``, consecutive rows forming one minibatch) instead of this
        module's replay buffer: a driving algorithm (SQIL) mixes in its own data this way.
        Updates start once ``self.frames`` plus this round reach ``learning_starts``.
        """
        self.store_transitions(self.buffer, batch)
        metrics: dict[str, float] = {}
        n_steps = self._gradient_steps()
        if self.frames + batch.numel() >= self.hparams.learning_starts and n_steps > 0:
            metrics = self._update(
                n_steps, optimizer, backward or plain_backward, reward_fn, sample_fn
            )
        if getattr(self.actor, "obs_norm", None) is not None:
            # After the updates: this round's targets used the statistics it was collected with.
            self.actor.obs_norm.update(batch.get("observation").reshape(batch.numel(), -1))
        metrics["updates"] = float(self.num_updates)
        return metrics

    def _update(
        self,
        n_steps: int,
        opt: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
        sample_fn: Callable[[int], TensorDictBase] | None = None,
    ) -> dict[str, float]:
        """``n_steps`` gradient steps on minibatches drawn uniformly (with replacement)."""
        hp = self.hparams
        bs = int(hp.batch_size)
        # One draw of n_steps * bs rows per round: the buffer does not change within a
        # round, so this is the same distribution as one draw per step, without the
        # ~0.1 ms replay-buffer call per step.
        block = (sample_fn or self.buffer.sample)(n_steps * bs).to(self.device)
        keys = self.loss.tensor_keys
        if reward_fn is not None:
            block.set(("next", keys.reward), reward_fn(block).reshape(-1, 1))
        # Only the loss's inputs, as n_steps minibatches: indexing then touches five leaves.
        minibatches = block.select(*self.loss.in_keys).reshape(n_steps, bs)
        params = list(self.actor.parameters())
        losses, q_values = [], []
        for k in range(n_steps):
            # The module's forward is what trains: a subclass or set_keys governs it.
            out = self.loss(minibatches[k])
            loss, q_value = out["loss"], out["q_value"]
            opt.zero_grad(set_to_none=True)
            backward(loss)
            if hp.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm, foreach=True)
            opt.step()
            self.num_updates += 1
            if self.num_updates % hp.target_update_interval == 0:
                self.loss.update_target(hp.tau)
            losses.append(loss.detach())
            q_values.append(q_value)
        return {
            "loss": float(torch.stack(losses).mean()),
            "q_value": float(torch.stack(q_values).mean()),
        }

    def training_round(self, batch: TensorDictBase) -> None:
        """One round: store the batch, update if past ``learning_starts``, log."""
        # The epsilon this round was collected with (set in on_train_batch_start).
        metrics = {"epsilon": self.exploration_rate(self.frames)}
        metrics |= self.update(batch, self.optimizers(), self.manual_backward)
        self.log_round(batch, metrics)
        # Between rounds (and in checkpoints) the actor holds the next round's epsilon.
        self.actor.epsilon.fill_(self.exploration_rate(self.frames))

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tdimitation"]["dqn"] = {"num_updates": self.num_updates}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.num_updates = int(checkpoint["tdimitation"]["dqn"]["num_updates"])
