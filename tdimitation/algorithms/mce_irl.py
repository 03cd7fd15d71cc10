"""Maximum causal entropy inverse RL on finite-horizon tabular models, as a LightningModule.

Each iteration computes the learned reward of every state (the reward net on the rows of
the observation matrix), its soft-optimal policy (:func:`soft_value_iteration`) and that
policy's discounted state occupancy; the gradient of the demonstrations' negative
log-likelihood with respect to the state rewards is ``D_policy - D_demonstrations``, which
is back-propagated through the reward net. Training stops when the occupancy gap (L∞) or
the gradient norm falls below its threshold, or after ``max_iter`` iterations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset

from tdimitation.algorithms.tabular_ops import (
    TabularPolicy,
    TabularTensors,
    occupancy_measures,
    soft_value_iteration,
    states_from_observations,
)
from tdimitation.budget import TrainingBudget
from tdimitation.callbacks import FitCallbacks
from tdimitation.envs import as_env_id, make_env
from tdimitation.envs.factory import _import_entry_point, _unknown_id
from tdimitation.errors import MCEIRLError
from tdimitation.rewards import MLPRewardNet, RewardNet
from tdimitation.rng import make_rng

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def build_tabular_env(env_id: Any, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """One gymnasium env (not vectorised) from an id, an entry point, a callable or an env.

    Raises:
        EnvCreationError: an unknown id or an entry point that does not import.
    """
    if isinstance(env_id, gym.Env):
        return env_id
    kwargs = dict(env_kwargs or {})
    if isinstance(env_id, str):
        if ":" in env_id:
            target = _import_entry_point(env_id)
            if not isinstance(target, str):
                return target(**kwargs)
            env_id = target
        if env_id not in gym.registry:
            raise _unknown_id(env_id)
        return gym.make(env_id, disable_env_checker=True, **kwargs)
    return env_id(**kwargs)


def _episode_positions(episode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step index within its episode of each row, and whether each row ends its episode."""
    n = episode.shape[0]
    start = torch.ones(n, dtype=torch.bool)
    start[1:] = episode[1:] != episode[:-1]
    rows = torch.arange(n)
    first = torch.cummax(torch.where(start, rows, 0), 0).values
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = start[1:]
    return rows - first, last


def demonstration_occupancy(
    demonstrations: Any, model: TabularTensors, discount: float
) -> torch.Tensor:
    """Discounted state occupancy ``[S]`` of demonstrations.

    Args:
        demonstrations: a trajectory set (TED layout with ``episode``): the average over
            episodes of ``sum_t discount**t onehot(s_t)``, final states included; a
            TensorDict of transitions (no ``episode``; ``discount`` must be 1): state
            frequencies scaled to ``horizon + 1`` visits per episode; or an occupancy
            measure, ``[S]`` (discounted total) or ``[H + 1, S]`` (per step).
        model: the tabular model.
        discount: discount of the occupancy.

    Raises:
        MCEIRLError: transitions with ``discount != 1``, observations that are not one-hot
            (or state indices), episodes longer than the horizon, or a wrong shape.
    """
    S, H = model.n_states, model.horizon
    if isinstance(demonstrations, np.ndarray | torch.Tensor):
        om = torch.as_tensor(demonstrations, dtype=torch.float64)
        if om.shape == (H + 1, S):
            steps = torch.arange(H + 1, dtype=torch.float64)
            return (torch.full_like(steps, float(discount)) ** steps) @ om
        if om.shape != (S,) or (om < 0).any() or not torch.isfinite(om).all():
            raise MCEIRLError(
                f"an occupancy measure must be non-negative of shape [S]={S} or [H + 1, S]="
                f"{(H + 1, S)}, got {tuple(om.shape)}"
            )
        return om
    if not isinstance(demonstrations, TensorDictBase):
        raise MCEIRLError(
            f"cannot use {type(demonstrations).__name__} as demonstrations: give a trajectory "
            "set, a TensorDict of transitions or an occupancy measure"
        )
    demos = demonstrations.cpu()
    states = states_from_observations(demos.get("observation"), S)
    next_obs = demos.get(("next", "observation"), None)
    if "episode" not in demos.keys():
        if float(discount) != 1.0:
            raise MCEIRLError(
                f"transitions carry no time step, so they cannot be discounted (discount="
                f"{discount}); use discount=1, trajectories or an occupancy measure"
            )
        visited = [states]
        done = demos.get(("next", "done"), None)
        if next_obs is not None and done is not None:
            visited.append(states_from_observations(next_obs[done.reshape(-1)], S))
        visited_all = torch.cat(visited)
        counts = torch.bincount(visited_all, minlength=S).double()
        return counts * (H + 1) / visited_all.numel()
    if next_obs is None:
        raise MCEIRLError("trajectories need ('next', 'observation') for their final states")
    t, last = _episode_positions(demos.get("episode").reshape(-1))
    if int(t.max()) >= H:
        raise MCEIRLError(
            f"demonstrations have episodes of {int(t.max()) + 1} steps, longer than the "
            f"horizon {H} of the environment"
        )
    final_states = states_from_observations(next_obs[last], S)
    all_t = torch.cat([t, t[last] + 1]).double()
    all_s = torch.cat([states, final_states])
    weights = torch.full_like(all_t, float(discount)) ** all_t
    n_episodes = int(last.sum())
    return torch.zeros(S, dtype=torch.float64).index_add_(0, all_s, weights) / n_episodes


class _Iterations(IterableDataset):
    """Yields iteration numbers: every iteration uses the whole model, so no data flows."""

    def __init__(self, module: MCEIRL) -> None:
        self.module = module

    def __iter__(self) -> Iterator[int]:
        # Resumed runs continue from the stored iteration count.
        yield from range(self.module.iteration, self.module.max_iter)


class MCEIRL(FitCallbacks, L.LightningModule):
    """Maximum causal entropy IRL for finite-horizon tabular environments.

    Train with ``Trainer(max_epochs=1).fit(module)`` (or ``tdimitation fit``): one epoch
    runs up to ``max_iter`` iterations and stops early at convergence.

    Args:
        env_id: a tabular env: registered id (``"tdimitation/CliffWorld15x6-v0"``), entry
            point, or (from Python) a factory or :class:`~tdimitation.envs.TabularModel`.
        demonstrations: a trajectory set, a TensorDict of transitions (discount 1 only),
            an occupancy measure (``[S]`` discounted or ``[H + 1, S]`` per step), a path
            to a trajectory dataset, or ``"expert"``: the soft-optimal policy of the env's
            own reward (its exact occupancy, or ``expert_episodes`` sampled episodes).
        expert_episodes: with ``demonstrations="expert"``, the number of sampled episodes
            (None: the exact occupancy measure).
        discount: discount in ``(0, 1]`` of the soft values and occupancies.
        hidden_sizes: hidden widths of the reward MLP on observations (``[]``: linear).
        activation: activation of the reward MLP.
        reward_net: a reward net on observations to use instead (Python only).
        lr: Adam learning rate.
        max_iter: maximum number of iterations.
        linf_eps: stop when the L∞ occupancy gap is below this.
        grad_l2_eps: stop when the reward gradient's L2 norm is below this.
        log_every: log metrics every this many iterations (and at the last one).
        seed: seed of the reward net's initialisation and of sampled demonstrations.
        dtype: ``"float64"`` or ``"float32"`` planning arithmetic.
        env_kwargs: constructor arguments of the env.

    Raises:
        TabularModelError: an env that is not tabular or has an infinite horizon.
        MCEIRLError: demonstrations that cannot be used (see
            :func:`demonstration_occupancy`) or a discount outside ``(0, 1]``.
    """

    #: The progress bar's figures: the occupancy gap to the demonstrations, the gradient.
    progress_figures = {"linf_delta": "occupancy gap", "grad_norm": "grad norm"}

    def __init__(
        self,
        env_id: Any,
        demonstrations: Any = "expert",
        *,
        expert_episodes: int | None = None,
        discount: float = 1.0,
        hidden_sizes: list[int] | tuple[int, ...] = (),
        activation: str = "relu",
        reward_net: RewardNet | None = None,
        lr: float = 0.01,
        max_iter: int = 1000,
        linf_eps: float = 1e-3,
        grad_l2_eps: float = 1e-4,
        log_every: int = 10,
        seed: int = 0,
        dtype: str = "float64",
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < float(discount) <= 1.0:
            raise MCEIRLError(f"discount must be in (0, 1], got {discount}")
        if dtype not in DTYPES:
            raise MCEIRLError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        env = build_tabular_env(env_id, env_kwargs)
        if not isinstance(env_id, gym.Env):
            env_id = as_env_id(env_id)
        hparams = ["expert_episodes", "discount", "hidden_sizes", "activation", "lr"]
        hparams += ["max_iter", "linf_eps", "grad_l2_eps", "log_every", "seed", "dtype"]
        self.save_hyperparameters(*hparams, "env_kwargs")
        if isinstance(env_id, str):
            self.hparams["env_id"] = env_id
        if isinstance(demonstrations, str):
            self.hparams["demonstrations"] = demonstrations
        self.env_id_str = env_id if isinstance(env_id, str) else None
        self.env_kwargs = dict(env_kwargs or {})
        self.model = TabularTensors(env, DTYPES[dtype])
        self.discount, self.lr = float(discount), float(lr)
        self.max_iter, self.log_every = int(max_iter), max(1, int(log_every))
        self.linf_eps, self.grad_l2_eps = float(linf_eps), float(grad_l2_eps)
        self._seed = int(seed)
        self.iteration = 0
        if reward_net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed)
                reward_net = MLPRewardNet(
                    (self.model.observation_matrix.shape[1],),
                    self.model.n_actions,
                    True,
                    use_action=False,
                    hidden_sizes=list(hidden_sizes),
                    activation=activation,
                )
        self.reward_net = reward_net
        om = demonstration_occupancy(
            self._load(demonstrations, expert_episodes), self.model, self.discount
        )
        self.register_buffer("demo_occupancy", om.to(self.model.dtype))
        self.automatic_optimization = False
        self.last_metrics: dict[str, float] = {}
        self._pi: torch.Tensor | None = None

    # ---------------------------------------------------------------- data
    def _load(self, demonstrations: Any, expert_episodes: int | None) -> Any:
        if isinstance(demonstrations, str) and demonstrations == "expert":
            pi = soft_value_iteration(self.model, None, self.discount).pi
            if expert_episodes is None:
                return occupancy_measures(self.model, pi, discount=self.discount)[1]
            return self._sample(pi, int(expert_episodes))
        if isinstance(demonstrations, str):
            from tdimitation.data import load_trajectories

            return load_trajectories(demonstrations)
        return demonstrations

    def _sample(self, pi: torch.Tensor, n_episodes: int) -> TensorDictBase:
        from tdimitation.data.rollout import rollout

        policy = TabularPolicy(pi, self.model.observation_matrix)
        policy.rng = make_rng(self._seed)
        env = self.make_env(num_envs=min(8, n_episodes), seed=self._seed)
        try:
            return rollout(policy, env, min_episodes=n_episodes)
        finally:
            env.close()

    def training_budget(self, checkpoint: dict[str, Any] | None = None) -> TrainingBudget:
        """``max_iter`` iterations (fewer when it converges)."""
        done = self.iteration if checkpoint is None else int(checkpoint.get("mce_iteration", 0))
        return TrainingBudget("max_iter", self.max_iter, "iterations", done, self.max_iter)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Iterations(self), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.reward_net.parameters(), lr=self.lr)

    # -------------------------------------------------------------- training
    def state_rewards(self) -> torch.Tensor:
        """The learned reward of every state, ``[S]`` (differentiable)."""
        obs = self.model.observation_matrix
        return self.reward_net.reward(obs, None, None, None).reshape(self.model.n_states)

    def occupancy(self, reward: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pi, D_total)`` of the soft-optimal policy of ``reward`` (default: learned)."""
        if reward is None:
            with torch.no_grad():
                reward = self.state_rewards()
        pi = soft_value_iteration(self.model, reward.detach(), self.discount).pi
        return pi, occupancy_measures(self.model, pi, discount=self.discount)[1]

    def step(self, optimizer: Any = None) -> dict[str, float]:
        """One iteration; returns ``linf_delta``, ``grad_norm`` and ``weight_norm``.

        The reward is updated only when neither stopping criterion holds, so after a
        stop the learned reward is the one whose occupancy met the criterion.
        """
        optimizer = optimizer or self.optimizers()
        reward = self.state_rewards()
        pi, om = self.occupancy(reward)
        self._pi = pi
        gap = om - self.demo_occupancy
        linf = float(gap.abs().max())
        optimizer.zero_grad()
        # d(-log-likelihood)/d reward[s] = D_policy[s] - D_demo[s]: a vector-Jacobian product.
        reward.backward(gap.to(reward.dtype))
        params = [p for p in self.reward_net.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        stop = linf < self.linf_eps or grad_norm < self.grad_l2_eps
        if not stop:
            optimizer.step()
        with torch.no_grad():
            weight_norm = float(
                torch.linalg.vector_norm(
                    torch.stack([p.norm() for p in self.reward_net.parameters()])
                )
            )
        self.last_metrics = {
            "linf_delta": linf,
            "grad_norm": grad_norm,
            "weight_norm": weight_norm,
            "converged": float(stop),
        }
        return self.last_metrics

    def training_step(self, batch: int, batch_idx: int) -> None:
        metrics = self.step()
        self.iteration += 1
        last = bool(metrics["converged"]) or self.iteration >= self.max_iter
        if last or self.iteration % self.log_every == 0:
            self.log_dict({**metrics, "iteration": float(self.iteration)}, on_step=True)
        if metrics["converged"]:
            self.trainer.should_stop = True

    def fit(self, max_iter: int | None = None) -> dict[str, float]:
        """Train without a Trainer (same iterations as ``Trainer.fit``); returns metrics."""
        if max_iter is not None:
            self.max_iter = int(max_iter)
        optimizer = self.configure_optimizers()
        while self.iteration < self.max_iter:
            metrics = self.step(optimizer)
            self.iteration += 1
            if metrics["converged"]:
                break
        return self.last_metrics

    # ------------------------------------------------------------- results
    def policy_probabilities(self) -> torch.Tensor:
        """``pi[t, s, a]``: the soft-optimal policy of the current learned reward."""
        return self.occupancy()[0]

    def export_policy(self) -> TabularPolicy:
        """A fresh :class:`TabularPolicy` of the learned reward's soft-optimal policy."""
        return TabularPolicy(self.policy_probabilities(), self.model.observation_matrix)

    def make_env(self, num_envs: int | None = None, seed: int | None = None):
        """The training env as a batched torchrl env (for rollouts and evaluation)."""
        if self.env_id_str is None:
            raise MCEIRLError("this MCEIRL was given an env object: build rollout envs yourself")
        return make_env(self.env_id_str, num_envs or 1, seed=seed, env_kwargs=self.env_kwargs)

    def evaluate(self, episodes: int = 20) -> dict[str, float]:
        """Deterministic return of the exported policy in the env."""
        from tdimitation.evaluation import evaluate_module

        return evaluate_module(self, episodes)

    @property
    def seed(self) -> int:
        return self._seed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mce_iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = int(checkpoint.get("mce_iteration", 0))


__all__ = ["MCEIRL", "build_tabular_env", "demonstration_occupancy"]
