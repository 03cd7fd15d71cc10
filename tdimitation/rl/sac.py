"""Soft actor-critic (SAC) for continuous (Box) and discrete actions, as a LightningModule.

:class:`SAC` is an off-policy :class:`~tdimitation.rl.base.OnlineAlgorithm`: each round
collects ``frames_per_batch`` frames (uniformly random actions until ``learning_starts``
frames), adds them to a replay buffer, and runs ``utd_ratio * frames_per_batch`` gradient
steps on minibatches sampled from it. The math is in two torchrl ``LossModule`` classes in
:mod:`tdimitation.objectives.sac` that work without Lightning:
:class:`~tdimitation.objectives.SoftActorCriticLoss` (squashed-Gaussian actor, twin Q(s, a)
critics) and :class:`~tdimitation.objectives.DiscreteSoftActorCriticLoss` (categorical actor,
twin Q(s, ·) critics); both are re-exported here for the older import path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import Bounded, MultiCategorical, TensorDictReplayBuffer
from torchrl.data import Categorical as CategoricalSpec

from tdimitation.envs import as_env_id
from tdimitation.errors import SpaceMismatchError
from tdimitation.nn import ACTIVATIONS
from tdimitation.objectives.sac import (
    DiscreteSoftActorCriticLoss,
    EnsembleMLP,
    SoftActorCriticLoss,
)
from tdimitation.policies.actors import (
    build_actor,
    is_deterministic,
    observation_width,
)
from tdimitation.policies.adapters import as_actor, as_critic_ensemble
from tdimitation.rl.base import OnlineAlgorithm
from tdimitation.rng import Stochastic, randint, uniform
from tdimitation.utils import check_positive, plain_backward, seeded

__all__ = [
    "SAC",
    "DiscreteSoftActorCriticLoss",
    "EnsembleMLP",
    "SoftActorCriticLoss",
]


class _WarmupPolicy(TensorDictModuleBase, Stochastic):
    """Uniformly random actions while ``explore_randomly`` is set, else the actor.

    The collector keeps one policy for the whole run, so the SAC module flips the flag
    when the warm-up ends. Deterministic exploration always uses the actor. Random
    actions come from the run's generator (``rng``, checkpointed, so resumed runs repeat
    them) and carry their true log-probability, so batches keep the same keys throughout.
    """

    def __init__(self, actor: nn.Module, action_spec) -> None:
        super().__init__()
        self.actor = actor
        self.in_keys = ["observation"]
        self.out_keys = ["action", "action_log_prob"]
        self.explore_randomly = True
        if isinstance(action_spec, CategoricalSpec):
            self.n_actions = int(action_spec.space.n)
            self.log_density = -math.log(self.n_actions)
        else:
            self.n_actions = None
            low = action_spec.space.low.reshape(-1).to(torch.float32)
            high = action_spec.space.high.reshape(-1).to(torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("width", high - low)
            self.log_density = -float(torch.log(high - low).sum())

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self.explore_randomly or is_deterministic():
            return self.actor(tensordict)
        batch = tensordict.batch_size
        device = tensordict.get("observation").device
        if self.n_actions is not None:
            action = randint(self.n_actions, batch, self.rng, device)
        else:
            u = uniform(batch + self.low.shape, self.rng, device)
            action = self.low + u * self.width
        tensordict.set("action", action)
        tensordict.set("action_log_prob", torch.full(batch, self.log_density, device=device))
        return tensordict


def _parse_ent_coef(ent_coef: str | float) -> tuple[float, bool]:
    """``"auto"`` / ``"auto_<init>"`` (learned) or a number (fixed) -> (initial, fixed)."""
    if isinstance(ent_coef, str):
        if ent_coef == "auto":
            return 1.0, False
        if ent_coef.startswith("auto_"):
            try:
                init = float(ent_coef[len("auto_") :])
            except ValueError:
                init = -1.0
            if init > 0:
                return init, False
        try:
            value = float(ent_coef)
        except ValueError:
            raise ValueError(
                f"ent_coef must be 'auto', 'auto_<initial value>' or a number >= 0, got "
                f"{ent_coef!r}"
            ) from None
        ent_coef = value
    if isinstance(ent_coef, bool) or not isinstance(ent_coef, int | float) or ent_coef < 0:
        raise ValueError(f"a fixed ent_coef must be a number >= 0, got {ent_coef!r}")
    return float(ent_coef), True


def _make_adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused when every parameter allows it (fused Adam is ~4x faster on CPU)."""
    device_types = {p.device.type for p in params}
    fused = (
        len(device_types) == 1
        and device_types <= {"cpu", "cuda", "mps", "xpu"}
        and all(p.is_floating_point() for p in params)
    )
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class SAC(OnlineAlgorithm):
    """Soft actor-critic for Box (squashed Gaussian) or Discrete (categorical) actions.

    Each round collects ``frames_per_batch`` frames from ``num_envs`` sub-envs (uniformly
    random actions until ``learning_starts`` frames are collected), adds them to the
    replay buffer and, once ``learning_starts`` frames are in, runs
    ``round(utd_ratio * frames_per_batch)`` gradient steps (one optimizer step each: critics,
    actor and temperature together, then a polyak update of the target critics). Defaults
    follow Stable-Baselines3's SAC (one gradient step per environment frame, batch 256,
    lr 3e-4, tau 0.005, 256-256 ReLU networks, learned temperature starting at 1 with target
    entropy ``-dim(A)``), except for 4 sub-envs updated every 16 steps and 1,000 warm-up
    frames (SB3: 1 env updated every step, 100). ``trainer.global_step`` counts gradient
    steps. Logged per round: ``train/loss_actor``, ``loss_qvalue``, ``loss_alpha``,
    ``alpha``, ``entropy``, ``q_value`` (means over the round's steps), ``gradient_steps``,
    ``update_seconds``, ``buffer_size``, plus the base class's frames and episode stats.

    Observation normalisation (``normalize_observations``) keeps running statistics in the
    actor's ``obs_norm``, updated after each round's gradient steps with the round's
    observations; the critics read the same normalised observations.

    Args:
        env_id: environment id for :func:`~tdimitation.envs.make_env`.
        num_envs: sub-envs stepped together.
        frames_per_batch: frames collected per round (a multiple of ``num_envs``).
        total_frames: the run's budget of environment frames.
        seed: seed of the env, the network initialisation and the global RNGs.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
        buffer_size: replay capacity in transitions (allocated at the first write, at most
            ``total_frames``).
        batch_size: minibatch size.
        learning_starts: frames of uniformly random actions before gradient steps start.
        gamma: discount factor.
        tau: polyak coefficient of the target critics.
        lr: Adam learning rate of the actor, the critics and the temperature.
        utd_ratio: gradient steps per collected frame (update-to-data ratio).
        hidden_sizes: hidden layer widths of the actor and each critic.
        activation: activation of the actor and the critics.
        ent_coef: ``"auto"`` (learned, initial value 1), ``"auto_<init>"`` (learned from
            ``<init>``) or a fixed number.
        target_entropy: target entropy of the learned coefficient; None for ``-dim(A)``
            (Box) or ``0.98 log(n_actions)`` (Discrete, as torchrl's ``DiscreteSACLoss``).
        normalize_observations: normalise observations with running statistics.
        loss_function: critic loss, ``"l2"`` (squared error), ``"smooth_l1"`` or ``"l1"``.
        actor: the policy to train instead of a new MLP actor, e.g. a torchrl
            ``ProbabilisticActor`` (``TanhNormal`` for Box actions, ``Categorical`` for
            Discrete ones), wrapped in a :class:`~tdimitation.policies.adapters.TorchRLPolicy`
            (:attr:`actor`; ``actor.module`` is yours).
        qvalue: the critics instead of a new :class:`~tdimitation.objectives.EnsembleMLP`:
            a torchrl ``ValueOperator`` (copied into two critics), a list of them, or any
            :class:`~tdimitation.objectives.protocols.CriticEnsemble`. For Box actions they
            read ``observation`` and ``action`` (env units) and write ``Q(s, a)``; for
            Discrete ones they read ``observation`` and write ``Q(s, .)``. ``actor`` and
            ``qvalue`` are not hyperparameters: pass them again to ``load_from_checkpoint``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 4,
        frames_per_batch: int = 64,
        total_frames: int = 100_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        buffer_size: int = 1_000_000,
        batch_size: int = 256,
        learning_starts: int = 1_000,
        gamma: float = 0.99,
        tau: float = 0.005,
        lr: float = 3e-4,
        utd_ratio: float = 1.0,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        ent_coef: str | float = "auto",
        target_entropy: float | None = None,
        normalize_observations: bool = False,
        loss_function: str = "l2",
        actor: TensorDictModuleBase | None = None,
        qvalue: nn.Module | Sequence[nn.Module] | None = None,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        # Networks are not hyperparameters (checkpoints load with weights_only=True).
        self.save_hyperparameters(ignore=["actor", "qvalue"])
        check_positive(buffer_size=buffer_size, batch_size=batch_size, utd_ratio=utd_ratio, lr=lr)
        if buffer_size < batch_size:
            raise ValueError(
                f"buffer_size ({buffer_size}) must hold at least one minibatch ({batch_size})"
            )
        if learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {learning_starts}")
        if learning_starts >= total_frames:
            raise ValueError(
                f"learning_starts ({learning_starts}) must be below total_frames "
                f"({total_frames}), or the run never trains"
            )
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        alpha_init, fixed_alpha = _parse_ent_coef(ent_coef)
        self.buffer_size = int(buffer_size)
        self.batch_size = int(batch_size)
        self.learning_starts = int(learning_starts)
        self.tau = float(tau)
        self.lr = float(lr)
        self.utd_ratio = float(utd_ratio)
        self.gradient_steps = max(1, round(self.utd_ratio * self.frames_per_batch))

        action_spec = self.env.full_action_spec_unbatched["action"]
        self.discrete = _is_discrete(action_spec, env_id)
        obs_dim = observation_width(self.env)
        # Seeded initialisation without disturbing the caller's global RNG.
        with seeded(seed):
            if actor is None:
                self.actor = build_actor(
                    self.env,
                    kind="categorical" if self.discrete else "tanh_normal",
                    hidden_sizes=hidden_sizes,
                    activation=activation,
                    normalize_observations=normalize_observations,
                )
            else:
                self.actor = as_actor(actor, action_spec)
            common = {
                "gamma": gamma,
                "alpha_init": alpha_init,
                "fixed_alpha": fixed_alpha,
                "target_entropy": target_entropy,
                "loss_function": loss_function,
            }
            if qvalue is not None:
                self.qvalue = (
                    qvalue if isinstance(qvalue, EnsembleMLP) else as_critic_ensemble(qvalue)
                )
            if self.discrete:
                n_actions = int(action_spec.space.n)
                if qvalue is None:
                    self.qvalue = EnsembleMLP(obs_dim, n_actions, hidden_sizes, activation)
                self.loss = DiscreteSoftActorCriticLoss(self.actor, self.qvalue, **common)
            else:
                action_dim = int(math.prod(action_spec.shape))
                if qvalue is None:
                    self.qvalue = EnsembleMLP(obs_dim + action_dim, 1, hidden_sizes, activation)
                self.loss = SoftActorCriticLoss(self.actor, self.qvalue, **common)
        self._policy = _WarmupPolicy(self.actor, action_spec)
        self.buffer = self.make_transition_buffer(self.buffer_size)
        self.update_seconds = 0.0  # wall time in gradient steps (diagnostics, not saved)

    # --------------------------------------------------------------- policies
    def collection_policy(self) -> TensorDictModuleBase:
        self._policy.explore_randomly = self.frames < self.learning_starts
        return self._policy

    def export_policy(self) -> TensorDictModuleBase:
        return self.actor

    def sync_frames(self, frames: int) -> None:
        super().sync_frames(frames)
        self._policy.explore_randomly = self.frames < self.learning_starts

    # ---------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # One group: the three losses touch disjoint parameters, so this is three Adams in
        # one fused call (per-group overhead is ~80 µs per step on CPU).
        params = [*self.actor.parameters(), *self.qvalue.parameters()]
        if not self.loss.fixed_alpha:
            params.append(self.loss.log_alpha)
        return _make_adam(params, self.lr)

    def replay_buffers(self) -> dict[str, TensorDictReplayBuffer]:
        return {"replay": self.buffer}

    def training_round(self, batch: TensorDictBase) -> None:
        super().training_round(batch)
        self._policy.explore_randomly = self.frames < self.learning_starts

    def update(
        self,
        batch: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
        sample_fn: Callable[[int], TensorDictBase] | None = None,
    ) -> dict[str, float]:
        """Store one round and run its gradient steps (see :meth:`OnlineAlgorithm.update`).

        ``reward_fn`` relabels each sampled block of transitions (``TRANSITION_KEYS``), so
        replayed transitions always carry the current learned reward. ``sample_fn(n)``, when
        given, supplies each block of ``n`` transitions (a multiple of ``batch_size``,
        consecutive rows forming one minibatch) instead of this module's replay buffer: a
        driving algorithm (SQIL) mixes in its own data this way. Gradient steps start
        once ``self.frames`` plus this round reach ``learning_starts``.
        """
        self.store_transitions(self.buffer, batch)
        metrics: dict[str, float] = {}
        if self.frames + batch.numel() >= self.learning_starts:
            start = time.perf_counter()
            metrics = self._gradient_steps(
                self.gradient_steps, optimizer, backward or plain_backward, reward_fn, sample_fn
            )
            metrics["update_seconds"] = time.perf_counter() - start
            self.update_seconds += metrics["update_seconds"]
        obs_norm = getattr(self.actor, "obs_norm", None)
        if obs_norm is not None:
            # After the updates: this round's targets used the statistics its data was
            # collected with; forward never updates them.
            obs = batch.get("observation")
            obs_norm.update(obs.reshape(-1, obs.shape[-1]).to(self.device))
        metrics["buffer_size"] = float(len(self.buffer))
        return metrics

    def _gradient_steps(
        self,
        n_steps: int,
        opt: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None,
        sample_fn: Callable[[int], TensorDictBase] | None = None,
    ) -> dict[str, float]:
        device = self.device
        keys = self.loss.tensor_keys
        # Minibatches are drawn in blocks: one buffer gather and one device copy per block
        # instead of per step (~0.1 ms each), bounded so a block stays small in memory.
        block = max(1, min(n_steps, 65_536 // self.batch_size))
        stats: list[torch.Tensor] = []
        done_steps = 0
        while done_steps < n_steps:
            k = min(block, n_steps - done_steps)
            data = (sample_fn or self.buffer.sample)(k * self.batch_size).to(device)
            if reward_fn is not None:
                # One relabelling call per block (the reward is fixed during a round).
                data.set(("next", keys.reward), reward_fn(data).reshape(-1, 1))
            # Only the loss's inputs, as k minibatches: indexing then touches five leaves.
            minibatches = data.select(*self.loss.in_keys).reshape(k, self.batch_size)
            for i in range(k):
                # The module's forward is what trains: a subclass or set_keys governs it.
                out = self.loss(minibatches[i])
                total = out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]
                opt.zero_grad(set_to_none=True)
                backward(total)
                opt.step()
                self.loss.update_target_networks(self.tau)
                stats.append(
                    torch.stack([out[name].detach() for name in _STAT_NAMES]).to(torch.float32)
                )
            done_steps += k
        means = torch.stack(stats).mean(0).tolist()
        metrics = dict(zip(_STAT_NAMES, means, strict=True))
        metrics["gradient_steps"] = float(n_steps)
        return metrics

    # ------------------------------------------------------------ checkpoints
    def _space_signature(self) -> dict[str, Any]:
        config = getattr(self.actor, "config", None)
        if config is None:  # a user's actor: the spaces are the env's
            spec = self.env.full_action_spec_unbatched["action"]
            config = {"obs_dim": observation_width(self.env)}
            if self.discrete:
                config["n_actions"] = int(spec.space.n)
            else:
                config["action_dim"] = int(math.prod(spec.shape))
        return {"discrete": self.discrete, "actor": dict(config)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["tdimitation"]
        state["sac"] = self._space_signature()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("tdimitation", {}).get("sac")
        mine = self._space_signature()
        if saved is not None and (
            saved["discrete"] != mine["discrete"]
            or saved["actor"]["obs_dim"] != mine["actor"]["obs_dim"]
            or saved["actor"].get("action_dim") != mine["actor"].get("action_dim")
            or saved["actor"].get("n_actions") != mine["actor"].get("n_actions")
        ):
            raise SpaceMismatchError(
                f"checkpoint was trained with {_describe(saved)} but this SAC module "
                f"({self.env_id}) has {_describe(mine)}"
            )
        super().on_load_checkpoint(checkpoint)
        self._policy.explore_randomly = self.frames < self.learning_starts


_STAT_NAMES = ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy", "q_value")


def _describe(signature: dict[str, Any]) -> str:
    actor = signature["actor"]
    if signature["discrete"]:
        actions = f"{actor['n_actions']} discrete actions"
    else:
        actions = f"{actor['action_dim']}-dimensional Box actions"
    return f"{actor['obs_dim']}-dimensional observations and {actions}"


def _is_discrete(action_spec, env_id: str) -> bool:
    """True for Discrete, False for bounded Box actions; a clear error otherwise."""
    if isinstance(action_spec, MultiCategorical):
        raise SpaceMismatchError(
            f"SAC supports Box or Discrete actions; {env_id} has MultiDiscrete/MultiBinary "
            f"actions {action_spec}"
        )
    if isinstance(action_spec, CategoricalSpec):
        if action_spec.shape != torch.Size([]):
            raise SpaceMismatchError(
                f"SAC supports a single Discrete action; {env_id} has shape "
                f"{tuple(action_spec.shape)}"
            )
        return True
    if not action_spec.dtype.is_floating_point:
        raise SpaceMismatchError(
            f"SAC supports Box or Discrete actions; {env_id} has {type(action_spec).__name__} "
            "actions"
        )
    if not isinstance(action_spec, Bounded) or not (
        torch.isfinite(action_spec.space.low).all() and torch.isfinite(action_spec.space.high).all()
    ):
        raise SpaceMismatchError(
            f"SAC squashes actions into the Box bounds, but {env_id}'s action space is "
            "unbounded: wrap the env with gymnasium.wrappers.RescaleAction or clip it"
        )
    return False
