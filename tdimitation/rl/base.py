"""Shared machinery of online algorithms as LightningModules.

An online algorithm collects with a :class:`~tdimitation.data.VecCollector`; each
``training_step`` is one round: collect a ``[num_envs, T]`` batch with the current policy,
then run the algorithm's updates on it (``training_round``) with manual optimisation.
Budgets are environment frames (``total_frames``); ``trainer.global_step`` counts optimizer
steps.

Why the collector is not Lightning's dataset: Lightning fetches one batch ahead from an
iterable dataset (to know which batch is the last), so round k+1 would be collected before
the update on round k, with a stale policy: PPO would silently become off-policy and
DAgger would collect with the previous learner. The dataloader therefore yields round
numbers, and ``training_step`` collects.

:class:`OnlineAlgorithm` provides: the environment built from primitive arguments (so
``hparams`` and checkpoints stay ``weights_only``-loadable and recipes are plain YAML),
the collector-backed dataloader sized to the frames still to collect (a resumed run
collects only the rest), episode metrics from finished episodes, frames per second, and
checkpointing of counters, RNG states and replay buffers (sized to their contents).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer

from tdimitation.budget import TrainingBudget, check_budget_left
from tdimitation.callbacks import FitCallbacks
from tdimitation.data.collector import VecCollector
from tdimitation.distributed import rank_and_world, rank_seed
from tdimitation.envs import GymVecEnv, make_env
from tdimitation.errors import BudgetError
from tdimitation.policies.registry import checkpoint_policy_entry
from tdimitation.rng import attach_rng, make_rng, stochastic_modules


class RoundIndices(IterableDataset):
    """The dataloader of online algorithms: round numbers ``first..last-1``, not data.

    Collection happens in ``training_step``: Lightning fetches one batch ahead, which
    would collect round k+1 before the update on round k (see OnlineAlgorithm).
    """

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = int(first), int(last)

    def __iter__(self) -> Iterator[int]:
        yield from range(self.first, self.last)


#: The keys off-policy algorithms keep per transition. A fixed set: torchrl's buffers do not
#: validate schemas (an extra key adds a column, a missing one leaves garbage rows).
TRANSITION_KEYS: tuple = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    # Not used by the RL losses; learned rewards (AIRL's shaping) read it when relabelling.
    ("next", "done"),
)


def without_modules(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``kwargs`` without network objects (modules, or lists of them), for ``hparams``.

    Modules passed to a driven algorithm (``generator_kwargs={"actor": ...}``) cannot be
    hyperparameters: checkpoints load with ``weights_only=True``, and their weights are in
    the state dict anyway. Pass them again to ``load_from_checkpoint``.
    """
    if kwargs is None:
        return None

    def is_network(value: Any) -> bool:
        if isinstance(value, torch.nn.Module):
            return True
        return isinstance(value, list | tuple) and any(
            isinstance(v, torch.nn.Module) for v in value
        )

    return {k: v for k, v in kwargs.items() if not is_network(v)}


def identity_collate(batch):
    return batch


def buffer_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """Replay-buffer contents and write position, sized to the contents (not capacity).

    torchrl's own ``state_dict`` copies the whole preallocated storage; this keeps a
    checkpoint proportional to the data actually held.
    """
    n = len(buffer)
    return {
        # clone(): buffer[:n] is a view, and torch.save writes a view's whole storage.
        "content": buffer[:n].clone().to_dict() if n else None,
        "writer": buffer._writer.state_dict(),
    }


def load_buffer_state(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    """Restore what :func:`buffer_state` saved into an empty buffer of the same capacity."""
    buffer.empty()
    if state["content"] is not None:
        # batch_dims=1: from_dict would otherwise give batch size [] (tensordict 0.14).
        content = TensorDict.from_dict(state["content"], batch_dims=1)
        buffer.extend(content)
    buffer._writer.load_state_dict(state["writer"])


def episode_metrics(batch: TensorDictBase) -> dict[str, float]:
    """Mean return and length of the episodes that finished in ``batch`` (if any)."""
    done = batch.get(("next", "done"))[..., 0]
    if not bool(done.any()):
        return {}
    metrics = {"episodes": float(done.sum())}
    keys = batch.keys(include_nested=True)
    if ("next", "episode_reward") in keys:
        metrics["episode/return"] = float(
            batch.get(("next", "episode_reward"))[..., 0][done].mean()
        )
    if ("next", "step_count") in keys:
        metrics["episode/length"] = float(
            batch.get(("next", "step_count"))[..., 0][done].float().mean()
        )
    return metrics


class OnlineAlgorithm(FitCallbacks, L.LightningModule):
    """Base class of online (collect-then-update) algorithms.

    Subclasses build their networks in ``__init__`` (after calling this one), implement
    :meth:`collection_policy` and :meth:`training_round` (the updates on one
    ``[num_envs, T]`` batch, on the module's device), and call :meth:`log_round` once per
    round.

    Args:
        env_id: environment id for :func:`~tdimitation.envs.make_env`.
        num_envs: sub-envs stepped together.
        frames_per_batch: frames collected per round (a multiple of ``num_envs``).
        total_frames: the run's budget of environment frames.
        seed: seed of the env and of torch/numpy/python RNGs at the start of training.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
    """

    #: Extra metrics of :meth:`log_round` shown in the progress bar (and logged unprefixed).
    progress_bar_keys: tuple[str, ...] = ()
    #: The progress bar's figures (logged metric key -> label; see tdimitation.progress).
    progress_figures = {"episode/return": "return"}

    def __init__(
        self,
        env_id: str,
        num_envs: int = 8,
        frames_per_batch: int = 2048,
        total_frames: int = 100_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if frames_per_batch % num_envs:
            raise ValueError(
                f"frames_per_batch ({frames_per_batch}) must be a multiple of num_envs ({num_envs})"
            )
        if total_frames < frames_per_batch:
            raise BudgetError(
                f"total_frames ({total_frames}) is smaller than one collection batch "
                f"({frames_per_batch} frames): raise the budget or lower frames_per_batch"
            )
        self.env_id = env_id
        self.num_envs = int(num_envs)
        self.frames_per_batch = int(frames_per_batch)
        self.total_frames = int(total_frames)
        self.seed = seed
        self.fixed_horizon = fixed_horizon
        self.env_kwargs = dict(env_kwargs or {})
        # Every random draw of the run (sampling actions, minibatches, replay) comes from
        # this generator, reseeded when training starts and kept in checkpoints.
        self.rng: torch.Generator = make_rng(seed)
        self.env: GymVecEnv = self.make_env()
        self.frames = 0  # frames collected so far (restored from checkpoints)
        #: Optimizer steps taken by :meth:`update` (fused rounds included; restored from
        #: checkpoints). ``trainer.global_step`` counts only steps taken through Lightning.
        self.optimizer_steps = 0
        self.collector: VecCollector | None = None
        self._round_start: float | None = None
        self._collect_seconds = 0.0
        self.last_batch: TensorDictBase | None = None
        self._collector_state: dict | None = None

    # --------------------------------------------------------------- building
    def make_env(self, num_envs: int | None = None, seed: int | None = None) -> GymVecEnv:
        """A new env like the training env (``num_envs``/``seed`` may differ, e.g. for eval)."""
        return make_env(
            self.env_id,
            num_envs=num_envs or self.num_envs,
            seed=self.seed if seed is None else seed,
            fixed_horizon=self.fixed_horizon,
            env_kwargs=self.env_kwargs,
        )

    def collection_policy(self) -> TensorDictModuleBase:
        """The policy the collector acts with (in place: updates are seen at once)."""
        raise NotImplementedError

    def export_policy(self) -> TensorDictModuleBase:
        """The trained policy saved with checkpoints (default: the collection policy)."""
        return self.collection_policy()

    def online_modules(self) -> list[OnlineAlgorithm]:
        """This algorithm and the online algorithms it drives (e.g. a generator), in order."""
        return [m for m in self.modules() if isinstance(m, OnlineAlgorithm)]

    def seed_rngs(self, seed: int) -> None:
        """Seed the generators of this algorithm and of the ones it drives (distinct streams)."""
        for i, module in enumerate(self.online_modules()):
            module.rng.manual_seed(int(seed) + 1_000_003 * i)

    def sync_frames(self, frames: int) -> None:
        """Set the frame counter when another algorithm drives this one as a component.

        Schedules that depend on frames (learning-rate decay, SAC's warm-up) read it.
        """
        self.frames = int(frames)

    def training_budget(self, checkpoint: dict[str, Any] | None = None) -> TrainingBudget:
        """The run's budget: ``total_frames``, collected a round at a time.

        With ``checkpoint``, what is done is read from it (a resume's starting point).
        """
        done = self.frames if checkpoint is None else int(checkpoint["tdimitation"]["frames"])
        return TrainingBudget(
            "total_frames",
            self.total_frames,
            "frames",
            done,
            self.total_frames,
            self.frames_per_batch * rank_and_world(self)[1],
        )

    # ------------------------------------------------------------------- data
    def train_dataloader(self) -> DataLoader:
        check_budget_left(self)
        rank, world = rank_and_world(self)
        # Under ddp every process collects frames_per_batch frames a round; total_frames
        # counts the frames of all of them.
        rounds = (self.total_frames - self.frames) // (self.frames_per_batch * world)
        if self.seed is not None and self.frames == 0:
            seed = rank_seed(self.seed, rank)
            _seed_everything(seed)
            self.seed_rngs(seed)
            if rank:
                self.env.set_seed(seed)
        elif self.seed is not None:
            # A resumed run continues with fresh episodes, not the first run's initial states.
            self.env.set_seed(rank_seed(self.seed + self.frames, rank))
            if rank:
                # The checkpoint holds the first process's generators; the others draw
                # streams of their own.
                _seed_everything(rank_seed(self.seed + self.frames, rank))
                self.seed_rngs(rank_seed(self.seed + self.frames, rank))
        attach_rng(self, self.rng)
        self.collector = VecCollector(
            self.env,
            self.collection_policy(),
            frames_per_batch=self.frames_per_batch,
            total_frames=rounds * self.frames_per_batch,
            close_env=False,
        )
        if self._collector_state is not None:
            # Resume episode numbering; frames are counted by the module itself.
            self.collector._next_episode_id = self._collector_state["next_episode_id"]
        return DataLoader(
            RoundIndices(0, rounds), batch_size=None, num_workers=0, collate_fn=identity_collate
        )

    # --------------------------------------------------------------- training
    def training_step(self, round_index: int, batch_idx: int) -> None:
        """One round: collect with the current policy, then :meth:`training_round`."""
        start = time.perf_counter()
        batch = self.collector.rollout().to(self.device)
        self._collect_seconds = time.perf_counter() - start
        # Callbacks get the round number as their `batch`; the data is here.
        self.last_batch = batch
        self._round_start = time.perf_counter()
        self.training_round(batch)

    def training_round(self, batch: TensorDictBase) -> None:
        """The algorithm's updates on one collected ``[num_envs, T]`` batch, then logging.

        By default: :meth:`update` with this module's optimizer and ``manual_backward``.
        """
        metrics = self.update(batch, self.optimizers(), self.manual_backward)
        self.log_round(batch, metrics)

    def update(
        self,
        batch: TensorDictBase,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        reward_fn: Callable[[TensorDictBase], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """The updates on one collected round; returns the round's metrics (no logging).

        This is the generator interface: adversarial and preference algorithms own the
        Trainer and drive an RL algorithm through it. ``backward`` defaults to
        ``loss.backward()`` (pass the driving LightningModule's ``manual_backward`` so
        precision plugins and strategies apply); ``reward_fn``, when given, maps a batch of
        transitions to the rewards ``[*B, 1]`` to train on instead of the env's. Call
        :meth:`sync_frames` first so frame-driven schedules see the driver's frame count.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be used as a generator")

    # ---------------------------------------------------------------- logging
    def log_round(self, batch: TensorDictBase, metrics: dict[str, float] | None = None) -> None:
        """Count the round's frames; log frames, fps, time split, episode stats, ``metrics``.

        Under ``ddp`` every process collected a batch like ``batch``: frames and frames per
        second count them all; episode statistics are this process's.
        """
        round_frames = batch.numel() * rank_and_world(self)[1]
        self.frames += round_frames
        update_seconds = time.perf_counter() - (self._round_start or time.perf_counter())
        round_seconds = self._collect_seconds + update_seconds
        logged = {
            "frames": float(self.frames),
            "fps": round_frames / max(round_seconds, 1e-9),
            "time/collect_s": self._collect_seconds,
            "time/update_s": update_seconds,
        }
        logged |= episode_metrics(batch)
        logged |= metrics or {}
        bar_keys = {"frames", "episode/return", "episode/length", "fps", *self.progress_bar_keys}
        self.log_dict(
            {k: v for k, v in logged.items() if k in bar_keys},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        self.log_dict(
            {f"train/{k}": v for k, v in logged.items() if k not in bar_keys},
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )

    # --------------------------------------------------------- replay buffers
    def make_transition_buffer(self, capacity: int) -> TensorDictReplayBuffer:
        """A replay buffer of :data:`TRANSITION_KEYS` rows, never larger than the budget."""
        return TensorDictReplayBuffer(
            storage=LazyTensorStorage(max(1, min(int(capacity), self.total_frames))),
            generator=self.rng,
        )

    @staticmethod
    def store_transitions(buffer: TensorDictReplayBuffer, batch: TensorDictBase) -> None:
        """Add a round's transitions (flattened, :data:`TRANSITION_KEYS` only).

        Rows stay on the buffer's device; minibatches move to the module's device.
        """
        buffer.extend(batch.reshape(-1).select(*TRANSITION_KEYS).to(buffer.storage.device))

    # ------------------------------------------------------------ checkpoints
    def replay_buffers(self) -> dict[str, ReplayBuffer]:
        """Replay buffers to save in checkpoints (override in off-policy algorithms)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        policy, not_saved = checkpoint_policy_entry(self.export_policy())
        checkpoint["tdimitation"] = {
            "frames": self.frames,
            "optimizer_steps": self.optimizer_steps,
            "collector": self.collector.state_dict() if self.collector is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": list(random.getstate()[1]),
                "generators": [m.rng.get_state() for m in self.online_modules()],
                # Draws already made but not used yet (the actors' noise blocks): a resumed
                # run uses them as the uninterrupted run would.
                "sampling": [m.sampling_state() for m in stochastic_modules(self)],
            },
            "buffers": {name: buffer_state(rb) for name, rb in self.replay_buffers().items()},
            # The exported policy, so load_policy("tdimitation", "last.ckpt") works (None,
            # with the reason, for modules the policy file format cannot hold).
            "policy": policy,
        }
        if not_saved is not None:
            checkpoint["tdimitation"]["policy_not_saved"] = not_saved

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("tdimitation")
        if state is None:
            raise ValueError("this checkpoint was not written by a tdimitation algorithm")
        self.frames = int(state["frames"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._collector_state = state["collector"]
        torch.set_rng_state(state["rng"]["torch"])
        _set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        for module, rng_state in zip(
            self.online_modules(), state["rng"].get("generators", []), strict=False
        ):
            module.rng.set_state(rng_state)
        attach_rng(self, self.rng)
        for module, sampling in zip(
            stochastic_modules(self), state["rng"].get("sampling", []), strict=False
        ):
            module.set_sampling_state(sampling)
        buffers = self.replay_buffers()
        for name, saved in state["buffers"].items():
            load_buffer_state(buffers[name], saved)

    def on_train_end(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _numpy_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached"]))
