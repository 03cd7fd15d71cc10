"""Density-based reward: imitation by rewarding the log-density of expert behaviour.

A kernel density estimate of p(s), p(s, a) or p(s, s') is fitted once on the
demonstrations (:class:`~tdimitation.rewards.density.DensityRewardNet`); its log-density is
the reward an RL agent then maximises, so the agent seeks the states (and actions) the
expert visits. Unlike GAIL the reward never changes during training.

One round: collect a batch with the current policy, relabel it with the density reward
(normalised, see ``normalize_reward``), and update the agent (any :mod:`tdimitation.rl`
algorithm with an ``update`` method, driven as GAIL drives its generator).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader

from tdimitation.algorithms.adversarial import (
    GENERATORS,
    build_component,
    finished_episode_sums,
)
from tdimitation.data.trajectory import (
    check_matches_env,
    check_one_horizon,
    check_trajectories,
    episode_lengths,
)
from tdimitation.envs import as_env_id
from tdimitation.errors import TrajectoryError
from tdimitation.nn import RunningNorm
from tdimitation.rewards import CHECKPOINT_REWARD_KEY, reward_payload
from tdimitation.rewards.density import DensityRewardNet
from tdimitation.rl.base import OnlineAlgorithm


class Density(OnlineAlgorithm):
    """Train an RL agent on the log-density of the demonstrations (a KDE in torch).

    Args:
        env_id: environment id (fixed-horizon ids such as ``tdimitation/CartPoleFixed-v1``
            are the intended use; see ``allow_variable_horizon``).
        demonstrations: expert trajectories: a trajectory set or the path of a trajectory
            dataset (or ``imitation`` file). A stationary density also accepts plain
            transitions (no ``episode`` key). Leave None when a
            :class:`~tdimitation.algorithms.DemonstrationData` datamodule provides them.
        density_type: ``"state"`` (p(s)), ``"state_action"`` (p(s, a)) or
            ``"state_state"`` (p(s, s')).
        kernel: ``"gaussian"`` or ``"exponential"``.
        bandwidth: kernel width (in standardised units with ``standardise``).
        standardise: standardise each input dimension over the demonstrations.
        stationary: one density for all time steps; False fits one per time step (needs
            trajectories; the agent must be ``"ppo"``, whose rounds keep the time steps).
        rl: the agent, ``"ppo"`` or ``"sac"``.
        rl_kwargs: constructor arguments of the agent (its env settings, budget and seed
            are this module's).
        num_envs: sub-envs stepped together.
        total_frames: budget of environment frames.
        seed: seed of envs, networks and RNGs.
        fixed_horizon: optional fixed episode length (for ids without one).
        env_kwargs: extra ``gymnasium.make`` arguments.
        normalize_reward: standardise the log-density by its running mean and std (and clip
            to +-10) before the agent sees it. Log-densities far from the demonstrations are
            large negative numbers; unnormalised they swamp value targets.
        chunk_elements: query-point pairs the density scores at once (bounds memory).
        allow_variable_horizon: accept episodes of different lengths. Off by default: with
            variable horizons the reward's sign alone can teach ending episodes early or
            surviving, whatever the demonstrations.
    """

    progress_bar_keys = ("episode/learned_return",)
    progress_figures = {"episode/learned_return": "learned return", "episode/return": "true return"}

    def __init__(
        self,
        env_id: str,
        demonstrations: TensorDictBase | str | None = None,
        density_type: str = "state_action",
        kernel: str = "gaussian",
        bandwidth: float = 0.5,
        standardise: bool = True,
        stationary: bool = True,
        rl: str = "ppo",
        rl_kwargs: dict[str, Any] | None = None,
        num_envs: int = 8,
        total_frames: int = 200_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        normalize_reward: bool = True,
        chunk_elements: int = 1 << 17,
        allow_variable_horizon: bool = False,
    ) -> None:
        env_id = as_env_id(env_id)
        if rl not in GENERATORS:
            raise ValueError(f"unknown rl algorithm {rl!r}; choose one of {sorted(GENERATORS)}")
        if not stationary and rl != "ppo":
            raise ValueError(
                f"a non-stationary density needs rl='ppo': {rl} replays stored transitions, "
                "which keep no time step to pick the density model by"
            )
        agent = build_component(
            GENERATORS[rl],
            "rl_kwargs",
            rl_kwargs,
            env_id=env_id,
            num_envs=num_envs,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=agent.frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        self.save_hyperparameters(ignore=["demonstrations"])
        agent.env.close()  # the agent collects through this module's env
        self.agent = agent
        self.reward_net = DensityRewardNet.from_env(
            self.env,
            density_type=density_type,
            kernel=kernel,
            bandwidth=bandwidth,
            standardise=standardise,
            stationary=stationary,
            chunk_elements=chunk_elements,
        )
        self.reward_norm = RunningNorm((), clip=10.0) if normalize_reward else None
        self.register_buffer("_learned_carry", torch.zeros(self.num_envs), persistent=True)
        self._demo_source = demonstrations
        self.demonstrations: TensorDictBase | None = None
        self._horizon: int | None = None

    # --------------------------------------------------------------- building
    @property
    def rl(self) -> OnlineAlgorithm:
        """The RL algorithm trained on the density reward."""
        return self.agent

    def collection_policy(self):
        return self.agent.collection_policy()

    def export_policy(self):
        return self.agent.export_policy()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.agent.configure_optimizers()

    def replay_buffers(self) -> dict:
        return self.agent.replay_buffers()

    # ---------------------------------------------------------- demonstrations
    def set_demonstrations(self, demonstrations: TensorDictBase | str) -> None:
        """Check the expert data against the env and fit the density on it."""
        if isinstance(demonstrations, str):
            from tdimitation.data.storage import load_trajectories

            demonstrations = load_trajectories(demonstrations)
        if "episode" in demonstrations.keys():
            check_trajectories(demonstrations, "demonstrations")
            if not self.hparams.allow_variable_horizon:
                self._check_horizon(episode_lengths(demonstrations), "the demonstrations")
        elif demonstrations.numel() == 0:
            raise TrajectoryError("the demonstrations are empty")
        if "observation" in demonstrations.keys() and "action" in demonstrations.keys():
            check_matches_env(demonstrations, self.env, "demonstrations")
        self.reward_net.fit(demonstrations.cpu())
        self.reward_net.to(self.device)
        self.demonstrations = demonstrations

    def make_train_loader(self, demonstrations: TensorDictBase) -> DataLoader:
        """Hook of :class:`~tdimitation.algorithms.DemonstrationData`: take its data."""
        self.set_demonstrations(demonstrations)
        return self.train_dataloader()

    def train_dataloader(self) -> DataLoader:
        if self.demonstrations is None and self._demo_source is not None:
            self.set_demonstrations(self._demo_source)
        if self.demonstrations is None:
            raise TrajectoryError(
                "Density has no demonstrations: pass demonstrations= (a trajectory set or "
                "dataset path) or a DemonstrationData datamodule"
            )
        return super().train_dataloader()

    def _check_horizon(self, lengths: torch.Tensor, where: str) -> None:
        self._horizon = check_one_horizon(
            lengths,
            self._horizon,
            where,
            (
                "a log-density reward can then teach ending episodes early or late regardless "
                "of the demonstrations"
            ),
        )

    # --------------------------------------------------------------- training
    @torch.no_grad()
    def density_reward(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The raw log-density reward ``[*B, 1]`` of a batch of transitions."""
        return self.reward_net(tensordict.copy()).get("learned_reward")

    def _scale(self, reward: torch.Tensor) -> torch.Tensor:
        return reward if self.reward_norm is None else self.reward_norm(reward)

    def training_round(self, batch: TensorDictBase) -> None:
        if not self.hparams.allow_variable_horizon:
            done = batch.get(("next", "done"))[..., 0]
            lengths = batch.get(("next", "step_count"))[..., 0][done]
            self._check_horizon(lengths, "the agent's rollouts")
        raw = self.density_reward(batch)
        if self.reward_norm is not None:
            self.reward_norm.update(raw[..., 0])

        def reward_fn(tensordict: TensorDictBase) -> torch.Tensor:
            # The round itself was just scored: reuse it (PPO relabels exactly it).
            if tensordict is batch:
                return self._scale(raw)
            return self._scale(self.density_reward(tensordict))

        self.agent.sync_frames(self.frames)
        metrics = self.agent.update(batch, self.optimizers(), self.manual_backward, reward_fn)
        metrics = {f"rl/{k}": v for k, v in metrics.items()}
        metrics["log_density_mean"] = float(raw.mean())
        returns, self._learned_carry = finished_episode_sums(
            raw[..., 0].float(), batch.get(("next", "done"))[..., 0], self._learned_carry
        )
        if returns.numel():
            metrics["episode/learned_return"] = float(returns.mean())
        self.log_round(batch, metrics)
        self.agent.sync_frames(self.frames)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["tdimitation"]
        state["density"] = {"horizon": self._horizon}
        # So load_reward("tdimitation", "last.ckpt") gives the fitted density reward.
        state[CHECKPOINT_REWARD_KEY] = reward_payload(self.reward_net)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._horizon = checkpoint["tdimitation"].get("density", {}).get("horizon")
        self.agent.sync_frames(self.frames)


__all__ = ["Density"]
