"""MLP actors: TensorDict policies with sampling, log-probabilities and a file format.

The categorical and Gaussian actors (PPO's) also take image observations: with
``image_shape`` set, an :class:`~tdimitation.nn.ImageEncoder` (Nature-CNN by default)
turns each image into features before the MLP.

The actors are plain modules rather than torchrl ``ProbabilisticActor``s because one
``ProbabilisticActor`` call costs ~120 µs against ~30 µs for the same work written out
(measured on a CPU at batch 8). They still expose ``get_dist`` and
``log_prob(observation, action)`` for losses. Every actor can carry a
:class:`~tdimitation.nn.RunningNorm` of its observations (``normalize_observations=True``),
so a saved policy normalises its inputs the way it was trained; the training algorithm
updates the statistics, never ``forward``.

Each actor keeps its constructor arguments in ``config`` (primitives only), which
:func:`~tdimitation.policies.save_policy` stores beside the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torch.distributions import Categorical, Independent, Normal
from torchrl.data import Bounded, MultiCategorical
from torchrl.data import Categorical as CategoricalSpec
from torchrl.envs.utils import ExplorationType, exploration_type

from tdimitation.errors import SpaceMismatchError
from tdimitation.nn import ACTIVATIONS, ImageEncoder, RunningNorm, build_mlp, mlp_forward
from tdimitation.rng import Stochastic, exponential, normal, randint, uniform

_LOG_2PI = math.log(2 * math.pi)


def is_deterministic() -> bool:
    """Whether torchrl's exploration type asks for deterministic actions."""
    return exploration_type() in (ExplorationType.DETERMINISTIC, ExplorationType.MODE)


class MLPActor(TensorDictModuleBase, Stochastic):
    """Base of the MLP actors: observation normalisation, image encoding, saved ``config``.

    Sampling draws from ``rng`` when a training run attached its generator
    (:func:`tdimitation.rng.attach_rng`), else from torch's global RNG.

    Args:
        obs_dim: observation width (for images, the number of pixel values).
        hidden_sizes: hidden layer widths.
        activation: activation name.
        normalize_observations: keep a :class:`RunningNorm` of the observations.
        image_shape: shape of image observations (``(C, H, W)`` or ``(H, W, C)``), which
            then go through an :class:`~tdimitation.nn.ImageEncoder`; None for vectors.
        cnn: the encoder's options (:class:`~tdimitation.nn.ImageEncoder` arguments other
            than ``image_shape``); only with ``image_shape``.
        **specific: the subclass's other constructor arguments (primitives).
    """

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        normalize_observations: bool,
        image_shape: Sequence[int] | None = None,
        cnn: dict | None = None,
        **specific,
    ) -> None:
        super().__init__()
        # Constructor arguments, stored in saved policy files (cls(**config) rebuilds).
        self.config = {
            "obs_dim": int(obs_dim),
            **specific,
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "normalize_observations": bool(normalize_observations),
        }
        #: Image encoder (None for vector observations); the MLP reads its features.
        self.encoder: ImageEncoder | None = None
        self.input_width = int(obs_dim)
        if image_shape is not None:
            if normalize_observations:
                raise SpaceMismatchError(
                    "normalize_observations is for vector observations; images are scaled "
                    "to [0, 1] by the image encoder: set normalize_observations=False"
                )
            if int(math.prod(image_shape)) != int(obs_dim):
                raise SpaceMismatchError(
                    f"obs_dim ({obs_dim}) must be the number of values of image_shape "
                    f"{tuple(image_shape)} ({math.prod(image_shape)})"
                )
            self.encoder = ImageEncoder(image_shape, **dict(cnn or {}))
            # The encoder's resolved options, so a saved policy rebuilds the same network.
            options = {k: v for k, v in self.encoder.config.items() if k != "image_shape"}
            self.config |= {"image_shape": list(self.encoder.image_shape), "cnn": options}
            self.input_width = self.encoder.out_features
        elif cnn is not None:
            raise SpaceMismatchError(
                "cnn options were given for vector observations: they apply only with "
                "image_shape (image observations)"
            )
        self.obs_norm = RunningNorm(obs_dim, clip=10.0) if normalize_observations else None
        self.in_keys = ["observation"]

    def features(self, observation: torch.Tensor) -> torch.Tensor:
        """The MLP's input: image features, or the observation (normalised when asked)."""
        if self.encoder is not None:
            return self.encoder(observation)
        return observation if self.obs_norm is None else self.obs_norm(observation)


class CategoricalActor(MLPActor):
    """MLP policy over discrete actions.

    Writes ``action`` (int64 index; argmax when deterministic) and ``action_log_prob``.
    Sampling uses the Gumbel-max trick, which is exact and skips building a
    ``torch.distributions`` object per step.

    Args:
        obs_dim: observation width.
        n_actions: number of discrete actions.
        hidden_sizes: hidden layer widths.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
        normalize_observations: normalise observations with running statistics.
        image_shape: shape of image observations (see :class:`MLPActor`), or None.
        cnn: the image encoder's options, or None for its defaults.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        normalize_observations: bool = False,
        image_shape: Sequence[int] | None = None,
        cnn: dict | None = None,
    ) -> None:
        super().__init__(
            obs_dim,
            hidden_sizes,
            activation,
            normalize_observations,
            image_shape,
            cnn,
            n_actions=int(n_actions),
        )
        self.net = build_mlp(
            self.input_width, n_actions, hidden_sizes, activation, output_gain=0.01
        )
        self.out_keys = ["action", "action_log_prob"]
        self._noise_cache: torch.Tensor | None = None
        self._noise_pos = 0

    def logits(self, observation: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.net, self.features(observation))

    def get_dist(self, tensordict: TensorDictBase) -> Categorical:
        return Categorical(logits=self.logits(tensordict.get("observation")))

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of ``action`` (int64 indices) in ``observation``."""
        log_p = torch.log_softmax(self.logits(observation), -1)
        return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def evaluate_actions(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``action`` and the policy's entropy, in one forward pass."""
        log_p = torch.log_softmax(self.logits(observation), -1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy

    def sampling_state(self) -> dict:
        return {"cache": self._noise_cache, "pos": self._noise_pos}

    def set_sampling_state(self, state: dict) -> None:
        self._noise_cache, self._noise_pos = state.get("cache"), state.get("pos", 0)

    def _gumbel_noise(self, like: torch.Tensor) -> torch.Tensor:
        # log(E), E ~ Exp(1), drawn in blocks of calls: one indexing op per step instead of
        # three random ops (collection calls the policy once per vector step).
        cache = self._noise_cache
        if cache is None or cache.shape[1:] != like.shape or self._noise_pos >= cache.shape[0]:
            shape = (256,) + tuple(like.shape)
            self._noise_cache = exponential(shape, self.rng, like.device, like.dtype).log_()
            self._noise_pos = 0
        noise = self._noise_cache[self._noise_pos]
        self._noise_pos += 1
        return noise

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        log_p = torch.log_softmax(self.logits(tensordict.get("observation")), -1)
        if is_deterministic():
            action = log_p.argmax(-1)
        else:
            # Gumbel-max: argmax(log p - log E), E ~ Exp(1), samples from softmax(logits).
            action = (log_p - self._gumbel_noise(log_p)).argmax(-1)
        tensordict.set("action", action)
        tensordict.set("action_log_prob", log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1))
        return tensordict


class GaussianActor(MLPActor):
    """MLP policy over continuous actions: a diagonal Gaussian, clipped to the bounds.

    Writes ``action`` (the mean when deterministic; clipped to the bounds when given) and
    ``action_log_prob``. With bounds it also writes ``action_sample``, the unclipped
    sample the log-probability belongs to: PPO must re-evaluate that sample, not the
    clipped action (as Stable-Baselines3 stores unclipped actions in its rollout buffer).
    The log standard deviation is a learned state-independent vector, as in SB3's PPO.

    Args:
        obs_dim: observation width.
        action_dim: action width.
        low: lower action bounds (clipping), or None.
        high: upper action bounds, or None.
        hidden_sizes: hidden layer widths.
        activation: activation name.
        log_std_init: initial log standard deviation.
        normalize_observations: normalise observations with running statistics.
        image_shape: shape of image observations (see :class:`MLPActor`), or None.
        cnn: the image encoder's options, or None for its defaults.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        normalize_observations: bool = False,
        image_shape: Sequence[int] | None = None,
        cnn: dict | None = None,
    ) -> None:
        super().__init__(
            obs_dim,
            hidden_sizes,
            activation,
            normalize_observations,
            image_shape,
            cnn,
            action_dim=int(action_dim),
            low=None if low is None else [float(x) for x in low],
            high=None if high is None else [float(x) for x in high],
            log_std_init=float(log_std_init),
        )
        self.net = build_mlp(
            self.input_width, action_dim, hidden_sizes, activation, output_gain=0.01
        )
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        bounds = low is not None and high is not None
        self.register_buffer("low", torch.tensor(low, dtype=torch.float32) if bounds else None)
        self.register_buffer("high", torch.tensor(high, dtype=torch.float32) if bounds else None)
        self.out_keys = ["action", "action_log_prob"] + (["action_sample"] if bounds else [])

    def loc(self, observation: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.net, self.features(observation))

    def get_dist(self, tensordict: TensorDictBase) -> Independent:
        loc = self.loc(tensordict.get("observation"))
        return Independent(Normal(loc, self.log_std.exp().expand_as(loc)), 1)

    def _log_prob_at(self, loc: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        var = (2 * self.log_std).exp()
        return (
            -0.5 * ((action - loc) ** 2 / var).sum(-1)
            - self.log_std.sum()
            - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        )

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self._log_prob_at(self.loc(observation), action)

    def evaluate_actions(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``action`` and the policy's entropy, in one forward pass."""
        log_prob = self._log_prob_at(self.loc(observation), action)
        entropy = self.log_std.sum() + 0.5 * self.log_std.numel() * (1 + math.log(2 * math.pi))
        return log_prob, entropy.expand_as(log_prob)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        loc = self.loc(tensordict.get("observation"))
        if is_deterministic():
            sample = loc
        else:
            noise = normal(loc.shape, self.rng, loc.device, loc.dtype)
            sample = loc + noise * self.log_std.exp()
        log_prob = self._log_prob_at(loc, sample)
        if self.low is None:
            tensordict.set("action", sample)
        else:
            tensordict.set("action", torch.clamp(sample, self.low, self.high))
            tensordict.set("action_sample", sample)
        tensordict.set("action_log_prob", log_prob)
        return tensordict


class TanhNormalActor(MLPActor):
    """Squashed Gaussian policy (SAC): ``a = tanh(u)``, ``u ~ N(mu(s), sigma(s))``.

    The tanh output is scaled to the action bounds. Layout follows Stable-Baselines3's SAC
    actor (a trunk of hidden layers each followed by the activation, then ``mu`` and
    ``log_std`` heads; ``log_std`` clamped to [-20, 2]), so its weights map one to one.
    Writes ``action`` (``tanh(mu)`` scaled when deterministic) and ``action_log_prob``
    (with the change-of-variables correction). ``sample(observation)`` returns a
    reparameterised action and its log-probability for the actor loss.

    Args:
        obs_dim: observation width.
        action_dim: action width.
        low: lower action bounds.
        high: upper action bounds.
        hidden_sizes: widths of the trunk layers.
        activation: activation name.
        normalize_observations: normalise observations with running statistics.
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        low: Sequence[float],
        high: Sequence[float],
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        normalize_observations: bool = False,
    ) -> None:
        super().__init__(
            obs_dim,
            hidden_sizes,
            activation,
            normalize_observations,
            action_dim=int(action_dim),
            low=[float(x) for x in low],
            high=[float(x) for x in high],
        )
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), ACTIVATIONS[activation]()]
            width = int(size)
        self.trunk = nn.Sequential(*layers)
        self.mu = nn.Linear(width, action_dim)
        self.log_std = nn.Linear(width, action_dim)
        low_t = torch.tensor(low, dtype=torch.float32)
        high_t = torch.tensor(high, dtype=torch.float32)
        self.register_buffer("action_scale", (high_t - low_t) / 2)
        self.register_buffer("action_bias", (high_t + low_t) / 2)
        self.out_keys = ["action", "action_log_prob"]

    def _heads(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = mlp_forward(self.trunk, self.features(observation))
        log_std = F.linear(h, self.log_std.weight, self.log_std.bias)
        mu = F.linear(h, self.mu.weight, self.mu.bias)
        return mu, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def _squash_log_det(self, u: torch.Tensor) -> torch.Tensor:
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
        return (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1) + self.action_scale.log().sum()

    def sample(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability (gradients flow through both)."""
        mu, log_std = self._heads(observation)
        noise = normal(mu.shape, self.rng, mu.device, mu.dtype)
        u = mu + noise * log_std.exp()
        # log N(u; mu, sigma) with u - mu = noise * sigma, written out: building a validated
        # Normal per call costs more than the arithmetic at these sizes.
        gaussian = (-0.5 * noise.pow(2) - log_std).sum(-1) - 0.5 * mu.shape[-1] * _LOG_2PI
        log_prob = gaussian - self._squash_log_det(u)
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mu, log_std = self._heads(observation)
        squashed = ((action - self.action_bias) / self.action_scale).clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(squashed)
        return Normal(mu, log_std.exp()).log_prob(u).sum(-1) - self._squash_log_det(u)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get("observation")
        if is_deterministic():
            mu, log_std = self._heads(observation)
            action = torch.tanh(mu) * self.action_scale + self.action_bias
            log_prob = Normal(mu, log_std.exp()).log_prob(mu).sum(-1) - self._squash_log_det(mu)
        else:
            action, log_prob = self.sample(observation)
        tensordict.set("action", action)
        tensordict.set("action_log_prob", log_prob)
        return tensordict


class QValueActor(MLPActor):
    """Greedy policy over a Q-network (DQN), epsilon-greedy while exploring.

    Writes ``action`` (int64), ``action_value`` (all Q-values) and
    ``chosen_action_value``. When the exploration type is not deterministic, each action
    is uniformly random with probability ``epsilon`` (a buffer the training algorithm
    anneals). Layout follows Stable-Baselines3's ``QNetwork`` (``q_net`` MLP).

    Args:
        obs_dim: observation width.
        n_actions: number of discrete actions.
        hidden_sizes: hidden layer widths.
        activation: activation name.
        epsilon: initial exploration rate.
        normalize_observations: normalise observations with running statistics.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
        epsilon: float = 0.0,
        normalize_observations: bool = False,
    ) -> None:
        super().__init__(
            obs_dim,
            hidden_sizes,
            activation,
            normalize_observations,
            n_actions=int(n_actions),
        )
        self.net = build_mlp(obs_dim, n_actions, hidden_sizes, activation)
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))
        self.out_keys = ["action", "action_value", "chosen_action_value"]

    def q_values(self, observation: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.net, self.features(observation))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        q = self.q_values(tensordict.get("observation"))
        return write_epsilon_greedy(tensordict, q, self.epsilon, self.rng)


def write_epsilon_greedy(
    tensordict: TensorDictBase,
    q: torch.Tensor,
    epsilon: torch.Tensor,
    rng: torch.Generator | None,
) -> TensorDictBase:
    """Write the greedy ``action`` over ``q`` (``[..., n_actions]``), ``action_value`` and
    ``chosen_action_value``; while exploring, each action is uniformly random with
    probability ``epsilon``, drawn from ``rng``.
    """
    action = q.argmax(-1)
    if not is_deterministic() and float(epsilon) > 0:
        explore = uniform(action.shape, rng, q.device) < epsilon
        random_action = randint(q.shape[-1], action.shape, rng, q.device)
        action = torch.where(explore, random_action, action)
    tensordict.set("action", action)
    tensordict.set("action_value", q)
    tensordict.set("chosen_action_value", q.gather(-1, action.unsqueeze(-1)).squeeze(-1))
    return tensordict


ACTOR_CLASSES: dict[str, type[MLPActor]] = {
    "CategoricalActor": CategoricalActor,
    "GaussianActor": GaussianActor,
    "TanhNormalActor": TanhNormalActor,
    "QValueActor": QValueActor,
}


def observation_width(env) -> int:
    """Width of the flat observation vector an MLP actor takes, with a clear error if none."""
    spec = env.observation_spec_unbatched["observation"]
    if hasattr(spec, "keys") or len(spec.shape) != 1:
        raise SpaceMismatchError(
            f"MLP actors take flat vector observations; {getattr(env, 'env_id', 'the env')} "
            f"has {spec.shape if not hasattr(spec, 'keys') else 'dict'} observations "
            "(flatten them with a gymnasium wrapper; PPO also takes images)"
        )
    return int(spec.shape[0])


def image_shape_of(env) -> tuple[int, ...] | None:
    """Shape of ``env``'s image observations (3-d: ``(C, H, W)`` or ``(H, W, C)``), or None."""
    spec = env.observation_spec_unbatched["observation"]
    if hasattr(spec, "keys") or len(spec.shape) != 3:
        return None
    return tuple(int(s) for s in spec.shape)


def build_actor(
    env,
    kind: str = "auto",
    hidden_sizes: Sequence[int] = (32, 32),
    activation: str = "tanh",
    normalize_observations: bool = False,
    cnn: dict | None = None,
) -> MLPActor:
    """An MLP actor fitting ``env``'s observation and action specs.

    Image observations (3-d) get an :class:`~tdimitation.nn.ImageEncoder` before the MLP
    (categorical and Gaussian actors only).

    Args:
        env: the environment.
        kind: ``"auto"`` (categorical for Discrete actions, Gaussian for Box),
            ``"categorical"``, ``"gaussian"``, ``"tanh_normal"`` (SAC) or ``"qvalue"`` (DQN).
        hidden_sizes: hidden layer widths.
        activation: activation name.
        normalize_observations: carry a running normaliser of the observations.
        cnn: the image encoder's options (image observations only; None: Nature-CNN).
    """
    act_spec = env.full_action_spec_unbatched["action"]
    discrete = isinstance(act_spec, CategoricalSpec) and not isinstance(act_spec, MultiCategorical)
    if kind == "auto":
        kind = "categorical" if discrete else "gaussian"
    common = {
        "hidden_sizes": hidden_sizes,
        "activation": activation,
        "normalize_observations": normalize_observations,
    }
    image_shape = image_shape_of(env)
    if image_shape is not None and kind in ("categorical", "gaussian"):
        obs_dim = math.prod(image_shape)
        common |= {"image_shape": image_shape, "cnn": cnn}
    else:
        if image_shape is not None:
            raise SpaceMismatchError(
                f"a {kind} actor takes vector observations, not images of shape "
                f"{image_shape}: image observations are supported by PPO's categorical and "
                "gaussian actors"
            )
        if cnn is not None:
            raise SpaceMismatchError("cnn options apply only to image observations")
        obs_dim = observation_width(env)
    if kind in ("categorical", "qvalue"):
        if not discrete:
            raise SpaceMismatchError(
                f"a {kind} actor needs a Discrete action space, got {act_spec}"
            )
        cls = CategoricalActor if kind == "categorical" else QValueActor
        return cls(obs_dim, act_spec.space.n, **common)
    if kind in ("gaussian", "tanh_normal"):
        if not act_spec.dtype.is_floating_point:
            raise SpaceMismatchError(f"a {kind} actor needs a Box action space, got {act_spec}")
        action_dim = int(math.prod(act_spec.shape))
        low = high = None
        if isinstance(act_spec, Bounded):
            low = act_spec.space.low.reshape(-1).tolist()
            high = act_spec.space.high.reshape(-1).tolist()
        if kind == "gaussian":
            return GaussianActor(obs_dim, action_dim, low, high, **common)
        if low is None:
            raise SpaceMismatchError("a tanh_normal actor needs bounded actions")
        return TanhNormalActor(obs_dim, action_dim, low, high, **common)
    raise ValueError(
        f"unknown actor kind {kind!r}: auto, categorical, gaussian, tanh_normal, qvalue"
    )
