"""Kernel density estimates in torch, and the density reward net built on them.

:class:`KernelDensity` estimates a density from sample points with a Gaussian or an
exponential kernel. It is written for scoring speed: for a stationary model the squared
distances of a chunk of queries to every point are one matrix product (``|q|^2 + |p|^2 -
2 q.p``), and the log-sum-exp over the kernels runs on that chunk, so memory stays bounded
by ``chunk_elements`` whatever the batch. A non-stationary model keeps one point set per
time step (padded to a common size and masked) and scores each query against the set of its
own time step, still without a Python loop over queries or time steps.

:class:`DensityRewardNet` is a :class:`~tdimitation.rewards.RewardNet` whose reward is the
log-density of p(s), p(s, a) or p(s, s') fitted on demonstrations, so it works wherever a
reward net does (``RewardReplacement``, ``save_reward``/``load_reward``, relabelling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn

from tdimitation.errors import TrajectoryError
from tdimitation.rewards.base import (
    REWARD_INPUTS,
    MaybeTensor,
    RewardNet,
    register_reward_class,
)
from tdimitation.rewards.errors import RewardNetError

#: Kernels of :class:`KernelDensity`.
KERNELS = ("gaussian", "exponential")

#: What a density reward models: p(s), p(s, a) or p(s, s').
DENSITY_TYPES = ("state", "state_action", "state_state")

#: The reward-net inputs each density type reads.
_DENSITY_INPUTS = {
    "state": frozenset({"observation"}),
    "state_action": frozenset({"observation", "action"}),
    "state_state": frozenset({"observation", "next_observation"}),
}


def kernel_log_normaliser(kernel: str, dim: int, bandwidth: float) -> float:
    """Log of the constant that makes one kernel integrate to 1 over ``R^dim``.

    Gaussian: ``(2 pi h^2)^(-d/2)``. Exponential ``exp(-|u| / h)``: its integral is
    ``h^d * Gamma(d) * |S^(d-1)|`` with ``|S^(d-1)| = 2 pi^(d/2) / Gamma(d/2)`` the area of
    the unit sphere (integrate ``r^(d-1) exp(-r/h)`` over the radius).
    """
    if kernel == "gaussian":
        return -0.5 * dim * math.log(2.0 * math.pi) - dim * math.log(bandwidth)
    sphere = math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
    return -(sphere + math.lgamma(dim) + dim * math.log(bandwidth))


class KernelDensity(nn.Module):
    """A kernel density estimate, stationary or with one model per time step.

    ``log_density(x) = log(1/n sum_i K_h(x - x_i))`` over the fitted points ``x_i`` (those
    of ``x``'s time step for a non-stationary model), with ``K_h`` a Gaussian or an
    exponential kernel of bandwidth ``h`` normalised over ``R^d``. With ``standardise`` the
    points and queries are first shifted and scaled per dimension by the fitted points'
    mean and standard deviation (dimensions that never vary are only shifted); the density is
    then that of the standardised input, which differs from the raw input's by a constant.

    Fitted points are buffers, so the model saves and loads with ``state_dict`` (loading
    resizes them to the saved model's).

    Args:
        kernel: ``"gaussian"`` or ``"exponential"``.
        bandwidth: kernel width ``h`` (in standardised units with ``standardise``).
        standardise: standardise inputs per dimension over the fitted points.
        chunk_elements: at most this many query-point pairs are scored at once (memory).
    """

    #: Its forward ignores training mode (see :func:`~tdimitation.rewards.evaluating`).
    mode_free = True

    def __init__(
        self,
        kernel: str = "gaussian",
        bandwidth: float = 0.5,
        standardise: bool = True,
        chunk_elements: int = 1 << 17,
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise RewardNetError(f"unknown kernel {kernel!r}; choose one of {list(KERNELS)}")
        if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
            raise RewardNetError(f"bandwidth must be a positive number, got {bandwidth!r}")
        if int(chunk_elements) < 1:
            raise RewardNetError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.kernel, self.bandwidth = kernel, float(bandwidth)
        self.standardise, self.chunk_elements = bool(standardise), int(chunk_elements)
        # points[t, i] is the i-th point of time step t (one step when stationary), in
        # standardised units divided by the bandwidth; counts[t] of them are real.
        self.register_buffer("points", torch.zeros(0, 0, 0))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("scale", torch.zeros(0))
        self.register_buffer("stationary", torch.tensor(True))

    # ----------------------------------------------------------------- fitting
    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or loading a fitted model) has given it points."""
        return self.points.numel() > 0

    @property
    def dim(self) -> int:
        """Dimension of the modelled inputs (0 before fitting)."""
        return int(self.mean.numel())

    @property
    def num_models(self) -> int:
        """Number of time steps modelled (1 when stationary)."""
        return int(self.counts.numel())

    @torch.no_grad()
    def fit(self, x: torch.Tensor, time: torch.Tensor | None = None) -> KernelDensity:
        """Fit on points ``x`` ``[N, D]``; with ``time`` ``[N]``, one model per time step.

        Time steps must be ``0 .. T-1`` and each must hold at least one point.
        """
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise TrajectoryError(
                f"a density needs points [N, D] with N, D >= 1, got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise TrajectoryError("the points of a density hold NaN or infinite values")
        x = x.to(self.points.dtype if self.points.is_floating_point() else torch.float32)
        if self.standardise:
            mean = x.mean(0)
            std = x.std(0, unbiased=False)
            # A dimension that never varies is only centred: its kernels are then exact in it.
            scale = torch.where(std > 0, std, torch.ones_like(std))
        else:
            mean, scale = (
                torch.zeros(x.shape[1], dtype=x.dtype),
                torch.ones(x.shape[1], dtype=x.dtype),
            )
        z = (x - mean) / (scale * self.bandwidth)
        if time is None:
            points, counts = z.unsqueeze(0), torch.tensor([z.shape[0]])
        else:
            time = time.reshape(-1).long().cpu()
            if time.numel() != x.shape[0]:
                raise TrajectoryError(f"{time.numel()} time steps for {x.shape[0]} points")
            counts = torch.bincount(time.clamp_min(0))
            if bool((time < 0).any()) or bool((counts == 0).any()):
                raise TrajectoryError("time steps of a non-stationary density must cover 0 .. T-1")
            order = torch.argsort(time, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(x.shape[0]) - starts[time[order]]
            points = z.new_zeros(counts.numel(), int(counts.max()), z.shape[1])
            points[time[order], slot] = z[order.to(z.device)]
        self.points, self.counts = points, counts.to(self.counts.device)
        self.mean, self.scale = mean, scale
        self.stationary = torch.tensor(time is None)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A fitted model's buffers have data-dependent shapes: take the saved ones.
        for name in ("points", "counts", "mean", "scale", "stationary"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- scoring
    def _log_norm(self) -> float:
        return kernel_log_normaliser(self.kernel, self.dim, self.bandwidth)

    def _log_kernel(self, sq_dist: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-kernel of squared distances in bandwidth units (in place)."""
        if self.kernel == "gaussian":
            return sq_dist.mul_(-0.5)
        return sq_dist.sqrt_().neg_()

    @torch.no_grad()
    def log_density(self, x: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        """Log-densities ``[*B]`` of queries ``x`` ``[*B, D]`` (``time`` ``[*B]`` if per step).

        A non-stationary model scores a query with the model of its time step; steps past
        the last modelled one use the last model.
        """
        if not self.fitted:
            raise RewardNetError("the density is not fitted: call fit (or load a fitted model)")
        if x.shape[-1] != self.dim:
            raise RewardNetError(f"the density models {self.dim} features, got {x.shape[-1]}")
        batch = x.shape[:-1]
        z = (
            (x.reshape(-1, self.dim).to(self.points.dtype) - self.mean) / self.scale
        ) / self.bandwidth
        if bool(self.stationary):
            out = self._score_stationary(z)
        else:
            if time is None:
                raise RewardNetError(
                    "a non-stationary density scores each input with its time step's model: "
                    "pass the time steps (TensorDict key ('next', 'step_count'))"
                )
            t = time.reshape(-1).to(self.counts.device).long()
            if t.numel() != z.shape[0]:
                raise RewardNetError(f"{t.numel()} time steps for {z.shape[0]} inputs")
            if bool((t < 0).any()):
                raise RewardNetError("time steps must be >= 0")
            out = self._score_per_step(z, t.clamp_max(self.num_models - 1))
        return (out + self._log_norm()).reshape(batch)

    def _score_stationary(self, z: torch.Tensor) -> torch.Tensor:
        points = self.points[0]
        n = points.shape[0]
        p_sq = points.square().sum(1)
        rows = max(1, self.chunk_elements // n)
        out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
        gaussian = self.kernel == "gaussian"
        # Gaussian: -|q - p|^2 / 2 = q.p - |p|^2 / 2 - |q|^2 / 2, and the last term is
        # constant in p, so it leaves the log-sum-exp: one matrix product and one
        # log-sum-exp per chunk. The exponential kernel needs the distance itself.
        bias = (-0.5 * p_sq if gaussian else p_sq).unsqueeze(0)
        for start in range(0, z.shape[0], rows):
            q = z[start : start + rows]
            q_sq = q.square().sum(1)
            if gaussian:
                scores = torch.addmm(bias, q, points.T)
                out[start : start + rows] = _logsumexp_(scores) - 0.5 * q_sq
            else:
                sq = torch.addmm(bias, q, points.T, alpha=-2.0)
                sq.add_(q_sq.unsqueeze(1)).clamp_min_(0.0).sqrt_().neg_()
                out[start : start + rows] = _logsumexp_(sq)
        return out - math.log(n)

    def _score_per_step(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        width = self.points.shape[1]
        rows = max(1, self.chunk_elements // max(1, width * self.dim))
        slots = torch.arange(width, device=z.device)
        out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
        for start in range(0, z.shape[0], rows):
            steps = t[start : start + rows]
            # Exact differences (few points per step), masked beyond each step's count.
            sq = (z[start : start + rows].unsqueeze(1) - self.points[steps]).square_().sum(-1)
            counts = self.counts[steps]
            padding = slots.unsqueeze(0) >= counts.unsqueeze(1)
            log_k = self._log_kernel(sq).masked_fill_(padding, -math.inf)
            out[start : start + rows] = _logsumexp_(log_k, padding) - counts.to(z.dtype).log()
        return out

    def extra_repr(self) -> str:
        return (
            f"kernel={self.kernel}, bandwidth={self.bandwidth}, standardise={self.standardise}, "
            f"dim={self.dim}, models={self.num_models}"
        )


#: Terms this far below a row's largest one are raised to it before exponentiating: they
#: change the sum by under 1e-34 per term (far below float32 resolution), and exp() of
#: arguments that underflow float32 (below about -87) runs 10-30x slower on CPU.
_EXP_FLOOR = -80.0


def _logsumexp_(scores: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
    """Log-sum-exp over the last dimension of ``[M, N]`` scores; overwrites ``scores``.

    ``padding`` marks entries to leave out (they must hold -inf or anything).
    """
    top = scores.amax(1, keepdim=True)
    terms = scores.sub_(top).clamp_min_(_EXP_FLOOR).exp_()
    if padding is not None:
        terms.masked_fill_(padding, 0.0)
    return terms.sum(1).log_().add_(top.squeeze(1))


def time_steps(trajectories: TensorDictBase) -> torch.Tensor:
    """Time step ``[N]`` of each row of a trajectory set (its position in its episode)."""
    from tdimitation.data.trajectory import episode_runs

    starts, lengths = episode_runs(trajectories)
    rows = torch.arange(trajectories.shape[0])
    return rows - torch.repeat_interleave(starts, lengths)


@register_reward_class
class DensityRewardNet(RewardNet):
    """Reward = log-density of the transition under a KDE fitted on demonstrations.

    Call :meth:`fit` with demonstrations (a trajectory set, or for a stationary density any
    TensorDict of transitions), then use it as any reward net. Discrete actions (and
    discrete observations) are one-hot encoded before the density sees them.

    A non-stationary density (``stationary=False``) fits one model per time step, so it
    needs whole trajectories (an ``episode`` id per row) to know each transition's step;
    scoring reads it from ``time_key``, which counts the steps taken *including* the scored
    one (the envs' ``("next", "step_count")``: 1 for an episode's first transition).

    Args:
        observation_shape: shape of one observation.
        action_dim: number of discrete actions, or the width of continuous actions.
        discrete_actions: whether actions are int64 indices.
        density_type: ``"state"``, ``"state_action"`` or ``"state_state"``.
        kernel: ``"gaussian"`` or ``"exponential"``.
        bandwidth: kernel width (in standardised units with ``standardise``).
        standardise: standardise each input dimension over the demonstrations.
        stationary: one model for all time steps (False: one per time step).
        chunk_elements: query-point pairs scored at once (bounds memory).
        num_states: number of values of a ``Discrete`` observation space.
        time_key: TensorDict key of the step count after the transition (non-stationary
            densities; the model used is that of step ``count - 1``).
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        density_type: str = "state_action",
        kernel: str = "gaussian",
        bandwidth: float = 0.5,
        standardise: bool = True,
        stationary: bool = True,
        chunk_elements: int = 1 << 17,
        num_states: int | None = None,
        time_key: NestedKey = ("next", "step_count"),
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(
            observation_shape, action_dim, discrete_actions, num_states=num_states, out_key=out_key
        )
        if density_type not in DENSITY_TYPES:
            raise RewardNetError(
                f"unknown density_type {density_type!r}; choose one of {list(DENSITY_TYPES)}"
            )
        self.density_type, self.is_stationary = density_type, bool(stationary)
        self.time_key = unravel_key(time_key)
        self.kde = KernelDensity(kernel, bandwidth, standardise, chunk_elements)
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "density_type": density_type,
            "kernel": kernel,
            "bandwidth": float(bandwidth),
            "standardise": bool(standardise),
            "stationary": bool(stationary),
            "chunk_elements": int(chunk_elements),
            "num_states": self.num_states,
            "time_key": list(self.time_key) if isinstance(self.time_key, tuple) else self.time_key,
        }

    @classmethod
    def from_env(cls, env, **kwargs) -> DensityRewardNet:
        """A density reward net for ``env``'s spaces (keyword arguments as the constructor)."""
        from tdimitation.rewards.spaces import env_spaces

        return cls(**(env_spaces(env) | kwargs))

    @classmethod
    def _from_plain_config(cls, config: dict) -> DensityRewardNet:
        config = dict(config)
        key = config.pop("time_key", ["next", "step_count"])
        return cls(time_key=tuple(key) if isinstance(key, list) else key, **config)

    def used_inputs(self) -> frozenset[str]:
        return _DENSITY_INPUTS[self.density_type]

    def uses_training_mode(self) -> bool:
        return False

    # ------------------------------------------------------------- features
    def features(
        self, observation: MaybeTensor, action: MaybeTensor, next_observation: MaybeTensor
    ) -> torch.Tensor:
        """The modelled vector ``[*B, D]``: s, (s, a) or (s, s'), flattened and one-hot."""
        observation = self._require("observation", observation)
        batch = self._batch_shape(observation, action, next_observation, None)
        parts = [self._flat_observation(observation, batch)]
        if self.density_type == "state_action":
            parts.append(self._action_features(self._require("action", action), batch))
        elif self.density_type == "state_state":
            parts.append(
                self._flat_observation(self._require("next_observation", next_observation), batch)
            )
        return torch.cat([p.to(torch.get_default_dtype()) for p in parts], dim=-1)

    @torch.no_grad()
    def fit(self, demonstrations: TensorDictBase) -> DensityRewardNet:
        """Fit the density on demonstrations (see the class docs for what they need)."""
        keys = set(demonstrations.keys(include_nested=True, leaves_only=True))
        for name in sorted(self.used_inputs()):
            if self._keys[name] not in keys:
                what = {"next_observation": "next observations"}.get(name, name + "s")
                raise TrajectoryError(
                    f"a {self.density_type} density needs the demonstrations' {what} "
                    f"(key {self._keys[name]!r}) but they have none: pass transitions that "
                    "hold them or choose another density_type"
                )
        time = None
        if not self.is_stationary:
            if "episode" not in keys:
                raise TrajectoryError(
                    "a non-stationary density needs trajectories, not transitions: it fits one "
                    "model per time step and takes each transition's step from its position in "
                    "its episode (key 'episode'); pass a trajectory set or use stationary=True"
                )
            time = time_steps(demonstrations)
        args = [
            demonstrations.get(self._keys[n]) if n in self.used_inputs() else None
            for n in REWARD_INPUTS
        ]
        x = self.features(args[0], args[1], args[2])
        self.kde.fit(x.reshape(-1, x.shape[-1]), time)
        return self

    # ------------------------------------------------------------- scoring
    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        time: MaybeTensor = None,
    ) -> torch.Tensor:
        """Log-density ``[*B]`` of the transitions (``time``: their steps, non-stationary)."""
        x = self.features(observation, action, next_observation)
        if time is not None:
            time = time.reshape(x.shape[:-1])
        return self.kde.log_density(x, time)

    def predict_processed(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool = True,
        time: MaybeTensor = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.reward(observation, action, next_observation, done, time)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write the log-density ``[*B, 1]`` to the ``learned_reward`` key."""
        used = self.used_inputs()
        args = [tensordict.get(self._keys[n]) if n in used else None for n in REWARD_INPUTS]
        time = None
        if not self.is_stationary:
            # The key counts the steps taken including this one: the step index is one less.
            time = tensordict.get(self.time_key, None)
            time = None if time is None else time - 1
        reward = self.predict_processed(*args, time=time)
        tensordict.set(self._keys["learned_reward"], reward.unsqueeze(-1))
        return tensordict

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = super().in_keys
        return keys if self.is_stationary else [*keys, self.time_key]


__all__ = [
    "KERNELS",
    "DENSITY_TYPES",
    "KernelDensity",
    "DensityRewardNet",
    "kernel_log_normaliser",
    "time_steps",
]
