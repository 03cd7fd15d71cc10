"""DAgger (Ross et al. 2011) as a LightningModule, on top of :class:`~tdimitation.algorithms.BC`."""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer

from tdimitation.algorithms.bc import BC, _IndexBlocks
from tdimitation.data.rollout import rollout
from tdimitation.data.trajectory import rollout_stats
from tdimitation.policies.actors import is_deterministic
from tdimitation.policies.registry import policy_from_string
from tdimitation.rl.base import (
    _numpy_rng_state,
    _seed_everything,
    _set_numpy_rng_state,
    buffer_state,
    load_buffer_state,
)


def _transition_bytes(env: Any) -> int:
    """Bytes of one aggregated row (observation and action) from the env's specs."""
    batch_dims = len(env.batch_size)
    total = 0
    for spec in (env.observation_spec["observation"], env.action_spec):
        leaves = spec.values(True, True) if hasattr(spec, "values") else [spec]
        for leaf in leaves:
            total += math.prod(leaf.shape[batch_dims:]) * leaf.dtype.itemsize
    return total


def linear_beta(round_index: int, rampdown_rounds: int) -> float:
    """β over ``rampdown_rounds`` rounds: 1, (R-1)/R, ..., 1/R, then 0."""
    if rampdown_rounds <= 0:
        raise ValueError(f"rampdown_rounds must be positive, got {rampdown_rounds}")
    return max(0.0, 1.0 - round_index / rampdown_rounds)


def exponential_beta(round_index: int, decay: float) -> float:
    """β = decay ** round, for decay in (0, 1]."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"the exponential β decay must be in (0, 1], got {decay}")
    return decay**round_index


class MixturePolicy(TensorDictModuleBase):
    """Act with the expert with probability β, independently per sub-env and step.

    Writes ``action`` (the action executed) and ``expert_action`` (always the expert's
    label). When the exploration type is deterministic, β is treated as 0 (the learner
    alone acts greedily).

    Args:
        expert: the expert policy.
        learner: the policy being trained.
        beta: initial probability of executing the expert's action.
    """

    def __init__(
        self, expert: TensorDictModuleBase, learner: TensorDictModuleBase, beta: float = 1.0
    ) -> None:
        super().__init__()
        self.expert = expert
        self.learner = learner
        self.beta = float(beta)
        self.in_keys = ["observation"]
        self.out_keys = ["action", "expert_action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        expert_action = self.expert(
            TensorDict({"observation": obs}, batch_size=tensordict.batch_size)
        ).get("action")
        learner_action = self.learner(tensordict.clone(False)).get("action")
        beta = 0.0 if is_deterministic() else self.beta
        use_expert = torch.rand(tensordict.batch_size, device=obs.device) < beta
        mask = use_expert.reshape(use_expert.shape + (1,) * (learner_action.ndim - use_expert.ndim))
        tensordict.set(
            "action", torch.where(mask, expert_action.to(learner_action.dtype), learner_action)
        )
        tensordict.set("expert_action", expert_action)
        return tensordict


class _RoundIndices(IterableDataset):
    """Round numbers still to run. Collection happens in ``training_step``: Lightning
    fetches one batch ahead, which would collect a round with the previous learner.
    """

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def __iter__(self) -> Iterator[int]:
        yield from range(self.first, self.last)


class DAgger(BC):
    """DAgger: rounds of collection with a β-mixture of expert and learner, then BC.

    Each round (one ``training_step``) sets β from the schedule, collects whole episodes
    with :class:`MixturePolicy` until at least ``min_episodes`` episodes and
    ``min_transitions`` transitions (never fewer than one batch) are complete, adds the
    observations labelled with the *expert's* actions to an aggregated buffer, and trains
    BC on everything collected so far for ``bc_epochs`` epochs. The aggregated buffer is
    bounded (``buffer_capacity``; oldest rows are dropped first) and saved in checkpoints
    sized to its contents, so a run resumes at the round it stopped. The first round
    seeds the global RNGs from ``seed`` (β-mixing and the learner's sampled actions draw
    from them); checkpoints carry their states.

    When full it would hold more than ``memmap_threshold`` bytes (``buffer_capacity`` times
    the bytes of one observation and action, from the env's specs), the buffer is a
    torchrl ``LazyMemmapStorage``: files in a fresh sub-directory of ``memmap_dir``
    (default ``<data dir>/dagger_buffers``), written as rows arrive and removed when the
    module is garbage-collected or the process exits. Training then gathers each block
    of rows from the files, so the aggregated data need not fit in RAM (``imitation``
    keeps it all in memory). The directory is in :attr:`memmap_path`.

    Args:
        env_id: environment.
        expert: policy spec of the expert (``"scripted"``, ``"sb3-ppo:PATH"``, ...),
            ``"interactive"`` for a human at the keyboard (one env, frames shown in a
            window; see :class:`~tdimitation.policies.interactive.KeyboardExpert`), or
            pass a policy object with ``expert_policy=``.
        n_rounds: number of rounds.
        beta_schedule: ``"linear"`` (over ``rampdown_rounds``) or ``"exponential"``
            (``decay ** round``).
        rampdown_rounds: rounds of the linear schedule.
        decay: factor of the exponential schedule, in (0, 1].
        num_envs: sub-envs collecting together.
        min_episodes: complete episodes per round.
        min_transitions: transitions per round (at least ``batch_size``).
        bc_epochs: BC epochs over the aggregated data per round.
        buffer_capacity: most transitions kept.
        memmap_dir: parent directory of the memory-mapped buffer files.
        memmap_threshold: memory-map the buffer when its full size exceeds this many
            bytes (default 1 GiB; 0: always; None: never).
        expert_policy: a policy object (or plain callable) used instead of ``expert``.
        **bc_kwargs: arguments of :class:`BC` (batch size, learning rate, network...).
    """

    def __init__(
        self,
        env_id: str,
        expert: str | None = "scripted",
        n_rounds: int = 10,
        beta_schedule: str = "linear",
        rampdown_rounds: int = 15,
        decay: float = 0.5,
        num_envs: int = 4,
        min_episodes: int = 1,
        min_transitions: int = 0,
        bc_epochs: int = 4,
        buffer_capacity: int = 1_000_000,
        memmap_dir: str | None = None,
        memmap_threshold: int | None = 2**30,
        expert_policy: Any = None,
        **bc_kwargs: Any,
    ) -> None:
        if beta_schedule == "linear":
            linear_beta(0, rampdown_rounds)  # validates
        elif beta_schedule == "exponential":
            exponential_beta(0, decay)
        else:
            raise ValueError(
                f"beta_schedule must be 'linear' or 'exponential', got {beta_schedule!r}"
            )
        if n_rounds <= 0:
            raise ValueError(f"n_rounds must be positive, got {n_rounds}")
        if buffer_capacity <= 0:
            raise ValueError(f"buffer_capacity must be positive, got {buffer_capacity}")
        if memmap_threshold is not None and memmap_threshold < 0:
            raise ValueError(
                f"memmap_threshold must be a number of bytes >= 0 (or None), got {memmap_threshold}"
            )
        super().__init__(env_id, n_epochs=bc_epochs, **bc_kwargs)
        self.save_hyperparameters(ignore=["expert_policy"])
        if expert == "interactive" and expert_policy is None:
            # A human at the keyboard acts in one env, whose frames they see.
            from tdimitation.envs import make_env
            from tdimitation.policies.interactive import KeyboardExpert

            self.collect_env = make_env(
                env_id,
                num_envs=1,
                seed=self.hparams.seed,
                env_kwargs=self.hparams.env_kwargs,
                fixed_horizon=self.hparams.fixed_horizon,
                render_mode="rgb_array",
            )
            expert_policy = KeyboardExpert(self.collect_env)
        else:
            self.collect_env = self.make_env(num_envs=num_envs)
        if expert_policy is None:
            if expert is None:
                raise ValueError("give an expert: a policy spec (expert=) or a policy object")
            expert_policy = policy_from_string(expert, env=self.collect_env)
        from tdimitation.policies.base import as_policy

        self.mixture = MixturePolicy(as_policy(expert_policy, self.collect_env), self.policy)
        #: bytes the aggregated buffer holds when full
        self.buffer_bytes = buffer_capacity * _transition_bytes(self.collect_env)
        #: directory of the memory-mapped buffer files (None: the buffer is in RAM)
        self.memmap_path: Path | None = None
        if memmap_threshold is not None and self.buffer_bytes > memmap_threshold:
            from tdimitation.tracking import data_dir

            parent = Path(memmap_dir) if memmap_dir else data_dir() / "dagger_buffers"
            parent.mkdir(parents=True, exist_ok=True)
            # A directory per buffer: a resumed run in the same process must not write
            # into the files another buffer still maps.
            self.memmap_path = Path(tempfile.mkdtemp(prefix="buffer-", dir=parent))
            weakref.finalize(self, shutil.rmtree, self.memmap_path, ignore_errors=True)
            storage = LazyMemmapStorage(buffer_capacity, scratch_dir=self.memmap_path)
        else:
            storage = LazyTensorStorage(buffer_capacity)
        self.buffer = TensorDictReplayBuffer(storage=storage)
        self.round = 0
        self.transitions_collected = 0

    def beta(self, round_index: int | None = None) -> float:
        """β of a round (default: the current one)."""
        r = self.round if round_index is None else round_index
        if self.hparams.beta_schedule == "linear":
            return linear_beta(r, self.hparams.rampdown_rounds)
        return exponential_beta(r, self.hparams.decay)

    # ------------------------------------------------------------------- data
    def train_dataloader(self) -> DataLoader:
        if self.round == 0:
            # β-mixing and the learner's sampled actions draw from the global RNGs.
            _seed_everything(self.hparams.seed)
        elif hasattr(self.collect_env, "set_seed"):
            # A resumed run collects fresh episodes, not the first round's initial states
            # (the RNGs themselves come back from the checkpoint).
            self.collect_env.set_seed(self.hparams.seed + self.transitions_collected)
        return DataLoader(
            _RoundIndices(self.round, self.hparams.n_rounds), batch_size=None, num_workers=0
        )

    def collect_round(self) -> TensorDictBase:
        """Whole episodes of the β-mixture for the current round."""
        self.mixture.beta = self.beta()
        hp = self.hparams
        min_transitions = max(hp.min_transitions, hp.batch_size * hp.grad_accumulation)
        with torch.no_grad():
            return rollout(
                self.mixture,
                self.collect_env,
                min_episodes=hp.min_episodes,
                min_timesteps=min_transitions,
            )

    # --------------------------------------------------------------- training
    def training_step(self, round_index: int, batch_idx: int) -> None:
        hp = self.hparams
        episodes = self.collect_round()
        labelled = TensorDict(
            {"observation": episodes["observation"], "action": episodes["expert_action"]},
            batch_size=episodes.batch_size,
        )
        self.buffer.extend(labelled)
        self.transitions_collected += labelled.shape[0]
        data = self.buffer[:]
        observations = data["observation"].to(self.device)
        actions = data["action"].to(self.device)
        rows_per_step = hp.batch_size * hp.grad_accumulation
        per_epoch = max(data.shape[0] // rows_per_step, 1)
        blocks = _IndexBlocks(
            data.shape[0],
            hp.batch_size,
            hp.grad_accumulation,
            hp.steps_per_call,
            hp.bc_epochs * per_epoch,
            seed=hp.seed * 1000 + self.round,
            skip=0,
        )
        blocks = list(blocks)
        out: dict[str, torch.Tensor] = {}
        for j, block in enumerate(blocks):
            # Metrics of the round's last step only (logged once per round).
            out = self.update_on_block(observations, actions, block, j == len(blocks) - 1)
        stats = rollout_stats(episodes)
        self.log_dict(
            {
                "dagger/round": float(self.round),
                "dagger/beta": self.mixture.beta,
                "dagger/transitions": float(self.transitions_collected),
                "dagger/round_return": stats.get("return_mean", float("nan")),
            }
            | {f"bc/{k}": v.detach() for k, v in out.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        self.round += 1

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tdimitation"] |= {
            "round": self.round,
            "transitions_collected": self.transitions_collected,
            "buffers": {"aggregated": buffer_state(self.buffer)},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": list(random.getstate()[1]),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["tdimitation"]
        self.round = int(state["round"])
        self.transitions_collected = int(state["transitions_collected"])
        load_buffer_state(self.buffer, state["buffers"]["aggregated"])
        rng = state.get("rng")  # absent from checkpoints of earlier versions
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            _set_numpy_rng_state(rng["numpy"])
            random.setstate((3, tuple(rng["python"]), None))
