"""Preference comparisons (deep RL from human preferences) as a LightningModule.

The loop, with ``N = num_iterations``:

0. an initial query of ``initial_comparison_frac`` × ``total_comparisons`` on trajectories
   of the untrained agent; the reward model trains ``initial_epoch_multiplier`` × longer;
1. then ``N`` iterations of: sample trajectories → fragment into pairs → gather labels →
   push to the dataset → train the reward model → train the agent on the learned reward.

The comparisons per query follow the query schedule; the agent's frames are split evenly
over iterations (the remainder to the last), in rounds of the agent's own batch size, so
they sum to exactly ``total_frames``. Each Lightning ``training_step`` is one agent round;
a query runs at the start of the round that begins its iteration. Trajectories the agent
collected while training are reused for fragments; only what is missing is collected
anew, and ``exploration_frac`` of a query's transitions come from fresh rounds collected
with :class:`ExplorationPolicy`.

With ``trajectories`` given and ``agent=None`` (the fixed-dataset mode) there is no agent:
each ``training_step`` is one query on fragments of the saved trajectories.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader

from tdimitation.algorithms.adversarial import (
    GENERATORS,
    build_component,
    finished_episode_sums,
)
from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.algorithms.preference.exploration import ExplorationPolicy
from tdimitation.algorithms.preference.fragments import Fragmenter, make_fragmenter
from tdimitation.algorithms.preference.gatherers import (
    PreferenceGatherer,
    SyntheticGatherer,
    labeller_seed,
    make_gatherer,
)
from tdimitation.algorithms.preference.pending import PendingPairs
from tdimitation.algorithms.preference.regularizers import make_regularizer
from tdimitation.algorithms.preference.reward_nets import build_reward_net, check_reward_settings
from tdimitation.algorithms.preference.schedule import agent_rounds, comparison_schedule
from tdimitation.algorithms.preference.trainers import BasicRewardTrainer, EnsembleRewardTrainer
from tdimitation.budget import TrainingBudget
from tdimitation.data.trajectory import (
    check_matches_env,
    check_one_horizon,
    check_trajectories,
    episode_lengths,
    episode_returns,
)
from tdimitation.envs import as_env_id
from tdimitation.errors import PreferenceError, TrajectoryError
from tdimitation.nn import RunningNorm
from tdimitation.objectives.preference import TRUE_REWARD, PreferenceLoss, PreferenceModel
from tdimitation.policies.base import RandomPolicy
from tdimitation.rewards import CHECKPOINT_REWARD_KEY, reward_payload
from tdimitation.rl.base import OnlineAlgorithm, RoundIndices, identity_collate, without_modules
from tdimitation.utils import seeded

#: Why the variable-horizon guard refuses episodes of different lengths.
_HORIZON_MATTERS = (
    "a learned reward can then teach ending episodes early or late whatever the preferences"
)
#: What a sampled round keeps for fragments and the horizon guard.
_SAMPLE_KEYS = (
    "observation",
    "action",
    "episode",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "done"),
)


class PreferenceComparisons(OnlineAlgorithm):
    """Learn a reward from pairwise comparisons of fragments and an agent on it.

    Args:
        env_id: environment id (fixed-horizon ids are the intended use).
        agent: ``"ppo"`` or ``"sac"`` (the RL algorithm trained on the learned reward), or
            None with ``trajectories`` (fixed-dataset mode).
        agent_kwargs: the agent's constructor arguments (not its env, budget or seed).
        num_envs: sub-envs stepped together.
        total_frames: the agent's budget of environment frames.
        seed: seed of envs, networks and every generator of the run.
        fixed_horizon: optional fixed episode length.
        env_kwargs: extra ``gymnasium.make`` arguments.
        trajectories: a trajectory set or dataset path to take fragments from instead of
            an agent (fixed-dataset mode).
        total_comparisons: the comparison budget.
        num_iterations: iterations after the initial query.
        initial_comparison_frac: share of comparisons in the initial query.
        query_schedule: ``"constant"``, ``"hyperbolic"``, ``"inverse_quadratic"`` (or a
            callable of t in [0, 1] when built in Python).
        fragment_length: transitions per fragment.
        transition_oversampling: transitions sampled per transition the fragments need.
        comparison_queue_size: most comparisons kept (None: all). The dataset stores only
            what the reward model reads and the true reward, so with image observations its
            memory is about ``comparison_queue_size`` x 2 x ``fragment_length`` images.
        reward_type: ``"mlp"`` (:class:`~tdimitation.rewards.MLPRewardNet`), ``"cnn"``
            (:class:`~tdimitation.rewards.CNNRewardNet`) or ``"auto"`` (CNN for image
            observations, MLP otherwise).
        reward_kwargs: the reward net's arguments (an MLP net also gets
            ``normalize_input=True`` unless told otherwise).
        ensemble_size: members of a reward ensemble (None: a single net; else >= 2).
        active_selection: keep the pairs the ensemble disagrees on most.
        active_selection_oversampling: candidates per kept pair.
        uncertainty_on: ``"logit"``, ``"probability"`` or ``"label"``.
        fragment_warning_threshold: see :class:`RandomFragmenter`.
        temperature, discount_factor, sample_labels, label_threshold: the synthetic
            gatherer's (``discount_factor`` is also the preference model's γ).
        noise_prob: the preference model's labelling noise.
        reward_lr, reward_batch_size, reward_minibatch_size, reward_epochs: reward training.
        initial_epoch_multiplier: epochs multiplier of the first reward training.
        regularizer: :func:`make_regularizer` arguments (``kind``, ``initial_lambda``, ...).
        exploration_frac: share of freshly sampled transitions collected while exploring.
        switch_prob, random_prob: the exploration wrapper's.
        normalize_reward: standardise the agent's learned reward by running statistics.
        dataset_memmap_dir: keep the preference dataset in memory-mapped files here.
        allow_variable_horizon: accept episodes of different lengths.
        human_gatherer: labels from people instead: the arguments of
            :class:`tdimitation.labelling.HumanGatherer` (``env_id`` and ``seed`` default to
            this run's); needs the ``label`` extra (see docs/human-preferences.md).
    """

    progress_bar_keys = ("reward/accuracy", "preferences/dataset_size", "episode/learned_return")
    progress_figures = {
        "episode/learned_return": "learned return",
        "episode/return": "true return",
        "reward/accuracy": "pref acc",
        "preferences/dataset_size": "prefs",
    }

    def __init__(
        self,
        env_id: str,
        agent: str | None = "ppo",
        agent_kwargs: dict[str, Any] | None = None,
        num_envs: int = 8,
        total_frames: int = 100_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        trajectories: TensorDictBase | str | None = None,
        total_comparisons: int = 200,
        num_iterations: int = 5,
        initial_comparison_frac: float = 0.1,
        query_schedule: Any = "hyperbolic",
        fragment_length: int = 100,
        transition_oversampling: float = 1.0,
        comparison_queue_size: int | None = None,
        reward_type: str = "auto",
        reward_kwargs: dict[str, Any] | None = None,
        ensemble_size: int | None = None,
        active_selection: bool = False,
        active_selection_oversampling: float = 2.0,
        uncertainty_on: str = "logit",
        fragment_warning_threshold: float = 0.0,
        temperature: float = 1.0,
        discount_factor: float = 1.0,
        sample_labels: bool = True,
        label_threshold: float = 50.0,
        noise_prob: float = 0.0,
        reward_lr: float = 1e-3,
        reward_batch_size: int = 32,
        reward_minibatch_size: int | None = None,
        reward_epochs: int = 3,
        initial_epoch_multiplier: float = 200.0,
        regularizer: dict[str, Any] | None = None,
        exploration_frac: float = 0.0,
        switch_prob: float = 0.5,
        random_prob: float = 0.5,
        normalize_reward: bool = True,
        dataset_memmap_dir: str | None = None,
        allow_variable_horizon: bool = False,
        human_gatherer: dict[str, Any] | None = None,
    ) -> None:
        env_id = as_env_id(env_id)
        fixed = agent is None
        if not fixed and agent not in GENERATORS:
            raise PreferenceError(f"unknown agent {agent!r}; choose one of {sorted(GENERATORS)}")
        rl = None
        if not fixed:
            rl = build_component(
                GENERATORS[agent],
                "agent_kwargs",
                agent_kwargs,
                env_id=env_id,
                num_envs=num_envs,
                total_frames=total_frames,
                seed=seed,
                fixed_horizon=fixed_horizon,
                env_kwargs=env_kwargs,
            )
        frames_per_batch = num_envs if fixed else rl.frames_per_batch
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=frames_per_batch,
            total_frames=max(total_frames, frames_per_batch),
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        if not fixed and total_frames % frames_per_batch:
            raise PreferenceError(
                f"total_frames ({total_frames}) must be a multiple of the agent's round "
                f"({frames_per_batch} frames) so that agent steps sum to the budget"
            )
        check_reward_settings(reward_type, ensemble_size)
        if not 0.0 <= exploration_frac <= 1.0:
            raise PreferenceError(f"exploration_frac must be in [0, 1], got {exploration_frac}")
        if fragment_length < 1 or transition_oversampling < 1:
            raise PreferenceError("fragment_length and transition_oversampling must be >= 1")
        # A callable schedule cannot be a hyperparameter (checkpoints load weights-only).
        self.save_hyperparameters(
            ignore=["trajectories"] + (["query_schedule"] if callable(query_schedule) else [])
        )
        # Networks given to the agent are not hyperparameters.
        self.hparams["agent_kwargs"] = without_modules(agent_kwargs)
        self.query_schedule = query_schedule
        self.schedule = comparison_schedule(
            total_comparisons, num_iterations, initial_comparison_frac, query_schedule
        )
        self.fixed_dataset = fixed
        self.rounds = (
            [] if fixed else agent_rounds(total_frames // frames_per_batch, num_iterations)
        )
        if rl is not None:
            rl.env.close()  # the agent collects through this module's env
            self.agent = rl
            spec = RandomPolicy(self.env).spec
            self.exploration = ExplorationPolicy(
                rl.collection_policy(), spec, switch_prob, random_prob
            )
        else:
            self.agent = None
        with seeded(None if seed is None else seed + 1):
            self.reward_net = build_reward_net(
                self.env, reward_type, dict(reward_kwargs or {}), ensemble_size
            )
        self.preference_model = PreferenceModel(
            self.reward_net, noise_prob, discount_factor, label_threshold
        )
        self.reward_loss = PreferenceLoss(self.preference_model)
        self.fragmenter: Fragmenter = make_fragmenter(
            self.rng,
            fragment_warning_threshold,
            self.preference_model if active_selection else None,
            active_selection_oversampling,
            uncertainty_on,
        )
        self.gatherer: PreferenceGatherer = make_gatherer(
            env_id,
            seed,
            temperature,
            discount_factor,
            sample_labels,
            label_threshold,
            human_gatherer,
        )
        if human_gatherer is not None:
            # Hyperparameters are logged: a database password stays out of them.
            self.hparams["human_gatherer"] = self.gatherer.loggable_options(human_gatherer)
        trainer_cls = EnsembleRewardTrainer if ensemble_size else BasicRewardTrainer
        self.reward_trainer = trainer_cls(
            self.reward_loss,
            self.rng,
            reward_batch_size,
            reward_minibatch_size,
            reward_epochs,
            reward_lr,
            make_regularizer(**regularizer) if regularizer else None,
            backward=self.manual_backward,
        )
        self.dataset = PreferenceDataset(comparison_queue_size, dataset_memmap_dir)
        self.reward_norm = RunningNorm((), clip=10.0) if normalize_reward else None
        # Learned-reward sums of each sub-env's unfinished episode (the learned return).
        self.register_buffer("_learned_carry", torch.zeros(self.num_envs), persistent=True)
        self.trajectories: TensorDictBase | None = None
        self._trajectory_source = trajectories
        # Loop state (checkpointed): the next query, pair ids, pending pairs, sample buffer.
        self.next_query = 0
        self.comparisons = 0
        self._reward_trained = False
        self.pending = PendingPairs()
        self._sampled: list[TensorDictBase] = []
        self._sample_frames = 0
        self._horizon: int | None = None

    def collection_policy(self):
        return self.exploration

    def export_policy(self):
        if self.agent is None:
            raise PreferenceError("the fixed-dataset mode trains no policy (only a reward)")
        return self.agent.export_policy()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        reward_optimizer = self.reward_trainer.optimizer
        if self.agent is None:
            return [reward_optimizer]
        return [self.agent.configure_optimizers(), reward_optimizer]

    def replay_buffers(self) -> dict:
        return {} if self.agent is None else self.agent.replay_buffers()

    def seed_rngs(self, seed: int) -> None:
        super().seed_rngs(seed)
        if isinstance(self.gatherer, SyntheticGatherer) and self.gatherer.rng is not None:
            self.gatherer.rng.manual_seed(labeller_seed(seed))

    def set_gatherer(self, gatherer: PreferenceGatherer) -> None:
        """Use another labeller (for example a human behind a web page)."""
        if not isinstance(gatherer, PreferenceGatherer):
            raise PreferenceError(f"a gatherer must be a PreferenceGatherer, got {gatherer!r}")
        self.gatherer = gatherer

    # --------------------------------------------------------------------- data
    def _check_horizon(self, lengths: torch.Tensor, where: str) -> None:
        if self.hparams.allow_variable_horizon:
            return
        self._horizon = check_one_horizon(lengths, self._horizon, where, _HORIZON_MATTERS)

    def set_trajectories(self, trajectories: TensorDictBase | str) -> None:
        """The fixed dataset's trajectories (checked against the env and the horizon)."""
        if isinstance(trajectories, str):
            from tdimitation.data.storage import load_trajectories

            trajectories = load_trajectories(trajectories)
        check_trajectories(trajectories, "trajectories")
        check_matches_env(trajectories, self.env, "trajectories")
        no_reward = ("next", "reward") not in trajectories.keys(True)
        if no_reward and isinstance(self.gatherer, SyntheticGatherer):
            raise TrajectoryError(
                "the trajectories carry no ('next', 'reward'): the synthetic gatherer needs "
                "the true reward (or set a gatherer that asks a labeller)"
            )
        self._check_horizon(episode_lengths(trajectories), "the trajectories")
        present = set(trajectories.keys(True))
        self.trajectories = trajectories.select(*[k for k in _SAMPLE_KEYS if k in present])

    def make_train_loader(self, trajectories: TensorDictBase) -> DataLoader:
        """Hook of :class:`~tdimitation.algorithms.DemonstrationData` (fixed-dataset mode)."""
        if not self.fixed_dataset:
            raise PreferenceError(
                "a trajectory datamodule is only used in the fixed-dataset mode (agent=None)"
            )
        self.set_trajectories(trajectories)
        return self.train_dataloader()

    def training_budget(self, checkpoint: dict[str, Any] | None = None) -> TrainingBudget:
        """``total_frames`` of the agent, or the queries of ``num_iterations`` (fixed data)."""
        if not self.fixed_dataset:
            return super().training_budget(checkpoint)
        done = self.next_query
        if checkpoint is not None:
            done = int(checkpoint["tdimitation"]["preference"]["next_query"])
        n = self.hparams.num_iterations
        return TrainingBudget("num_iterations", n, "queries", done, len(self.schedule))

    def train_dataloader(self) -> DataLoader:
        if not self.fixed_dataset:
            return super().train_dataloader()
        if self.trajectories is None and self._trajectory_source is not None:
            self.set_trajectories(self._trajectory_source)
        if self.trajectories is None:
            raise TrajectoryError(
                "the fixed-dataset mode has no trajectories: pass trajectories= or a "
                "DemonstrationData datamodule"
            )
        if self.seed is not None and self.next_query == 0:
            self.seed_rngs(self.seed)
        remaining = len(self.schedule) - self.next_query
        if remaining <= 0:
            raise PreferenceError("nothing left to do: every query of the schedule ran")
        return DataLoader(
            RoundIndices(0, remaining), batch_size=None, num_workers=0, collate_fn=identity_collate
        )

    # ----------------------------------------------------------------- training
    def query_round(self, query: int) -> int:
        """The agent round at whose start query ``query`` (0 = initial) runs."""
        return 0 if query == 0 else sum(self.rounds[: query - 1])

    def training_step(self, round_index: int, batch_idx: int) -> None:
        if not self.fixed_dataset:
            return super().training_step(round_index, batch_idx)
        metrics = self.preference_query(self.trajectories) | self._dataset_returns()
        # Named as in the agent mode: the progress-bar keys and the returns unprefixed.
        shown = {*self.progress_bar_keys, "episode/return"}
        self.log_dict({k: v for k, v in metrics.items() if k in shown}, prog_bar=True, batch_size=1)
        self.log_dict(
            {f"train/{k}": v for k, v in metrics.items() if k not in shown},
            on_step=True,
            batch_size=1,
        )
        return None

    @torch.no_grad()
    def _dataset_returns(self) -> dict[str, float]:
        """Mean true and learned return of the fixed dataset's episodes."""
        episodes = self.trajectories
        metrics = {}
        if TRUE_REWARD in episodes.keys(True):
            metrics["episode/return"] = float(episode_returns(episodes).mean())
        learned = TensorDict(
            {
                "episode": episodes.get("episode"),
                "next": {
                    "done": episodes.get(("next", "done")),
                    "reward": self._learned_reward(episodes.to(self.device)).cpu(),
                },
            },
            batch_size=episodes.batch_size,
        )
        metrics["episode/learned_return"] = float(episode_returns(learned).mean())
        return metrics

    def training_round(self, batch: TensorDictBase) -> None:
        self._remember(batch)
        metrics: dict[str, float] = {}
        round_index = self.frames // self.frames_per_batch
        while self.next_query < len(self.schedule) and round_index >= self.query_round(
            self.next_query
        ):
            metrics |= self.preference_query(self._sample_trajectories())
        start = time.perf_counter()
        with torch.no_grad():
            raw = self._learned_reward(batch)
        if self.reward_norm is not None:
            self.reward_norm.update(raw)

        def reward_fn(tensordict: TensorDictBase) -> torch.Tensor:
            if tensordict is batch:
                return self._scale(raw)
            with torch.no_grad():
                return self._scale(self._learned_reward(tensordict))

        agent_optimizer = self.optimizers()[0]
        self.agent.sync_frames(self.frames)
        agent_metrics = self.agent.update(batch, agent_optimizer, self.manual_backward, reward_fn)
        metrics |= {f"agent/{k}": v for k, v in agent_metrics.items()}
        metrics["time/agent_update_s"] = time.perf_counter() - start
        metrics["learned_reward_mean"] = float(raw.mean())
        returns, carry = finished_episode_sums(
            raw[..., 0].float(), batch.get(("next", "done"))[..., 0], self._learned_carry
        )
        self._learned_carry.copy_(carry)
        if returns.numel():
            metrics["episode/learned_return"] = float(returns.mean())
        self.log_round(batch, metrics)
        self.agent.sync_frames(self.frames)

    def _learned_reward(self, tensordict: TensorDictBase) -> torch.Tensor:
        return self.reward_net(tensordict.select(*self.reward_net.in_keys).clone(False)).get(
            "learned_reward"
        )

    def _scale(self, reward: torch.Tensor) -> torch.Tensor:
        return reward if self.reward_norm is None else self.reward_norm(reward)

    # --------------------------------------------------------- sampling rounds
    def _remember(self, batch: TensorDictBase, prune: bool = True) -> None:
        """Keep a collected round for fragments (and check its horizon)."""
        done = batch.get(("next", "done"))[..., 0]
        self._check_horizon(batch.get(("next", "step_count"))[..., 0][done], "the rollouts")
        self._sampled.append(batch.select(*_SAMPLE_KEYS).cpu())
        if prune:
            # Keep only as many rounds as the next query can use (memory stays bounded).
            last = self.next_query >= len(self.schedule)
            need = 0 if last else self._transitions_needed(self.next_query)
            del self._sampled[: -max(1, math.ceil(need / self.frames_per_batch))]

    def _transitions_needed(self, query: int) -> int:
        hp = self.hparams
        pairs = self.schedule[query]
        return math.ceil(hp.transition_oversampling * 2 * pairs * hp.fragment_length)

    def _collect(self, rounds: int, explore: bool) -> list[TensorDictBase]:
        """Collect and remember ``rounds`` rounds (exploring or not); returns them."""
        self.exploration.explore = explore
        start = len(self._sampled)
        try:
            for _ in range(rounds):
                batch = self.collector.rollout()
                self._sample_frames += batch.numel()
                self._remember(batch, prune=False)
        finally:
            self.exploration.explore = False
        return self._sampled[start:]

    def _sample_trajectories(self) -> TensorDictBase:
        """A flat trajectory set for the next query: agent rounds first, then fresh ones.

        ``exploration_frac`` of the transitions (rounded down) are exploratory: whole
        exploration rounds are collected, but only the first steps of each sub-env that
        together make up that share are kept, so the share is what was asked for and not
        rounded up to whole rounds (a round is often a large part of a query's needs).
        """
        need = self._transitions_needed(self.next_query)
        explore_need = int(self.hparams.exploration_frac * need)
        agent_need = need - explore_need
        have = sum(b.numel() for b in self._sampled)
        self._collect(max(0, math.ceil((agent_need - have) / self.frames_per_batch)), False)
        explored = self._collect(math.ceil(explore_need / self.frames_per_batch), True)
        # Rounds are consecutive in each sub-env's stream: joined along time, each sub-env's
        # row holds whole episode runs, and row-major flattening keeps them contiguous.
        stream = self._sampled
        if explored:
            # A time prefix of the exploration rounds: each row stays one contiguous run.
            steps = math.ceil(explore_need / self.num_envs)
            stream = stream[: -len(explored)] + [torch.cat(explored, dim=1)[:, :steps]]
        self._sampled = []
        return torch.cat(stream, dim=1).reshape(-1)

    # ------------------------------------------------------------------ queries
    def preference_query(self, trajectories: TensorDictBase) -> dict[str, float]:
        """One query: fragment, gather, push, train the reward model; returns metrics."""
        hp = self.hparams
        n_pairs = self.schedule[self.next_query]
        self.next_query += 1
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        if n_pairs > 0:
            pairs = self.fragmenter(trajectories, hp.fragment_length, n_pairs)
            self.pending.submit(pairs, self.gatherer)
        metrics["time/fragments_s"] = time.perf_counter() - start
        self._receive_answers()
        metrics |= {f"preferences/{k}": v for k, v in self.gatherer.metrics.items()}
        metrics["preferences/dataset_size"] = float(len(self.dataset))
        metrics["preferences/comparisons"] = float(self.comparisons)
        if len(self.dataset):
            start = time.perf_counter()
            multiplier = 1.0 if self._reward_trained else hp.initial_epoch_multiplier
            # The loss module this algorithm holds now (one assigned after construction
            # included) is the one that trains.
            self.reward_trainer.loss = self.reward_loss
            out = self.reward_trainer.train(self.dataset, multiplier)
            self._reward_trained = True
            metrics |= {f"reward/{k.removeprefix('train/')}": v for k, v in out.items()}
            metrics["time/reward_s"] = time.perf_counter() - start
        metrics["sample_frames"] = float(self._sample_frames)
        self.last_query_metrics = metrics
        return metrics

    def _receive_answers(self) -> None:
        pairs, labels = self.pending.answered(*self.gatherer.poll())
        if pairs is None or not labels.numel():
            return
        # The dataset keeps what the reward model reads and the true reward (for the
        # accuracy against it), not the fragments' other keys: with images, storing next
        # observations a state-only reward never reads would double the memory.
        present = set(pairs.keys(True))
        keys = [k for k in (*self.reward_net.in_keys, TRUE_REWARD) if k in present]
        self.dataset.push(pairs.select(*keys), labels)
        self.comparisons += int(labels.numel())

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.agent is not None:
            super().on_save_checkpoint(checkpoint)
        else:
            checkpoint["tdimitation"] = {
                "frames": 0,
                "collector": None,
                "rng": {"torch": torch.get_rng_state(), "generators": [self.rng.get_state()]},
                "buffers": {},
            }
        state = checkpoint["tdimitation"]
        state[CHECKPOINT_REWARD_KEY] = reward_payload(self.reward_net)
        state["preference"] = {
            "next_query": self.next_query,
            "comparisons": self.comparisons,
            "reward_trained": self._reward_trained,
            "horizon": self._horizon,
            "sample_frames": self._sample_frames,
            "dataset": self.dataset.state_dict(),
            "trainer": self.reward_trainer.state_dict(),
            "gatherer": self.gatherer.state_dict(),
            "sampled": [b.to_dict() for b in self._sampled],
            **self.pending.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.agent is not None:
            super().on_load_checkpoint(checkpoint)
            self.agent.sync_frames(self.frames)
        else:
            state = checkpoint["tdimitation"]
            torch.set_rng_state(state["rng"]["torch"])
            self.rng.set_state(state["rng"]["generators"][0])
        state = checkpoint["tdimitation"]["preference"]
        self.next_query = int(state["next_query"])
        self.comparisons = int(state["comparisons"])
        self._reward_trained = bool(state["reward_trained"])
        self._horizon = state["horizon"]
        self._sample_frames = int(state["sample_frames"])
        self.dataset.load_state_dict(state["dataset"])
        self.reward_trainer.load_state_dict(state["trainer"])
        self.gatherer.load_state_dict(state["gatherer"])
        self.pending.load_state_dict(state)
        self._sampled = [TensorDict.from_dict(b, batch_dims=2) for b in state["sampled"]]


__all__ = ["PreferenceComparisons"]
