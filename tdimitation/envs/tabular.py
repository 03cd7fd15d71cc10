"""Tabular environments: finite MDPs and POMDPs given by their matrices.

A :class:`TabularModel` holds the whole model: transition matrix ``T[s, a, s']``, a reward
(per state, per state-action or per transition), an observation matrix ``O[s, :]`` (the
observation emitted in state ``s``; the identity gives one-hot observations), an initial
state distribution and a finite horizon. It is also a plain ``gymnasium.Env``, so
:func:`~tdimitation.envs.make_env`, rollouts and trajectory storage use it like any other
env; tabular algorithms (MCE IRL) read its matrices instead of stepping it.

Every episode lasts exactly ``horizon`` steps and ends with ``truncated=True`` (as the
fixed-horizon envs): the model has no terminal states. The reward of a step is that of the
state the step starts in (for a state reward), as in the MCE IRL literature.

Registered ids (:data:`TABULAR_ENVS`): ``tdimitation/CliffWorld{7x4,15x6,100x20}[XY]-v0``
and ``tdimitation/RandomMDP-v0``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from tdimitation.errors import TabularModelError


def _as_matrix(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise TabularModelError(f"{name} holds NaN or infinite values")
    return array


class TabularModel(gym.Env):
    """A finite-horizon tabular MDP (or POMDP) that is also a gymnasium env.

    Args:
        transition_matrix: ``[S, A, S]``, each ``T[s, a]`` a probability distribution.
        reward_matrix: ``[S]`` (state reward), ``[S, A]`` or ``[S, A, S]``.
        observation_matrix: ``[S, D]`` observation of each state; None for the identity
            (one-hot observations).
        initial_state_dist: ``[S]`` distribution of the first state; None for state 0.
        horizon: number of steps of every episode; None for an infinite horizon (the env
            then never ends, and MCE IRL refuses it).
        expose_state: observe the state index (``Discrete(S)``) instead of the
            observation matrix's row (what ``seals``' ``ExposePOMDPStateWrapper`` does).
        render_mode: accepted for ``make_env``; only ``None`` and ``"ansi"`` are supported.

    Raises:
        TabularModelError: shapes that disagree, rows that are not distributions,
            non-finite entries or a horizon that is not positive.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        transition_matrix: Any,
        reward_matrix: Any,
        observation_matrix: Any | None = None,
        initial_state_dist: Any | None = None,
        horizon: int | None = None,
        *,
        expose_state: bool = False,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        T = _as_matrix("transition_matrix", transition_matrix)
        if T.ndim != 3 or T.shape[0] != T.shape[2] or T.shape[0] == 0 or T.shape[1] == 0:
            raise TabularModelError(
                f"transition_matrix must have shape [S, A, S] with S, A > 0, got {T.shape}"
            )
        n_states, n_actions = T.shape[0], T.shape[1]
        if (T < 0).any() or not np.allclose(T.sum(-1), 1.0, atol=1e-6):
            raise TabularModelError(
                "transition_matrix rows T[s, a, :] must be probability distributions "
                "(non-negative, summing to 1)"
            )
        R = _as_matrix("reward_matrix", reward_matrix)
        if R.shape not in ((n_states,), (n_states, n_actions), (n_states, n_actions, n_states)):
            raise TabularModelError(
                f"reward_matrix must have shape [S], [S, A] or [S, A, S] with S={n_states}, "
                f"A={n_actions}; got {R.shape}"
            )
        if observation_matrix is None:
            obs = np.eye(n_states)
        else:
            obs = _as_matrix("observation_matrix", observation_matrix)
            if obs.ndim == 1:
                obs = obs[:, None]
            if obs.ndim != 2 or obs.shape[0] != n_states:
                raise TabularModelError(
                    f"observation_matrix must have shape [S, D] with S={n_states}, got {obs.shape}"
                )
        if initial_state_dist is None:
            p0 = np.zeros(n_states)
            p0[0] = 1.0
        else:
            p0 = _as_matrix("initial_state_dist", initial_state_dist)
            if p0.shape != (n_states,) or (p0 < 0).any() or not np.isclose(p0.sum(), 1.0):
                raise TabularModelError(
                    f"initial_state_dist must be a distribution over the {n_states} states"
                )
        if horizon is not None and int(horizon) <= 0:
            raise TabularModelError(f"horizon must be a positive step count or None, got {horizon}")
        if render_mode not in (None, "ansi"):
            raise TabularModelError(f"render_mode {render_mode!r} is not supported (use 'ansi')")
        self.transition_matrix = T
        self.reward_matrix = R
        self.observation_matrix = obs.astype(np.float32)
        self.initial_state_dist = p0 / p0.sum()
        self.horizon = None if horizon is None else int(horizon)
        self.expose_state = bool(expose_state)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(n_actions)
        if self.expose_state:
            self.observation_space = gym.spaces.Discrete(n_states)
        else:
            low, high = self.observation_matrix.min(0), self.observation_matrix.max(0)
            self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        # Cumulative rows: a step is one uniform draw and a binary search (no np.choice).
        self._cum_T = np.cumsum(T, axis=-1)
        self._cum_p0 = np.cumsum(self.initial_state_dist)
        self.state = 0
        self.t = 0

    @property
    def n_states(self) -> int:
        """Number of states S."""
        return self.transition_matrix.shape[0]

    @property
    def n_actions(self) -> int:
        """Number of actions A."""
        return self.transition_matrix.shape[1]

    @property
    def obs_dim(self) -> int:
        """Width D of an observation (a row of the observation matrix)."""
        return self.observation_matrix.shape[1]

    def _observe(self, state: int):
        if self.expose_state:
            return int(state)
        return self.observation_matrix[state].copy()

    @staticmethod
    def _draw(cumulative: np.ndarray, u: float) -> int:
        # min(): rounding can leave the last cumulative entry a hair below 1.
        return min(int(np.searchsorted(cumulative, u, side="right")), cumulative.shape[0] - 1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.state = self._draw(self._cum_p0, self.np_random.random())
        return self._observe(self.state), {"state": self.state}

    def reward(self, state: int, action: int, next_state: int) -> float:
        """Reward of the transition ``(state, action, next_state)``."""
        R = self.reward_matrix
        if R.ndim == 1:
            return float(R[state])
        if R.ndim == 2:
            return float(R[state, action])
        return float(R[state, action, next_state])

    def step(self, action):
        action = int(action)
        old = self.state
        self.state = self._draw(self._cum_T[old, action], self.np_random.random())
        self.t += 1
        reward = self.reward(old, action, self.state)
        truncated = self.horizon is not None and self.t >= self.horizon
        return self._observe(self.state), reward, False, truncated, {"state": self.state}

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return f"t={self.t} state={self.state}"
        return None


class CliffWorld(TabularModel):
    """A windy grid world with a cliff between the start and the goal.

    States are grid cells ``row * width + col``. The start is cell (0, 0), the goal
    (0, width - 1), and the other cells of row 0 are the cliff. Rewards: goal +10, cliff
    -10, any other cell -1. The four actions move diagonally (row -1/+1 times col -1/+1;
    action ``(drow + 1) + (dcol + 1) // 2``), clamped at the walls; with probability
    ``fail_p`` the wind blows the agent one extra row toward row 0. This is the same MDP as
    ``seals``' CliffWorld, so results compare with ``imitation``'s.

    Args:
        width: number of columns (>= 3).
        height: number of rows (>= 2).
        horizon: episode length.
        use_xy_obs: observe ``(col / (width - 1), row / (height - 1))`` instead of a
            one-hot vector of the cell.
        rew_default: reward of ordinary cells.
        rew_goal: reward of the goal.
        rew_cliff: reward of cliff cells.
        fail_p: probability of the wind's extra row.
        expose_state: observe the cell index (see :class:`TabularModel`).
        render_mode: see :class:`TabularModel`.
    """

    def __init__(
        self,
        width: int,
        height: int,
        horizon: int,
        use_xy_obs: bool = False,
        *,
        rew_default: float = -1.0,
        rew_goal: float = 10.0,
        rew_cliff: float = -10.0,
        fail_p: float = 0.3,
        expose_state: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if int(width) < 3 or int(height) < 2:
            raise TabularModelError(
                f"CliffWorld needs width >= 3 and height >= 2, got {width}x{height}"
            )
        if not 0.0 <= float(fail_p) <= 1.0:
            raise TabularModelError(f"fail_p must be a probability, got {fail_p}")
        width, height = int(width), int(height)
        self.width, self.height = width, height
        n = width * height
        row, col = np.divmod(np.arange(n), width)
        reward = np.full(n, float(rew_default))
        reward[(row == 0) & (col > 0)] = float(rew_cliff)
        reward[(row == 0) & (col == width - 1)] = float(rew_goal)
        T = np.zeros((n, 4, n))
        states = np.arange(n)
        for drow in (-1, 1):
            for dcol in (-1, 1):
                a = (drow + 1) + (dcol + 1) // 2
                c = np.clip(col + dcol, 0, width - 1)
                target = np.clip(row + drow, 0, height - 1) * width + c
                blown = np.clip(row + drow - 1, 0, height - 1) * width + c
                # np.add.at: target and blown coincide at row 0, and both shares must add.
                np.add.at(T, (states, a, target), 1.0 - float(fail_p))
                np.add.at(T, (states, a, blown), float(fail_p))
        if use_xy_obs:
            obs = np.stack([col / (width - 1), row / (height - 1)], axis=1)
        else:
            obs = None
        super().__init__(
            T, reward, obs, None, horizon, expose_state=expose_state, render_mode=render_mode
        )

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        grid = np.full((self.height, self.width), ".", dtype="<U1")
        grid[0, 1:-1], grid[0, 0], grid[0, -1] = "C", "S", "G"
        r, c = divmod(self.state, self.width)
        grid[r, c] = "@"
        return "\n".join("".join(line) for line in grid)


def random_mdp(
    n_states: int,
    n_actions: int,
    horizon: int,
    *,
    branch_factor: int = 2,
    obs_dim: int | None = None,
    seed: int = 0,
    expose_state: bool = False,
    render_mode: str | None = None,
) -> TabularModel:
    """A random tabular MDP, the same for the same arguments.

    Each ``T[s, a]`` moves to ``branch_factor`` distinct random states with
    Dirichlet(1) probabilities; the initial distribution is Dirichlet(1) over all states.
    Observations are one-hot (``obs_dim=None``) or standard normal ``[S, obs_dim]``
    features; the state reward is linear in them, ``obs @ w`` with standard normal ``w``.

    Args:
        n_states: number of states S.
        n_actions: number of actions A.
        horizon: episode length.
        branch_factor: number of possible successors of each state-action (1..S).
        obs_dim: width of random observation features, or None for one-hot observations.
        seed: seed of the model's random draws.
        expose_state: observe state indices (see :class:`TabularModel`).
        render_mode: see :class:`TabularModel`.

    Raises:
        TabularModelError: a size that is not positive or a branch factor above S.
    """
    if int(n_states) <= 0 or int(n_actions) <= 0:
        raise TabularModelError(
            f"n_states and n_actions must be positive, got {n_states}, {n_actions}"
        )
    if not 1 <= int(branch_factor) <= int(n_states):
        raise TabularModelError(f"branch_factor must be in [1, n_states], got {branch_factor}")
    rng = np.random.default_rng(seed)
    S, A, k = int(n_states), int(n_actions), int(branch_factor)
    # k distinct successors per (s, a): the first k of a random permutation of the states.
    successors = np.argsort(rng.random((S, A, S)), axis=-1)[..., :k]
    probs = rng.dirichlet(np.ones(k), size=(S, A))
    T = np.zeros((S, A, S))
    np.put_along_axis(T, successors, probs, axis=-1)
    obs = None if obs_dim is None else rng.standard_normal((S, int(obs_dim)))
    features = np.eye(S) if obs is None else obs
    reward = features @ rng.standard_normal(features.shape[1])
    p0 = rng.dirichlet(np.ones(S))
    return TabularModel(
        T, reward, obs, p0, horizon, expose_state=expose_state, render_mode=render_mode
    )


# Registered ids -> (entry point, default kwargs). CliffWorld sizes and horizons are those
# of seals, so the same experiments run on both.
TABULAR_ENVS: dict[str, tuple[Any, dict[str, Any]]] = {
    **{
        f"tdimitation/CliffWorld{w}x{h}{'XY' if xy else ''}-v0": (
            CliffWorld,
            {"width": w, "height": h, "horizon": H, "use_xy_obs": xy},
        )
        for w, h, H in ((7, 4, 9), (15, 6, 18), (100, 20, 110))
        for xy in (False, True)
    },
    "tdimitation/RandomMDP-v0": (
        random_mdp,
        {"n_states": 16, "n_actions": 3, "horizon": 20, "branch_factor": 2, "seed": 0},
    ),
}


def register_tabular_envs() -> None:
    """Register the ids of :data:`TABULAR_ENVS` with gymnasium (idempotent)."""
    for env_id, (entry_point, kwargs) in TABULAR_ENVS.items():
        if env_id in gym.registry:
            continue
        # No max_episode_steps: the model ends its episodes itself at its horizon.
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)


def tabular_model(env: Any) -> Any:
    """The tabular model behind ``env``: the env itself or what its wrappers wrap.

    Anything with ``transition_matrix``, ``observation_matrix``, ``reward_matrix``,
    ``initial_state_dist`` and ``horizon`` qualifies (``seals``' tabular envs too).
    Returns None for an env that is not tabular.
    """
    seen = env
    while seen is not None:
        if all(
            hasattr(seen, name)
            for name in ("transition_matrix", "observation_matrix", "initial_state_dist")
        ):
            return seen
        seen = getattr(seen, "env", None)
    return None


__all__ = [
    "TabularModel",
    "CliffWorld",
    "random_mdp",
    "TABULAR_ENVS",
    "register_tabular_envs",
    "tabular_model",
]
