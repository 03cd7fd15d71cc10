"""Scripted expert policies for the classic-control and Box2D benchmark environments.

Each expert is a fixed control law written as a parameter-free tensordict module: it reads
``"observation"`` (``[*batch, obs_dim]`` float32) and writes ``"action"`` (int64 indices of
shape ``[*batch]`` for discrete spaces, float32 ``[*batch, act_dim]`` inside the action bounds
for continuous ones). They stand in for trained RL experts when generating demonstrations:
they are instant to build, deterministic and good enough to pass each environment's reward
threshold (see the docstring of each class for the measured returns).

The experts run once per vector-environment step, so each is a handful of batched torch ops.
At 2-8 µs per eager op on a CPU, a readable chain of per-column expressions costs 50-100 µs;
instead, every linear part of a control law is one matrix product with a constant matrix
(built once, symbolically, from named one-hot basis vectors so the law stays readable), the
nonlinear parts are a clamp with per-column bounds or an elementwise product, and discrete
decisions are an ``argmax`` over per-action scores. All constants are non-persistent
buffers, so ``.to(device)`` works and ``state_dict()`` stays empty.

Use :func:`make_scripted_policy` to build one by name and :func:`scripted_policy_for_env` to
find the name for an environment id.
"""

from __future__ import annotations

import abc
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from tdimitation.errors import PolicyError, SpaceMismatchError

__all__ = [
    "ScriptedPolicy",
    "CartPoleExpert",
    "LunarLanderExpert",
    "MountainCarExpert",
    "MountainCarContinuousExpert",
    "PendulumExpert",
    "SCRIPTED_POLICIES",
    "make_scripted_policy",
    "scripted_policy_for_env",
]

_INF = math.inf


def _basis(names: Sequence[str]) -> dict[str, Tensor]:
    """One-hot float64 vectors, one per name, to write linear maps as named sums."""
    eye = torch.eye(len(names), dtype=torch.float64)
    return {name: eye[i] for i, name in enumerate(names)}


def _columns(*columns: Tensor) -> Tensor:
    """Stack coefficient vectors as the columns of a float32 matrix ``x @ M``."""
    return torch.stack(columns, dim=1).to(torch.float32)


def _vector(values: Sequence[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


class ScriptedPolicy(TensorDictModuleBase, metaclass=abc.ABCMeta):
    """A fixed, parameter-free control law as a tensordict module.

    Reads ``"observation"`` and writes ``"action"``. Subclasses set :attr:`observation_dim`,
    store constant tensors with :meth:`_register_constants` (read them from ``self.const``)
    and implement :meth:`act` on a 2-D batch of observations; :meth:`forward` also accepts a
    single observation (batch size ``[]``) and any number of leading batch dimensions, and
    casts observations to the constants' dtype (float32 unless the module was converted).

    Attributes:
        observation_dim: Size of the last observation dimension the law expects.
    """

    observation_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.in_keys = ["observation"]
        self.out_keys = ["action"]
        self.const = types.SimpleNamespace()
        self._compute_dtype = torch.float32

    def _register_constants(self, **constants: Tensor) -> None:
        """Store the law's constant tensors as non-persistent buffers, also in ``self.const``."""
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)
        self._refresh_constants()

    def _refresh_constants(self) -> None:
        # Reading a buffer through nn.Module.__getattr__ costs ~1 µs, as much as a small op;
        # a plain namespace of the same tensors reads in nanoseconds.
        self.const = types.SimpleNamespace(**self._buffers)
        floating = (b.dtype for b in self._buffers.values() if b.is_floating_point())
        self._compute_dtype = next(floating, self._compute_dtype)  # observations are cast to it

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> ScriptedPolicy:
        # .to(), .cuda(), .double() replace the buffer tensors: point the namespace at the new ones.
        module = super()._apply(fn, recurse)
        self._refresh_constants()
        return module

    @abc.abstractmethod
    def act(self, observation: Tensor) -> Tensor:
        """Actions for a batch of observations.

        Args:
            observation: float32 tensor of shape ``[B, observation_dim]``.

        Returns:
            int64 ``[B]`` action indices (discrete) or float32 ``[B, act_dim]`` actions within
            the action bounds (continuous).
        """

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get("observation")
        if observation.shape[-1] != self.observation_dim:
            raise SpaceMismatchError(
                f"{type(self).__name__} expects observations of size {self.observation_dim}, "
                f"got shape {tuple(observation.shape)}; is it the policy for this environment?"
            )
        if observation.dtype != self._compute_dtype:
            observation = observation.to(self._compute_dtype)
        if observation.dim() == 2:  # the common case: one row per sub-environment
            action = self.act(observation)
        else:
            batch_shape = observation.shape[:-1]
            action = self.act(observation.reshape(-1, self.observation_dim))
            action = action.reshape(batch_shape + action.shape[1:])
        tensordict.set("action", action)
        return tensordict


class CartPoleExpert(ScriptedPolicy):
    """Pole-angle PD rule for CartPole: push right (1) iff ``θ + 0.5·θ̇ > 0``.

    Observation ``[x, ẋ, θ, θ̇]``, actions 0 (push left) and 1 (push right). Moving the cart
    under the pole, with the angular velocity as look-ahead, keeps the pole up indefinitely:
    it scores the maximum 500 on every CartPole-v1 episode (200 on CartPole-v0).
    """

    observation_dim = 4

    def __init__(self) -> None:
        super().__init__()
        obs = _basis(["x", "x_dot", "theta", "theta_dot"])
        # argmax over [score(left) = 0, score(right) = θ + 0.5·θ̇]; a tie goes to the left.
        self._register_constants(
            scores=_columns(0 * obs["x"], obs["theta"] + 0.5 * obs["theta_dot"])
        )

    def act(self, observation: Tensor) -> Tensor:
        return (observation @ self.const.scores).argmax(-1)


class LunarLanderExpert(ScriptedPolicy):
    """Gymnasium's heuristic lander controller (LunarLander-v3), discrete or continuous.

    Observation ``[x, y, vx, vy, angle, angular_velocity, left_leg, right_leg]``. Two PD
    loops: the body should tilt towards the pad, ``angle_target = clip(0.5·x + vx, ±0.4)``,
    giving ``angle_todo = 0.5·(angle_target - angle) - angular_velocity``; and the lander
    should descend along ``hover_target = 0.55·|x|``, giving
    ``hover_todo = 0.5·(hover_target - y) - 0.5·vy``. Once a leg touches the ground it only
    brakes the fall: ``angle_todo = 0`` and ``hover_todo = -0.5·vy``.

    Continuous: ``action = clip([20·hover_todo - 1, -20·angle_todo], -1, 1)`` (main engine
    fires above 0, side engines beyond ±0.5). Discrete: main engine (2) if
    ``hover_todo > |angle_todo|`` and ``hover_todo > 0.05``, otherwise fire right (3) if
    ``angle_todo < -0.05``, left (1) if ``angle_todo > 0.05``, else nothing (0). This is the
    same law as ``gymnasium.envs.box2d.lunar_lander.heuristic``, vectorised.

    Measured on LunarLander-v3: discrete, mean return ≈ 235 over 960 episodes, but about 5%
    of episodes crash or drift off (return below 0), so one mean over 20 episodes falls below
    200 about one time in ten; continuous, ≈ 282 over 480 episodes, crashes under 1%.

    Args:
        continuous: Emit ``[main, lateral]`` float32 actions (``continuous=True`` env) instead
            of int64 indices.
    """

    observation_dim = 8

    # Far above any flight term on the observation box (|angular_velocity| <= 10, ...).
    _CONTACT_PENALTY = 1e4

    def __init__(self, continuous: bool = False) -> None:
        super().__init__()
        self.continuous = continuous
        obs = _basis(["x", "y", "vx", "vy", "angle", "angular_velocity", "left", "right"])
        # hover_todo = 0.5·(0.55·|x| - y) + brake, angle_todo = 0.5·angle_target + angle_pd;
        # touching down zeroes every term except brake = -0.5·vy. Each such flight term f
        # enters as the pair clamp(±f - M·legs, 0, limit) (f = pair[0] - pair[1], |x| = the
        # sum): with no leg down that is f exactly; with a leg down both parts are cut to 0.
        # One matmul and one clamp with per-column bounds give every feature.
        legs = self._CONTACT_PENALTY * (obs["left"] + obs["right"])
        features: dict[str, tuple[Tensor, float, float]] = {}

        def add_flight_term(name: str, term: Tensor, limit: float = _INF) -> None:
            features[name + "+"] = (term - legs, 0.0, limit)
            features[name + "-"] = (-term - legs, 0.0, limit)

        add_flight_term("angle_target", 0.5 * obs["x"] + obs["vx"], limit=0.4)
        add_flight_term("angle_pd", -0.5 * obs["angle"] - obs["angular_velocity"])
        add_flight_term("half_hover_target", 0.275 * obs["x"])  # 0.5·0.55·x
        add_flight_term("altitude", -0.5 * obs["y"])
        features["brake"] = (-0.5 * obs["vy"], -_INF, _INF)

        f = _basis(list(features))

        def signed(name: str) -> Tensor:
            return f[name + "+"] - f[name + "-"]

        angle_todo = 0.5 * signed("angle_target") + signed("angle_pd")
        hover_todo = (
            f["half_hover_target+"] + f["half_hover_target-"] + signed("altitude") + f["brake"]
        )
        if continuous:
            # [main, lateral] = [20·hover - 1, -20·angle], clipped to [-1, 1] in act().
            output_map = _columns(20 * hover_todo, -20 * angle_todo)
            offset = _vector([-1.0, 0.0])
        else:
            # argmax over scores of [noop, left, main, right] = [0.05, angle, hover, -angle]
            # reproduces the if/elif chain: hover wins iff it beats |angle| and 0.05, else
            # a side engine iff |angle| > 0.05 (ties, measure zero, go to the lower index).
            output_map = _columns(0 * angle_todo, angle_todo, hover_todo, -angle_todo)
            offset = _vector([0.05, 0.0, 0.0, 0.0])
        self._register_constants(
            feature_map=_columns(*(term for term, _, _ in features.values())),
            feature_low=_vector([low for _, low, _ in features.values()]),
            feature_high=_vector([high for _, _, high in features.values()]),
            output_map=output_map,
            offset=offset,
        )

    def act(self, observation: Tensor) -> Tensor:
        c = self.const
        # In-place ops on fresh temporaries save an allocation each.
        features = (observation @ c.feature_map).clamp_(c.feature_low, c.feature_high)
        out = torch.addmm(c.offset, features, c.output_map)
        if self.continuous:
            return out.clamp_(-1.0, 1.0)
        return out.argmax(-1)


# At rest (only at reset, or after hitting the left wall) the velocity gives no direction.
# Sweeping starts over the reset interval [-0.6, -0.4]: pushing right first is quicker for
# x < -0.487, left first for larger x, and left first from x ≈ -0.489 takes over 200 steps
# in the discrete env, hence the split a little to the right of the break-even point.
_MOUNTAIN_CAR_REST_SPLIT = -0.485


def _mountain_car_direction_maps(rest_split: float) -> tuple[Tensor, Tensor, float]:
    """``d = sign(obs) @ sign_map + obs @ linear_map + bias``: push right iff ``d > 0``.

    ``d = 2·sign(v) + (rest_split - x)``: since ``|rest_split - x| < 2`` on the track
    ``[-1.2, 0.6]``, the sign of the velocity decides whenever it is non-zero and the position
    rule only at rest.
    """
    obs = _basis(["position", "velocity"])
    return (
        _columns(2.0 * obs["velocity"]),
        _columns(-obs["position"]),
        rest_split,
    )


class MountainCarExpert(ScriptedPolicy):
    """Bang-bang energy pumping for MountainCar-v0: accelerate along the velocity.

    Observation ``[position, velocity]``, actions 0 (push left), 1 (none), 2 (push right).
    Pushing in the direction of motion adds energy on every swing; at rest (reset, or against
    the left wall) it pushes right iff ``position < -0.485``. Reaches the goal from every start
    in the reset interval ``[-0.6, -0.4]`` within 125 steps: mean return ≈ -107 (480
    episodes), well above the -200 of a failed episode.
    """

    observation_dim = 2

    def __init__(self) -> None:
        super().__init__()
        sign_map, linear_map, bias = _mountain_car_direction_maps(_MOUNTAIN_CAR_REST_SPLIT)
        # Scores of [left, none, right] = [-d, -inf, d]: argmax is 2 iff d > 0, else 0.
        self._register_constants(
            score_sign_map=torch.cat([-sign_map, 0 * sign_map, sign_map], 1),
            score_linear_map=torch.cat([-linear_map, 0 * linear_map, linear_map], 1),
            score_bias=_vector([-bias, -_INF, bias]),
        )

    def act(self, observation: Tensor) -> Tensor:
        c = self.const
        scores = torch.addmm(c.score_bias, observation, c.score_linear_map)
        return torch.addmm(scores, observation.sign(), c.score_sign_map).argmax(-1)


class MountainCarContinuousExpert(ScriptedPolicy):
    """Energy pumping at a fixed throttle for MountainCarContinuous-v0.

    Observation ``[position, velocity]``, action ``[force]`` in ``[-1, 1]``; the reward is
    100 at the goal minus ``0.1·force²`` per step. The law is :class:`MountainCarExpert`'s
    (push along the velocity; at rest, right iff ``position < -0.485``) at ``±throttle``.
    Energy gained per swing scales with the throttle, so the episode lasts about
    ``1/throttle`` times longer and the summed force cost shrinks like ``throttle``. Below
    about 0.2 the car never arrives: the left wall stops the swing below the goal's height, so
    the engine must make up the difference on the last run. At the default 0.4 it reaches the
    goal from every start within 205 steps: mean return ≈ 97 over 480 episodes (≈ 90 at full
    throttle, ≈ 98.3 at 0.25).

    Args:
        throttle: Magnitude of the force, in ``(0, 1]``.
    """

    observation_dim = 2

    def __init__(self, throttle: float = 0.4) -> None:
        super().__init__()
        if not 0.0 < throttle <= 1.0:
            raise PolicyError(f"throttle must be in (0, 1], got {throttle}")
        sign_map, linear_map, bias = _mountain_car_direction_maps(_MOUNTAIN_CAR_REST_SPLIT)
        self.throttle = throttle
        self._register_constants(
            direction_sign_map=sign_map,
            direction_linear_map=linear_map,
            direction_bias=_vector([bias]),
            force=_vector([throttle]),
        )

    def act(self, observation: Tensor) -> Tensor:
        c = self.const
        direction = torch.addmm(c.direction_bias, observation, c.direction_linear_map)
        direction = torch.addmm(direction, observation.sign(), c.direction_sign_map)
        return torch.copysign(c.force, direction)


class PendulumExpert(ScriptedPolicy):
    """Energy-pumping swing-up blended into a saturated LQR balance, for Pendulum-v1.

    Observation ``[cos θ, sin θ, θ̇]`` with θ = 0 upright; torque ``u`` in ``[-2, 2]``. The
    dynamics are ``θ̈ = 15·sin θ + 3·u``, so ``E = θ̇²/2 + 15·(cos θ - 1)`` changes as
    ``dE/dt = 3·u·θ̇`` and is 0 at rest upright. The torque is one smooth, memoryless law::

        u = clip(θ̇·(0 - E) + cos⁴(θ/2)·(-19.7·sin θ - 5.26·θ̇) + sin²(θ/2), -2, 2)

    The first term pumps energy towards the upright level (pushing along θ̇ while low,
    braking while high) and vanishes on the orbit that ends upright. The second is the
    discrete-time LQR gain for the linearisation at the top (dt = 0.05, cost
    ``θ² + 0.1·θ̇² + 0.001·u²``), with sin θ for θ, faded in by ``cos⁴(θ/2) = ((1 + cos θ)/2)²``
    (1 upright, 0 hanging) so it takes over near the top without a switch. The last, a push
    of 1 at the bottom fading to 0 at the top, starts the swing from hanging exactly at rest,
    where the other two terms vanish.

    Measured on Pendulum-v1 (random starts): mean return -150.6 over 1040 episodes; means of
    104 episodes from 10 disjoint seed ranges lie between -138 and -165 (an SB3 SAC expert
    scores about -150 to -190). Starting from hanging at rest it scores about -380.
    """

    observation_dim = 3

    # LQR gain of θ_{t+1} = θ + dt·θ̇_{t+1}, θ̇_{t+1} = θ̇ + dt·(15·θ + 3·u) for the cost above
    # (scipy.linalg.solve_discrete_are); the torque saturates a little away from upright.
    LQR_GAIN = (19.69, 5.26)
    ENERGY_GAIN = 1.0
    ENERGY_TARGET = 0.0
    BOTTOM_PUSH = 1.0

    def __init__(self) -> None:
        super().__init__()
        k_angle, k_speed = self.LQR_GAIN
        # u is a cubic polynomial of the observation: cos θ·C + sin θ·S + θ̇·V, where the
        # factors C, S, V are linear in [cos θ, sin θ, θ̇, cos² θ, sin² θ, θ̇², 1]. One matmul
        # per group of terms gives the factors, a dot product with the observation the torque.
        v = _basis(["cos", "sin", "speed", "cos2", "sin2", "speed2", "one"])
        fade = 0.25 * v["one"] + 0.5 * v["cos"] + 0.25 * v["cos2"]  # ((1 + cos θ)/2)²
        energy = 0.5 * v["speed2"] + 15.0 * (v["cos"] - v["one"])
        energy_gap = self.ENERGY_TARGET * v["one"] - energy
        # sin²(θ/2) = (1 - cos θ)/2 = cos θ·(cos θ - 1)/2 + sin θ·sin θ/2 on the unit circle.
        half_push = 0.5 * self.BOTTOM_PUSH
        cos_factor = half_push * (v["cos"] - v["one"])
        sin_factor = -k_angle * fade + half_push * v["sin"]
        speed_factor = self.ENERGY_GAIN * energy_gap - k_speed * fade
        factors = _columns(cos_factor, sin_factor, speed_factor)  # multiply [cos, sin, speed]
        self._register_constants(linear_map=factors[0:3], square_map=factors[3:6], bias=factors[6])

    def act(self, observation: Tensor) -> Tensor:
        c = self.const
        factors = torch.addmm(c.bias, observation, c.linear_map)
        factors.addmm_(observation * observation, c.square_map)  # in place: fresh temporary
        torque = (observation * factors).sum(-1, keepdim=True)
        return torque.clamp_(-2.0, 2.0)


SCRIPTED_POLICIES: dict[str, Callable[[], ScriptedPolicy]] = {
    "cartpole": CartPoleExpert,
    "lunarlander": lambda: LunarLanderExpert(continuous=False),
    "lunarlander-continuous": lambda: LunarLanderExpert(continuous=True),
    "mountaincar": MountainCarExpert,
    "mountaincar-continuous": MountainCarContinuousExpert,
    "pendulum": PendulumExpert,
}


def make_scripted_policy(name: str) -> ScriptedPolicy:
    """Build the scripted expert registered as ``name`` in :data:`SCRIPTED_POLICIES`.

    Raises:
        PolicyError: ``name`` is not registered; the message lists the known names.
    """
    try:
        factory = SCRIPTED_POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(SCRIPTED_POLICIES))
        raise PolicyError(f"unknown scripted policy {name!r}; known: {known}") from None
    return factory()


# Gymnasium ids the experts were written for.
_GYMNASIUM_IDS = {
    "CartPole-v0": "cartpole",
    "CartPole-v1": "cartpole",
    "LunarLander-v2": "lunarlander",
    "LunarLander-v3": "lunarlander",
    "LunarLanderContinuous-v2": "lunarlander-continuous",
    "LunarLanderContinuous-v3": "lunarlander-continuous",
    "MountainCar-v0": "mountaincar",
    "MountainCarContinuous-v0": "mountaincar-continuous",
    "Pendulum-v1": "pendulum",
}
# Name prefixes of our own ids (``tdimitation/CartPoleFixed-v1``), longest first so that
# "MountainCarContinuous" is not taken for "MountainCar".
_TDIMITATION_PREFIXES = (
    ("LunarLanderContinuous", "lunarlander-continuous"),
    ("LunarLander", "lunarlander"),
    ("MountainCarContinuous", "mountaincar-continuous"),
    ("MountainCar", "mountaincar"),
    ("CartPole", "cartpole"),
    ("Pendulum", "pendulum"),
)
_TDIMITATION_NAMESPACE = "tdimitation/"


def scripted_policy_for_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> str | None:
    """Name of the scripted expert for an environment id, or ``None`` if there is none.

    Knows the gymnasium ids listed in the module (``CartPole-v1``, ``LunarLander-v3``, ...)
    and every ``tdimitation/<Name>...`` id whose name starts with one of their base names
    (``tdimitation/CartPoleFixed-v1``).

    Args:
        env_id: A gymnasium registry id.
        env_kwargs: Keyword arguments the environment is made with; LunarLander's
            ``continuous`` flag selects the discrete or continuous expert.
    """
    name = _GYMNASIUM_IDS.get(env_id)
    if name is None and env_id.startswith(_TDIMITATION_NAMESPACE):
        base = env_id[len(_TDIMITATION_NAMESPACE) :]
        name = next((n for prefix, n in _TDIMITATION_PREFIXES if base.startswith(prefix)), None)
    if name is not None and name.startswith("lunarlander") and env_kwargs is not None:
        if "continuous" in env_kwargs:
            name = "lunarlander-continuous" if env_kwargs["continuous"] else "lunarlander"
    return name
