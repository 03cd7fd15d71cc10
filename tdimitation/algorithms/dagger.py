"""DAgger (Ross et al. 2011) as a LightningModule, on top of :class:`~tdimitation.algorithms.BC`."""

from __future__ import annotations

import contextlib
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
from torch.utils.data import DataLoader
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers.writers import RoundRobinWriter

from tdimitation.algorithms.bc import BC, _IndexBlocks
from tdimitation.algorithms.beta_schedules import (
    BetaSchedule,
    checked_beta,
    exponential_beta,
    import_path,
    import_schedule,
    linear_beta,
)
from tdimitation.budget import TrainingBudget
from tdimitation.data.reference import dataset_reference_returns
from tdimitation.data.rollout import rollout
from tdimitation.data.trajectory import ACTION, EPISODE, OBS, episode_runs, rollout_stats
from tdimitation.errors import BudgetError
from tdimitation.policies.actors import is_deterministic
from tdimitation.policies.registry import policy_from_string
from tdimitation.rl.base import (
    RoundIndices,
    _numpy_rng_state,
    _seed_everything,
    _set_numpy_rng_state,
    buffer_state,
    load_buffer_state,
)
from tdimitation.rng import stochastic_modules
from tdimitation.utils import attached_trainer

#: The ``("next", ...)`` entries a DAgger trajectory keeps from the collector's output.
_NEXT_KEYS = ("observation", "reward", "terminated", "truncated", "done")


def _row_bytes(env: Any) -> int:
    """Bytes of one aggregated row, from the env's specs.

    A row holds the observation twice (before and after the step), the action three
    times (``action``, ``expert_action``, ``executed_action``), a float32 reward, three
    bool flags and an int64 episode id.
    """
    batch_dims = len(env.batch_size)

    def nbytes(spec: Any) -> int:
        leaves = spec.values(True, True) if hasattr(spec, "values") else [spec]
        return sum(math.prod(leaf.shape[batch_dims:]) * leaf.dtype.itemsize for leaf in leaves)

    obs, act = nbytes(env.observation_spec["observation"]), nbytes(env.action_spec)
    return 2 * obs + 3 * act + 4 + 3 + 8


class _GlobalRNGStates:
    """States of torch's (CPU), numpy's and Python's global RNGs reserved for one owner.

    Policies sample from the global RNGs (the learner's actions, a noisy expert).
    :meth:`active` swaps :attr:`state` in for a block and the caller's states back
    afterwards, so what the rest of the process draws between rounds (evaluation,
    callbacks, other modules) changes neither DAgger's collection nor, after it, anyone
    else's stream. :attr:`state` holds tensors, ints and lists only (for checkpoints that
    load with ``weights_only=True``).
    """

    def __init__(self, seed: int) -> None:
        outside = self._capture()
        _seed_everything(seed)
        self.state = self._capture()
        self._restore(outside)

    @staticmethod
    def _capture() -> dict[str, Any]:
        python = list(random.getstate()[1])
        return {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": python}

    @staticmethod
    def _restore(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        _set_numpy_rng_state(state["numpy"])
        random.setstate((3, tuple(int(x) for x in state["python"]), None))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outside = self._capture()
        self._restore(self.state)
        try:
            yield
        finally:
            self.state = self._capture()
            self._restore(outside)


class MixturePolicy(TensorDictModuleBase):
    """Act with the expert with probability β, independently per sub-env and step.

    Writes ``action`` (the action executed) and ``expert_action`` (always the expert's
    label). When the exploration type is deterministic, β is treated as 0 (the learner
    alone acts greedily). At β = 1 the learner is not called; at β in {0, 1} no random
    number is drawn.

    Args:
        expert: the expert policy.
        learner: the policy being trained.
        beta: initial probability of executing the expert's action.
        generator: where the per-step expert/learner choices are drawn from (default:
            torch's global RNG). DAgger passes its own seeded generator.
    """

    def __init__(
        self,
        expert: TensorDictModuleBase,
        learner: TensorDictModuleBase,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.expert = expert
        self.learner = learner
        self.beta = float(beta)
        self.generator = generator
        self.in_keys = ["observation"]
        self.out_keys = ["action", "expert_action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        expert_action = self.expert(
            TensorDict({"observation": obs}, batch_size=tensordict.batch_size)
        ).get("action")
        beta = 0.0 if is_deterministic() else self.beta
        if beta >= 1.0:
            action = expert_action
        else:
            learner_action = self.learner(tensordict.clone(False)).get("action")
            if beta <= 0.0:
                action = learner_action
            else:
                # Drawn on the CPU (where the generator lives), whatever the policies' device.
                draws = torch.rand(tensordict.batch_size, generator=self.generator)
                use_expert = (draws < beta).to(obs.device)
                mask = use_expert.reshape(
                    use_expert.shape + (1,) * (learner_action.ndim - use_expert.ndim)
                )
                action = torch.where(mask, expert_action.to(learner_action.dtype), learner_action)
        tensordict.set("action", action)
        tensordict.set("expert_action", expert_action)
        return tensordict


class DAgger(BC):
    """DAgger: rounds of collection with a β-mixture of expert and learner, then BC.

    Each round (one ``training_step``) takes β from the schedule, collects whole episodes
    with :class:`MixturePolicy` until at least ``min_episodes`` episodes and
    ``min_transitions`` transitions (never fewer than one batch) are complete, adds them to
    an aggregated buffer, and trains BC on everything in the buffer for ``bc_epochs``
    epochs, on the expert's labels of the observations visited.

    **What is kept.** A round is a trajectory set in the TED layout of the data contract
    (``docs/architecture.md``): ``observation``, ``("next", "observation" | "reward" |
    "terminated" | "truncated" | "done")``, ``episode`` (ids unique across rounds) and

    * ``action``: the *expert's* action, whichever policy acted. This is what
      ``imitation`` stores in its per-round demonstrations (its collector replaces every
      action with the expert's) and what BC trains on;
    * ``expert_action``: the same label under its own name;
    * ``executed_action``: the action the environment received (expert's or learner's).
      Where the learner acted, ``(observation, action, next observation)`` is not a step
      of the env; ``(observation, executed_action, next observation)`` is.

    :meth:`round_trajectories` returns one round, :meth:`trajectories` everything in the
    buffer. With ``save_rounds_dir``, each round is also written (atomically, before BC
    trains on it) to ``<save_rounds_dir>/round-000``, ``round-001``, ... by
    :func:`~tdimitation.data.storage.save_trajectories`: readable by ``load_trajectories``
    and by ``imitation`` (whose format keeps ``action`` only).

    The buffer is bounded (``buffer_capacity`` rows; the oldest go first, and a round
    keeps only its episodes still complete) and saved in checkpoints sized to its
    contents. Above ``memmap_threshold`` bytes when full (:attr:`buffer_bytes`) it is
    memory-mapped: a torchrl ``LazyMemmapStorage`` in a fresh sub-directory of
    ``memmap_dir`` (:attr:`memmap_path`), removed with the module or at exit.

    **Randomness.** A ``torch.Generator`` owned by the module (:attr:`rng`, seeded from
    ``seed``) draws the per-step expert/learner choices and each round's env seed and
    minibatch order. Policies sample from the global RNGs: during collection DAgger swaps
    in torch (CPU), numpy and Python global states of its own and restores the caller's
    afterwards. Both live in checkpoints: the same seed gives the same run whatever else
    draws from the global RNGs, and a resumed run continues the streams.

    **Checkpoints** load with ``DAgger.load_from_checkpoint(path)`` (primitive
    hyperparameters, ``weights_only=True``). Objects are not hyperparameters: a run with
    ``expert_policy=`` or a β callable without import path needs it passed again
    (``load_from_checkpoint(path, expert_policy=..., beta_schedule=...)``).

    Args:
        env_id: environment.
        expert: policy spec of the expert (``"scripted"``, ``"sb3-ppo:PATH"``, ...),
            ``"interactive"`` for a human at the keyboard (one env, frames shown in a
            window; see :class:`~tdimitation.policies.interactive.KeyboardExpert`), or
            pass a policy object with ``expert_policy=``.
        n_rounds: number of rounds.
        beta_schedule: ``"linear"`` (over ``rampdown_rounds``), ``"exponential"``
            (``decay ** round``), an import path ``"module:function"`` of a callable
            ``round -> β``, or such a callable. A callable is recorded in the
            hyperparameters by its import path when it has one, else as None (then pass
            it again when loading). A β outside [0, 1] is a ``ValueError``.
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
        save_rounds_dir: write each round's trajectories to ``<dir>/round-XXX``.
        reference_data: a trajectory dataset of the same expert (its demonstrations)
            whose stored expert and random returns the fit records on its MLflow run, so
            that ``tdimitation analyze`` gives DAgger runs normalised scores on the same
            scale as the runs that learn from those demonstrations. Read when fitting
            starts (:attr:`reference_returns`).
        expert_policy: a policy object (or plain callable) used instead of ``expert``.
        **bc_kwargs: arguments of :class:`BC` (batch size, learning rate, network...),
            except ``n_epochs``/``n_batches`` (DAgger trains ``bc_epochs`` per round).
    """

    #: The progress bar's figures (the round itself is the bar's count).
    progress_figures = {"dagger/beta": "beta", "dagger/round_return": "return", "bc/loss": "loss"}
    # Its rounds collect with one env and aggregate one buffer: one process only.
    multi_process = False

    def __init__(
        self,
        env_id: str,
        expert: str | None = "scripted",
        n_rounds: int = 10,
        beta_schedule: str | BetaSchedule | None = "linear",
        rampdown_rounds: int = 15,
        decay: float = 0.5,
        num_envs: int = 4,
        min_episodes: int = 1,
        min_transitions: int = 0,
        bc_epochs: int = 4,
        buffer_capacity: int = 1_000_000,
        memmap_dir: str | None = None,
        memmap_threshold: int | None = 2**30,
        save_rounds_dir: str | None = None,
        reference_data: str | None = None,
        expert_policy: Any = None,
        **bc_kwargs: Any,
    ) -> None:
        schedule = self._resolve_schedule(beta_schedule, rampdown_rounds, decay)
        # Recorded as a primitive (the import path, or None): hyperparameters must load
        # with weights_only=True, and save_hyperparameters reads this local.
        if callable(beta_schedule):
            beta_schedule = import_path(beta_schedule)
        checked_beta(schedule(0), 0)
        if n_rounds <= 0:
            raise BudgetError(f"n_rounds must be positive, got {n_rounds}")
        if buffer_capacity <= 0:
            raise ValueError(f"buffer_capacity must be positive, got {buffer_capacity}")
        if memmap_threshold is not None and memmap_threshold < 0:
            raise ValueError(
                f"memmap_threshold must be a number of bytes >= 0 (or None), got {memmap_threshold}"
            )
        # LightningCLI fills **bc_kwargs with BC's defaults, n_batches=None among them.
        for name in ("n_epochs", "n_batches"):
            if name in bc_kwargs and bc_kwargs[name] is None:
                del bc_kwargs[name]
        clash = sorted({"n_epochs", "n_batches"} & bc_kwargs.keys())
        if clash:
            raise ValueError(
                f"{', '.join(clash)} is not a DAgger argument: BC trains bc_epochs epochs "
                "over the aggregated data every round; pass bc_epochs"
            )
        super().__init__(env_id, n_epochs=bc_epochs, **bc_kwargs)
        # BC recorded its own n_epochs, which DAgger sets from bc_epochs: left in the
        # hyperparameters, load_from_checkpoint would pass it twice to BC.__init__.
        self.save_hyperparameters(ignore=["expert_policy", "n_epochs", "n_batches", "policy"])
        self.hparams["beta_schedule"] = beta_schedule  # LightningCLI passes its own copy
        self._schedule = schedule
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
                raise ValueError(
                    "give an expert: a policy spec (expert=) or a policy object "
                    "(expert_policy=; pass it again to load_from_checkpoint)"
                )
            expert_policy = policy_from_string(expert, env=self.collect_env)
        from tdimitation.policies.base import as_policy

        seed = self.hparams.seed
        #: the module's own generator: β-mixing choices, env seeds, minibatch orders
        self.rng = torch.Generator().manual_seed(seed)
        self._sampling_rngs = _GlobalRNGStates(seed)
        self.mixture = MixturePolicy(
            as_policy(expert_policy, self.collect_env), self.policy, generator=self.rng
        )
        #: bytes the aggregated buffer holds when full
        self.buffer_bytes = buffer_capacity * _row_bytes(self.collect_env)
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
        # A plain round-robin writer: row of the c-th transition ever added = c % capacity
        # (TensorDictReplayBuffer's writer would also store an "index" column).
        self.buffer = ReplayBuffer(storage=storage, writer=RoundRobinWriter())
        self.round = 0
        self.transitions_collected = 0
        #: the expert's and a random policy's returns from ``reference_data`` (None: none)
        self.reference_returns: dict[str, float] | None = None
        # Transition counts at which each round / each episode started (for the bounded
        # buffer's bookkeeping: which rounds and complete episodes it still holds).
        self._round_starts: list[int] = []
        self._episode_starts = torch.zeros(0, dtype=torch.int64)

    @staticmethod
    def _resolve_schedule(spec: Any, rampdown_rounds: int, decay: float) -> BetaSchedule:
        if spec == "linear":
            linear_beta(0, rampdown_rounds)  # validates
            return lambda r: linear_beta(r, rampdown_rounds)
        if spec == "exponential":
            exponential_beta(0, decay)
            return lambda r: exponential_beta(r, decay)
        if callable(spec):
            return spec
        if isinstance(spec, str):
            return import_schedule(spec)
        if spec is None:
            raise ValueError(
                "beta_schedule is None: a checkpoint of a run whose β callable has no import "
                "path records None; pass beta_schedule=<the callable> (or name it "
                "'module:function')"
            )
        raise ValueError(
            "beta_schedule must be 'linear', 'exponential', 'module:function' or a callable "
            f"round -> β, got {type(spec).__name__}"
        )

    def beta(self, round_index: int | None = None) -> float:
        """β of a round (default: the current one); ``ValueError`` if outside [0, 1]."""
        r = self.round if round_index is None else round_index
        return checked_beta(self._schedule(r), r)

    @property
    def episodes_collected(self) -> int:
        """Episodes added to the aggregated data so far (also the next episode id)."""
        return int(self._episode_starts.numel())

    def training_budget(self, checkpoint: dict[str, Any] | None = None) -> TrainingBudget:
        """``n_rounds`` rounds (each trains ``bc_epochs`` on the aggregated data)."""
        n_rounds = self.hparams.n_rounds
        done = self.round if checkpoint is None else int(checkpoint["tdimitation"]["round"])
        return TrainingBudget("n_rounds", n_rounds, "rounds", done, n_rounds)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Read here, not in __init__: loading a checkpoint must not need the dataset.
        if self.hparams.reference_data is not None:
            self.reference_returns = dataset_reference_returns(self.hparams.reference_data)

    # ------------------------------------------------------------------- data
    def train_dataloader(self) -> DataLoader:
        # A DataLoader draws a base seed when iterated, from torch's global RNG unless it
        # has a generator of its own (the round numbers need no randomness at all).
        return DataLoader(
            RoundIndices(self.round, self.hparams.n_rounds),
            batch_size=None,
            num_workers=0,
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def collect_round(self) -> TensorDict:
        """Whole episodes of the current round's β-mixture, as a DAgger trajectory set.

        Keys as described in the class docstring; episode ids continue those already
        aggregated. The episodes are not added to the buffer (``training_step`` does).
        """
        self.mixture.beta = self.beta()
        hp = self.hparams
        min_transitions = max(hp.min_transitions, hp.batch_size * hp.grad_accumulation)
        # Each round starts fresh episodes from a seed of the module's generator: a
        # resumed run repeats what the uninterrupted one collects (env state is not saved).
        env_seed = int(torch.randint(0, 2**31 - 2**16, (1,), generator=self.rng))
        if hasattr(self.collect_env, "set_seed"):
            self.collect_env.set_seed(env_seed)
        with torch.no_grad(), self._sampling_rngs.active():
            episodes = rollout(
                self.mixture,
                self.collect_env,
                min_episodes=hp.min_episodes,
                min_timesteps=min_transitions,
            )
        return TensorDict(
            {
                OBS: episodes.get(OBS),
                ACTION: episodes.get("expert_action"),
                "expert_action": episodes.get("expert_action"),
                "executed_action": episodes.get(ACTION),
                EPISODE: episodes.get(EPISODE) + self.episodes_collected,
                "next": episodes.get("next").select(*_NEXT_KEYS, strict=False),
            },
            batch_size=episodes.batch_size,
        )

    def _aggregate(self, episodes: TensorDictBase) -> None:
        starts, _ = episode_runs(episodes)
        self._round_starts.append(self.transitions_collected)
        self._episode_starts = torch.cat(
            [self._episode_starts, starts + self.transitions_collected]
        )
        capacity = self.hparams.buffer_capacity
        # A round larger than the buffer goes in capacity-sized pieces: one extend with
        # more rows than slots would write some slots twice in an unspecified order.
        for first in range(0, episodes.shape[0], capacity):
            self.buffer.extend(episodes[first : first + capacity])
        self.transitions_collected += episodes.shape[0]

    def _gather(self, start: int, end: int, what: str) -> TensorDict:
        """Complete episodes of transitions ``start..end-1`` still in the buffer."""
        oldest = self.transitions_collected - len(self.buffer)
        ep = self._episode_starts
        kept = ep[(ep >= max(start, oldest)) & (ep < end)]
        if kept.numel() == 0:
            capacity = self.hparams.buffer_capacity
            raise ValueError(
                f"{what} is no longer in the buffer (buffer_capacity={capacity} keeps the "
                "last transitions only); raise buffer_capacity, or pass save_rounds_dir to "
                "keep every round on disk"
            )
        rows = torch.arange(int(kept[0]), end) % self.hparams.buffer_capacity
        return self.buffer.storage[rows]

    def round_trajectories(self, round_index: int) -> TensorDict:
        """The trajectory set of one round (its episodes still complete in the buffer)."""
        n = len(self._round_starts)
        if not 0 <= round_index < n:
            have = f"rounds 0..{n - 1} exist" if n else "no round has been collected yet"
            raise ValueError(f"round {round_index} has not been collected: {have}")
        ends = self._round_starts[1:] + [self.transitions_collected]
        return self._gather(
            self._round_starts[round_index], ends[round_index], f"round {round_index}"
        )

    def trajectories(self) -> TensorDict:
        """Every complete episode in the aggregated buffer, oldest first."""
        if not self._round_starts:
            raise ValueError("no round has been collected yet: train first (trainer.fit)")
        return self._gather(0, self.transitions_collected, "the aggregated data")

    def _save_round(self, episodes: TensorDictBase, beta: float) -> None:
        from tdimitation.data.storage import save_trajectories

        hp = self.hparams
        expert = hp.expert if isinstance(hp.expert, str) else None
        save_trajectories(
            Path(hp.save_rounds_dir) / f"round-{self.round:03d}",
            episodes,
            env_id=hp.env_id,
            metadata={"algorithm": "DAgger", "round": self.round, "beta": beta, "seed": hp.seed}
            | {"expert": expert},
        )

    # --------------------------------------------------------------- training
    def training_step(self, round_index: int, batch_idx: int) -> None:
        hp = self.hparams
        episodes = self.collect_round()
        trainer = attached_trainer(self)
        if hp.save_rounds_dir is not None and getattr(trainer, "is_global_zero", True):
            self._save_round(episodes, self.mixture.beta)
        self._aggregate(episodes)
        data = self.buffer[:]
        observations = data[OBS].to(self.device)
        actions = data[ACTION].to(self.device)
        rows_per_step = hp.batch_size * hp.grad_accumulation
        per_epoch = max(data.shape[0] // rows_per_step, 1)
        blocks = _IndexBlocks(
            data.shape[0],
            hp.batch_size,
            hp.grad_accumulation,
            hp.steps_per_call,
            hp.bc_epochs * per_epoch,
            seed=int(torch.randint(0, 2**62, (1,), generator=self.rng)),
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
            "trajectories": {
                "round_starts": list(self._round_starts),
                "episode_starts": self._episode_starts.clone(),
            },
            "rng": {
                "generator": self.rng.get_state(),
                "sampling": self._sampling_rngs.state,
                # Draws made but not used yet (a categorical learner's noise block).
                "cached": [m.sampling_state() for m in stochastic_modules(self)],
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["tdimitation"]
        if "trajectories" not in state:
            raise ValueError(
                "this DAgger checkpoint predates trajectory storage (no 'trajectories' "
                "entry) and cannot be resumed by this version; start a new run"
            )
        self.round = int(state["round"])
        self.transitions_collected = int(state["transitions_collected"])
        load_buffer_state(self.buffer, state["buffers"]["aggregated"])
        self._round_starts = [int(s) for s in state["trajectories"]["round_starts"]]
        self._episode_starts = state["trajectories"]["episode_starts"].clone()
        self.rng.set_state(state["rng"]["generator"])
        self._sampling_rngs.state = state["rng"]["sampling"]
        cached = state["rng"].get("cached", [])
        for module, saved in zip(stochastic_modules(self), cached, strict=False):
            module.set_sampling_state(saved)
