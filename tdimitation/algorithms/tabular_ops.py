"""Tabular planning in torch: soft value iteration, occupancy measures, a tabular policy.

Everything is vectorised over states and actions; only the time steps are a Python loop
(each step depends on the previous one). Sparse transition matrices (CliffWorld has two
successors per state-action, 0.05% of the dense entries at 2,000 states) are stored in
CSR form, so a backup costs a sparse matrix-vector product instead of a dense ``S*A*S``
one.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs.utils import ExplorationType, exploration_type

from tdimitation.envs.tabular import tabular_model
from tdimitation.errors import MCEIRLError, TabularModelError
from tdimitation.rng import Stochastic, uniform

#: Transition matrices with at most this fraction of non-zero entries are stored sparse.
SPARSE_DENSITY = 0.1


def _finite_model(env: Any) -> Any:
    model = tabular_model(env)
    if model is None:
        raise TabularModelError(
            f"MCE IRL needs a tabular environment (transition, observation and initial-state "
            f"matrices), got {type(env).__name__}; continuous or sampled-only state spaces are "
            "out of scope (use GAIL, AIRL or a density reward)"
        )
    if getattr(model, "horizon", None) is None:
        raise TabularModelError(
            "MCE IRL supports only finite-horizon tabular environments; this one has an "
            "infinite horizon (horizon=None): give it a horizon (continuous state spaces "
            "are out of scope)"
        )
    return model


class TabularTensors(nn.Module):
    """A tabular model's matrices as torch tensors on one device.

    Args:
        env: a :class:`~tdimitation.envs.TabularModel` (or any env exposing the matrices).
        dtype: floating dtype of the planning tensors (float64 by default: occupancy gaps
            of 1e-3 are far below float32's resolution of sums over a horizon).
        sparse: store the transition matrix sparse (None: when at most
            :data:`SPARSE_DENSITY` of its entries are non-zero).

    Raises:
        TabularModelError: ``env`` is not tabular or has an infinite horizon.
    """

    def __init__(
        self, env: Any, dtype: torch.dtype = torch.float64, sparse: bool | None = None
    ) -> None:
        super().__init__()
        model = _finite_model(env)
        T = torch.as_tensor(model.transition_matrix, dtype=dtype)
        self.n_states, self.n_actions = int(T.shape[0]), int(T.shape[1])
        self.horizon = int(model.horizon)
        if sparse is None:
            sparse = bool((T != 0).float().mean() <= SPARSE_DENSITY)
        self.sparse = bool(sparse)
        # Rows ordered (a, s): backups then produce Q[t] as [A, S], whose logsumexp over
        # the leading axis is ~2x faster than over a trailing axis of 4 on CPU.
        flat = T.permute(1, 0, 2).reshape(self.n_actions * self.n_states, self.n_states)
        if self.sparse:
            # Both orientations: backups read T[s, a, :], occupancies push mass through T^T.
            with warnings.catch_warnings():
                # torch calls its CSR support "beta"; matrix-vector products are all we use.
                warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
                csr, flat_t = flat.to_sparse_csr(), flat.t().contiguous().to_sparse_csr()
            self.register_buffer("T_flat", csr, persistent=False)
            self.register_buffer("T_flat_t", flat_t, persistent=False)
        else:
            self.register_buffer("T_flat", flat, persistent=False)
            self.register_buffer("T_flat_t", flat.t().contiguous(), persistent=False)
        obs = torch.as_tensor(model.observation_matrix, dtype=torch.float32)
        self.register_buffer("observation_matrix", obs, persistent=False)
        p0 = torch.as_tensor(model.initial_state_dist, dtype=dtype)
        self.register_buffer("initial_state_dist", p0, persistent=False)
        reward = torch.as_tensor(model.reward_matrix, dtype=dtype)
        self.register_buffer("reward_matrix", reward, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.initial_state_dist.dtype

    def expected_next(self, values: torch.Tensor) -> torch.Tensor:
        """``E[values(s') | s, a]`` as ``[A, S]`` (actions first) for ``values`` ``[S]``."""
        out = self.T_flat @ values.unsqueeze(-1) if self.sparse else self.T_flat @ values
        return out.reshape(self.n_actions, self.n_states)

    def push(self, mass: torch.Tensor) -> torch.Tensor:
        """Next-state distribution ``sum_{s,a} mass[a, s] T[s, a, :]`` for ``[A, S]`` mass."""
        flat = mass.reshape(-1)
        out = self.T_flat_t @ flat.unsqueeze(-1) if self.sparse else self.T_flat_t @ flat
        return out.reshape(self.n_states)


def as_tensors(env: Any, dtype: torch.dtype = torch.float64) -> TabularTensors:
    """``env`` itself if it is a :class:`TabularTensors`, else its tensors."""
    return env if isinstance(env, TabularTensors) else TabularTensors(env, dtype)


class SoftVIResult(NamedTuple):
    """Per-time-step soft values ``V[t, s]``, Q-values ``Q[t, s, a]`` and policy ``pi[t, s, a]``."""

    V: torch.Tensor
    Q: torch.Tensor
    pi: torch.Tensor


def _reward_tensor(model: TabularTensors, reward: torch.Tensor | None) -> torch.Tensor:
    if reward is None:
        reward = model.reward_matrix
    reward = torch.as_tensor(reward).to(device=model.initial_state_dist.device, dtype=model.dtype)
    if reward.ndim == 2 and reward.shape[-1] == 1:
        reward = reward[:, 0]
    if reward.shape not in ((model.n_states,), (model.n_states, model.n_actions)):
        raise MCEIRLError(
            f"soft value iteration needs a reward of shape [S] or [S, A] with S="
            f"{model.n_states}, A={model.n_actions}; got {tuple(reward.shape)}"
        )
    return reward if reward.ndim == 2 else reward.unsqueeze(-1)


def soft_value_iteration(
    env: Any, reward: torch.Tensor | None = None, discount: float = 1.0
) -> SoftVIResult:
    """Finite-horizon soft (maximum causal entropy) value iteration.

    ``Q[H-1] = r``; ``Q[t] = r + discount * E[V[t+1](s') | s, a]``;
    ``V[t] = logsumexp_a Q[t]``; ``pi[t] = exp(Q[t] - V[t])``.

    Args:
        env: a tabular env or its :class:`TabularTensors`.
        reward: ``[S]`` state reward or ``[S, A]`` state-action reward (default: the
            env's own reward, which must then be of one of these shapes).
        discount: any value in ``(0, 1]``, 1 included (the horizon is finite).

    Returns:
        ``SoftVIResult(V [H, S], Q [H, S, A], pi [H, S, A])`` in the model's dtype.
    """
    model = as_tensors(env)
    r = _reward_tensor(model, reward).t()  # [A or 1, S]
    H, S, A = model.horizon, model.n_states, model.n_actions
    # Computed actions-first ([H, A, S]) and returned as [H, S, A] views.
    Q = torch.empty(H, A, S, dtype=model.dtype, device=r.device)
    V = torch.empty(H, S, dtype=model.dtype, device=r.device)
    Q[H - 1] = r.expand(A, S)
    torch.logsumexp(Q[H - 1], dim=0, out=V[H - 1])
    for t in range(H - 2, -1, -1):
        torch.add(r, model.expected_next(V[t + 1]), alpha=float(discount), out=Q[t])
        torch.logsumexp(Q[t], dim=0, out=V[t])
    pi = torch.exp(Q - V.unsqueeze(1))
    return SoftVIResult(V, Q.transpose(1, 2), pi.transpose(1, 2))


def occupancy_measures(
    env: Any,
    pi: torch.Tensor | None = None,
    *,
    reward: torch.Tensor | None = None,
    discount: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """State occupancy of a per-time-step policy: per step and discounted total.

    Args:
        env: a tabular env or its :class:`TabularTensors`.
        pi: ``[H, S, A]`` policy; default: the soft-optimal policy of ``reward``.
        reward: reward for the default policy (default: the env's own).
        discount: weight ``discount**t`` of step ``t`` in the total.

    Returns:
        ``D [H + 1, S]`` with ``D[t, s] = P(s_t = s)`` (``D[H]`` is the state after the
        last step; each row sums to 1), and ``D_total [S] = sum_t discount**t D[t]``.
    """
    model = as_tensors(env)
    if pi is None:
        pi = soft_value_iteration(model, reward, discount).pi
    H, S = model.horizon, model.n_states
    if pi.shape != (H, S, model.n_actions):
        raise MCEIRLError(
            f"pi must have shape [H, S, A] = {(H, S, model.n_actions)}, got {tuple(pi.shape)}"
        )
    # Actions first, as the transition rows (free for soft_value_iteration's output).
    pi_a = pi.to(model.dtype).transpose(1, 2).contiguous()
    D = torch.empty(H + 1, S, dtype=model.dtype, device=pi.device)
    D[0] = model.initial_state_dist
    for t in range(H):
        D[t + 1] = model.push(D[t] * pi_a[t])
    steps = torch.arange(H + 1, dtype=model.dtype, device=pi.device)
    weights = torch.full_like(steps, float(discount)) ** steps
    return D, weights @ D


def states_from_observations(observations: torch.Tensor, n_states: int) -> torch.Tensor:
    """State indices of int64 state observations or one-hot observation rows.

    Raises:
        MCEIRLError: observations that are neither state indices nor one-hot rows.
    """
    if not observations.dtype.is_floating_point:
        states = observations.reshape(-1).long()
        if states.numel() and (states.min() < 0 or states.max() >= n_states):
            raise MCEIRLError(
                f"state observations must lie in [0, {n_states}), got {states.max().item()}"
            )
        return states
    obs = observations.reshape(observations.shape[0], -1)
    one_hot = (
        obs.shape[-1] == n_states
        and bool(((obs == 0) | (obs == 1)).all())
        and bool((obs.sum(-1) == 1).all())
    )
    if not one_hot:
        raise MCEIRLError(
            "MCE IRL reads states from demonstrations whose observations are one-hot (or "
            f"state indices); these have width {obs.shape[-1]} and are not one-hot: give an "
            "occupancy measure instead, or record the demonstrations with expose_state=True"
        )
    return obs.argmax(-1)


class TabularPolicy(Stochastic, TensorDictModuleBase):
    """A per-time-step tabular policy ``pi[t, s, a]`` as a TensorDict policy.

    It reads ``observation`` (a state index, a one-hot row or any row of the model's
    observation matrix when rows identify states) and writes ``action``. The time step is
    the input's ``step_count`` when present; otherwise the policy counts its own calls per
    sub-env, starting at 0 and wrapping at the horizon (every episode of a tabular model
    lasts exactly ``horizon`` steps), and restarts when the batch size changes or on
    :meth:`reset`. Call :meth:`reset` before reusing a policy in an env whose episodes
    were left unfinished.

    Deterministic exploration (``ExplorationType.DETERMINISTIC``/``MODE``) takes the
    argmax; otherwise actions are sampled from the policy's ``rng`` (see
    :mod:`tdimitation.rng`).

    Args:
        pi: ``[H, S, A]`` action probabilities.
        observation_matrix: ``[S, D]`` observation of each state, to map observations to
            states; None when observations are state indices or one-hot rows.

    Raises:
        TabularModelError: an observation matrix whose rows do not identify the states.
    """

    def __init__(self, pi: torch.Tensor, observation_matrix: torch.Tensor | None = None) -> None:
        super().__init__()
        if pi.ndim != 3:
            raise MCEIRLError(f"pi must have shape [H, S, A], got {tuple(pi.shape)}")
        self.register_buffer("pi", pi.detach().float())
        self.register_buffer("cum_pi", torch.cumsum(self.pi, dim=-1))
        self.register_buffer("greedy", self.pi.argmax(-1))
        obs = None
        if observation_matrix is not None:
            obs = torch.as_tensor(observation_matrix, dtype=torch.float32)
            if not torch.equal(obs, torch.eye(obs.shape[0], dtype=obs.dtype)):
                if torch.unique(obs, dim=0).shape[0] != obs.shape[0]:
                    raise TabularModelError(
                        "observations do not identify states (two states share one); a "
                        "tabular policy acts on states: build the env with expose_state=True"
                    )
            else:
                obs = None
        self.register_buffer("observation_matrix", obs)
        self.in_keys = ["observation"]
        self.out_keys = ["action"]
        self._t: torch.Tensor | None = None

    @property
    def horizon(self) -> int:
        return self.pi.shape[0]

    def reset(self) -> None:
        """Start every sub-env's step counter again at 0 (new episodes)."""
        self._t = None

    def states(self, observation: torch.Tensor) -> torch.Tensor:
        """State index of each observation of a batch."""
        if not observation.dtype.is_floating_point:
            return observation.reshape(-1).long()
        obs = observation.reshape(observation.shape[0], -1).float()
        if self.observation_matrix is None:
            return obs.argmax(-1)
        # The nearest row: exact for rows that identify states, robust to float32 casts.
        return torch.cdist(obs, self.observation_matrix).argmin(-1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        batch = obs.shape[0] if obs.ndim else 1
        step = tensordict.get("step_count", None)
        if step is not None:
            t = step.reshape(-1).long().to(self.pi.device)
        else:
            if self._t is None or self._t.shape[0] != batch:
                self._t = torch.zeros(batch, dtype=torch.long, device=self.pi.device)
            t = self._t
            self._t = (t + 1) % self.horizon
        t = t.clamp(max=self.horizon - 1)
        s = self.states(obs.to(self.pi.device))
        if exploration_type() in (ExplorationType.DETERMINISTIC, ExplorationType.MODE):
            action = self.greedy[t, s]
        else:
            u = uniform((batch, 1), self.rng, device=self.pi.device)
            cum = self.cum_pi[t, s]
            action = torch.searchsorted(cum, u).reshape(-1).clamp(max=cum.shape[-1] - 1)
        tensordict.set("action", action.reshape(obs.shape[:1]).to(obs.device))
        return tensordict


__all__ = [
    "TabularTensors",
    "SoftVIResult",
    "soft_value_iteration",
    "occupancy_measures",
    "states_from_observations",
    "TabularPolicy",
    "as_tensors",
]
