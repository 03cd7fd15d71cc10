"""Soft Q imitation learning (SQIL, Reddy et al. 2020) as a LightningModule.

SQIL turns imitation into off-policy RL with a constant reward: expert transitions get
reward 1, the agent's own transitions reward 0, and every minibatch holds as many of one
as of the other. The agent learns to return to states the expert visited and to act as
the expert did there.

The RL algorithm is a component: :class:`~tdimitation.rl.DQN` for Discrete actions or
:class:`~tdimitation.rl.SAC` (soft Q-learning proper, and the continuous-action case) built
from ``agent`` and ``agent_kwargs``. Each round collects with the agent's policy, stores
the round in the agent's replay buffer and runs the agent's own gradient steps, whose
minibatches this module supplies (the ``sample_fn`` of the agents' ``update``): half
drawn from the demonstration buffer, half from the agent's buffer, relabelled 1 and 0.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer

from tdimitation.algorithms.adversarial import build_component
from tdimitation.data.trajectory import check_matches_env, check_trajectories
from tdimitation.envs import as_env_id
from tdimitation.errors import ReplayBufferError, SpaceMismatchError, TrajectoryError
from tdimitation.rl.base import TRANSITION_KEYS, OnlineAlgorithm, without_modules
from tdimitation.rl.dqn import DQN
from tdimitation.rl.sac import SAC

#: Agent algorithms by name.
AGENTS: dict[str, type[OnlineAlgorithm]] = {"dqn": DQN, "sac": SAC}

#: agent_kwargs that would configure a replay buffer (SQIL's own buffers replace it). The
#: last two are the names ``imitation`` users know.
_BUFFER_OPTIONS = ("replay_buffer", "buffer", "replay_buffer_class", "replay_buffer_kwargs")

_REWARD = ("next", "reward")


class SQIL(OnlineAlgorithm):
    """Soft Q imitation learning over a DQN or SAC agent (see the module docs).

    Checkpoints hold both replay buffers (demonstrations and the agent's transitions,
    sized to their contents), the agent's networks and optimizer, the frame and update
    counters and every generator of the run; a resumed run needs no demonstrations
    argument. The exported policy is the agent's (greedy for DQN; SAC's actor, evaluated
    deterministically by ``tdimitation fit``).

    Args:
        env_id: environment id for :func:`~tdimitation.envs.make_env`.
        demonstrations: expert transitions: a trajectory set or the path of a trajectory
            dataset. Leave None when a :class:`~tdimitation.algorithms.DemonstrationData`
            datamodule provides them.
        agent: ``"dqn"`` (Discrete actions) or ``"sac"`` (Box or Discrete actions).
        agent_kwargs: constructor arguments of the agent (its env settings, budget and seed
            are this module's; it may not be given a replay buffer, only ``buffer_size``).
        num_envs: sub-envs stepped together.
        total_frames: budget of environment frames.
        seed: seed of the envs, the networks and the run's generators.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
    """

    def __init__(
        self,
        env_id: str,
        demonstrations: TensorDictBase | str | None = None,
        agent: str = "dqn",
        agent_kwargs: dict[str, Any] | None = None,
        num_envs: int = 8,
        total_frames: int = 100_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r}; choose one of {sorted(AGENTS)}")
        agent_kwargs = dict(agent_kwargs or {})
        _check_agent_kwargs(agent_kwargs)
        try:
            rl = build_component(
                AGENTS[agent],
                "agent_kwargs",
                agent_kwargs,
                env_id=env_id,
                num_envs=num_envs,
                total_frames=total_frames,
                seed=seed,
                fixed_horizon=fixed_horizon,
                env_kwargs=env_kwargs,
            )
        except SpaceMismatchError as error:
            if agent != "dqn":
                raise
            # DQN's max over actions needs a finite action set; SAC is SQIL's
            # continuous-action agent (soft Q-learning with a learned actor).
            raise SpaceMismatchError(
                f"SQIL with agent='dqn' needs a Discrete action space, and {env_id} has "
                "none: use agent='sac' for continuous actions"
            ) from error
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=rl.frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        self.save_hyperparameters(ignore=["demonstrations"])
        # Networks given to the agent are not hyperparameters.
        self.hparams["agent_kwargs"] = without_modules(self.hparams.get("agent_kwargs"))
        self.batch_size = int(rl.hparams["batch_size"])
        if self.batch_size % 2:
            raise ValueError(
                f"SQIL splits every minibatch half demonstrations, half agent transitions: "
                f"batch_size must be even, got {self.batch_size}"
            )
        rl.env.close()  # the agent collects through this module's env
        self.agent = rl
        self._demo_source = demonstrations
        # Filled by set_demonstrations (sized then) or restored from a checkpoint.
        self.demo_buffer: TensorDictReplayBuffer | None = None
        self._saved_demo_buffer: dict | None = None

    # ------------------------------------------------------------------ policy
    def collection_policy(self):
        return self.agent.collection_policy()

    def export_policy(self):
        return self.agent.export_policy()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.agent.configure_optimizers()

    # ---------------------------------------------------------- demonstrations
    def set_demonstrations(self, demonstrations: TensorDictBase | str) -> None:
        """Check the expert transitions and fill the demonstration buffer (reward 1)."""
        if isinstance(demonstrations, str):
            from tdimitation.data.storage import load_trajectories

            demonstrations = load_trajectories(demonstrations)
        check_trajectories(demonstrations, "demonstrations")
        check_matches_env(demonstrations, self.env, "demonstrations")
        rows = demonstrations.reshape(-1).select(*TRANSITION_KEYS).clone()
        rows.set(_REWARD, torch.ones_like(rows.get(_REWARD), dtype=torch.float32))
        self.demo_buffer = self._make_demo_buffer(rows.numel())
        self.demo_buffer.extend(rows.cpu())

    def _make_demo_buffer(self, size: int) -> TensorDictReplayBuffer:
        # Sized to the demonstrations (make_transition_buffer caps at the frame budget).
        return TensorDictReplayBuffer(storage=LazyTensorStorage(size), generator=self.rng)

    def make_train_loader(self, demonstrations: TensorDictBase) -> DataLoader:
        """Hook of :class:`~tdimitation.algorithms.DemonstrationData`: take its data."""
        self.set_demonstrations(demonstrations)
        return self.train_dataloader()

    def train_dataloader(self) -> DataLoader:
        if self.demo_buffer is None and self._demo_source is not None:
            self.set_demonstrations(self._demo_source)
        if self.demo_buffer is None:
            raise TrajectoryError(
                "SQIL has no demonstrations: pass demonstrations= (a trajectory set or "
                "dataset path) or a DemonstrationData datamodule"
            )
        return super().train_dataloader()

    # --------------------------------------------------------------- training
    def sample_mixed(self, n: int) -> TensorDictBase:
        """``n`` transitions (a multiple of ``batch_size``) for the agent's gradient steps.

        Every consecutive ``batch_size`` rows are one minibatch: its first half
        demonstrations (reward 1), its second half agent transitions (reward 0).
        """
        steps = n // self.batch_size
        half = self.batch_size // 2
        demos = self.demo_buffer.sample(steps * half)
        own = self.agent.buffer.sample(steps * half)
        # The stored agent rows keep the env's reward (so checkpoints and users see the
        # true data); SQIL's reward replaces it here.
        own.set(_REWARD, torch.zeros_like(own.get(_REWARD)))
        mixed = torch.cat([demos.reshape(steps, half), own.reshape(steps, half)], dim=1)
        return mixed.reshape(-1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The agent's frame-driven schedules (DQN's epsilon, SAC's random warm-up) for the
        # round about to be collected.
        self.agent.sync_frames(self.frames)

    def training_round(self, batch: TensorDictBase) -> None:
        """One round: the agent stores it and steps on mixed minibatches; then log."""
        metrics: dict[str, float] = {}
        if isinstance(self.agent, DQN):
            metrics["epsilon"] = self.agent.exploration_rate(self.frames)
        self.agent.sync_frames(self.frames)
        metrics |= self.agent.update(
            batch, self.optimizers(), self.manual_backward, sample_fn=self.sample_mixed
        )
        metrics["agent_buffer"] = float(len(self.agent.buffer))
        self.log_round(batch, metrics)
        # Between rounds (and in checkpoints) the agent holds the next round's schedule.
        self.agent.sync_frames(self.frames)

    # ------------------------------------------------------------ checkpoints
    def replay_buffers(self) -> dict[str, ReplayBuffer]:
        buffers = {"agent": self.agent.buffer}
        if self.demo_buffer is not None:
            buffers["demonstrations"] = self.demo_buffer
        return buffers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tdimitation"]["sqil"] = {
            # The agent's own hooks do not run (it is not the Trainer's module).
            "agent_updates": int(getattr(self.agent, "num_updates", 0)),
            "demonstrations": len(self.demo_buffer) if self.demo_buffer is not None else 0,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("tdimitation", {})
        saved_demos = state.get("buffers", {}).get("demonstrations")
        if saved_demos is not None:
            # The base class restores every buffer replay_buffers() names: size it first.
            self.demo_buffer = self._make_demo_buffer(state["sqil"]["demonstrations"])
        super().on_load_checkpoint(checkpoint)
        if hasattr(self.agent, "num_updates"):
            self.agent.num_updates = int(state["sqil"]["agent_updates"])
        self.agent.sync_frames(self.frames)


def _check_agent_kwargs(agent_kwargs: dict[str, Any]) -> None:
    """Refuse replay-buffer arguments: SQIL owns the agent's buffers (shared env settings
    are refused by :func:`~tdimitation.algorithms.adversarial.build_component`).
    """
    buffer_keys = [k for k in agent_kwargs if k in _BUFFER_OPTIONS]
    buffer_keys += [k for k, v in agent_kwargs.items() if isinstance(v, ReplayBuffer)]
    if buffer_keys:
        raise ReplayBufferError(
            f"SQIL owns its replay buffers (demonstrations with reward 1, agent transitions "
            f"with reward 0): remove {sorted(set(buffer_keys))} from agent_kwargs and set "
            "the agent buffer's capacity with buffer_size"
        )
