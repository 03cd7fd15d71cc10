"""Reward networks: TensorDict modules mapping transitions (s, a, s', done) to rewards.

Every reward net has two ways to be evaluated:

* :meth:`RewardNet.reward` is the raw, differentiable output on tensors; discriminator
  and preference losses train it.
* :meth:`RewardNet.predict_processed` is what reinforcement learning sees: computed without
  gradients, in evaluation mode (no dropout, frozen input statistics), then post-processed
  by wrappers (normalisation, ensemble confidence bounds; see
  :mod:`tdimitation.rewards.wrappers`). ``forward(tensordict)`` writes it to
  ``"learned_reward"`` (shape ``[*B, 1]``).

Inputs are the TED keys ``observation``, ``action``, ``("next", "observation")`` and
``("next", "done")``; a net reads only those it uses (``in_keys``), and unused arguments
of ``reward`` may be None. Any leading batch shape works (``[B]``, ``[num_envs, T]``).

Every net keeps primitive constructor arguments in ``config`` (nested ``{"class",
"config"}`` specs for wrapped nets and potentials), from which
:func:`~tdimitation.rewards.load_reward` rebuilds it; classes are found by name in
:data:`REWARD_CLASSES` (add yours with :func:`register_reward_class`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import Categorical as CategoricalSpec
from torchrl.data import Composite, MultiCategorical

from tdimitation.errors import SpaceMismatchError, TdimitationError
from tdimitation.nn import (
    ACTIVATIONS,
    EMANorm,
    RunningNorm,
    build_cnn,
    build_mlp,
    cnn_output_width,
    mlp_forward,
)

MaybeTensor = torch.Tensor | None

#: Names of a reward net's inputs, in the order of ``reward``'s arguments.
REWARD_INPUTS = ("observation", "action", "next_observation", "done")

#: TensorDict keys read and written by default; change them with ``set_keys``.
DEFAULT_KEYS: dict[str, NestedKey] = {
    "observation": "observation",
    "action": "action",
    "next_observation": ("next", "observation"),
    "done": ("next", "done"),
    "learned_reward": "learned_reward",
}


class RewardNetError(TdimitationError, ValueError):
    """A reward net is misconfigured or cannot be saved/rebuilt."""


class RewardFileError(TdimitationError, OSError):
    """A reward file is missing, corrupted, or not a tdimitation reward file."""


#: Serialisable reward nets and potentials by class name (see :func:`register_reward_class`).
REWARD_CLASSES: dict[str, type[nn.Module]] = {}


def register_reward_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make a reward net or potential class loadable by name.

    The class needs a ``config`` attribute (primitives) and a ``from_config(config)``
    classmethod, or a constructor ``cls(**config)``.
    """
    REWARD_CLASSES[cls.__name__] = cls
    return cls


def module_spec(module: nn.Module) -> dict:
    """``{"class": name, "config": config}``: how a nested net or potential is saved."""
    name = type(module).__name__
    if REWARD_CLASSES.get(name) is not type(module) or not hasattr(module, "config"):
        raise RewardNetError(
            f"cannot save a {name}: only registered classes with a config can be saved "
            f"(known: {sorted(REWARD_CLASSES)}); give it a config of its constructor "
            "arguments and decorate it with tdimitation.rewards.register_reward_class"
        )
    return {"class": name, "config": module.config}


def build_from_spec(spec: dict) -> nn.Module:
    """Rebuild a module (untrained) from a :func:`module_spec` dict."""
    name = spec.get("class") if isinstance(spec, dict) else None
    cls = REWARD_CLASSES.get(name)
    if cls is None:
        raise RewardNetError(
            f"unknown reward class {name!r}; known classes: {sorted(REWARD_CLASSES)} "
            "(register custom classes with tdimitation.rewards.register_reward_class "
            "before loading)"
        )
    from_config = getattr(cls, "from_config", None)
    return from_config(spec["config"]) if from_config else cls(**spec["config"])


def _key_to_primitive(key: NestedKey) -> str | list[str]:
    return list(key) if isinstance(key, tuple) else key


def _key_from_primitive(key) -> NestedKey:
    return unravel_key(tuple(key) if isinstance(key, list) else key)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in evaluation mode for the block, then restore every submodule's mode.

    For a :class:`RewardNet` only the submodules whose behaviour depends on the mode are
    switched (see :meth:`RewardNet.mode_sensitive_modules`): switching every module of a
    small net costs as much as evaluating it, and RL collection predicts at every step.
    """
    if not module.training:
        yield
        return
    if isinstance(module, RewardNet):
        switched = [m for m in module.mode_sensitive_modules() if m.training]
    else:
        switched = [m for m in module.modules() if m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True


# Modules whose forward ignores self.training (the statistics modules are updated
# explicitly, never by forward).
_MODE_FREE_TYPES = frozenset(
    (
        nn.Linear,
        nn.Conv2d,
        nn.Sequential,
        nn.ModuleList,
        nn.Flatten,
        nn.Identity,
        RunningNorm,
        EMANorm,
        *ACTIVATIONS.values(),
    )
)


def _is_mode_sensitive(module: nn.Module) -> bool:
    if isinstance(module, RewardNet):
        return module.uses_training_mode()
    # Potentials and helpers of this module declare themselves mode-free.
    return not getattr(type(module), "mode_free", False) and type(module) not in _MODE_FREE_TYPES


def _flat_size(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


def spaces_from_env(env) -> tuple[tuple[int, ...], int, bool]:
    """``(observation_shape, action_dim, discrete_actions)`` of a torchrl env.

    Discrete actions (``Categorical`` specs) give ``action_dim = n`` actions; other action
    specs give their flat width. Reads the unbatched ``observation`` and ``action`` specs,
    so it works for :class:`~tdimitation.envs.GymVecEnv` and ``TransformedEnv`` alike.
    """
    obs_spec = env.observation_spec_unbatched["observation"]
    if isinstance(obs_spec, Composite):
        raise SpaceMismatchError(
            f"reward nets take array observations; {getattr(env, 'env_id', 'the env')} has "
            "dict observations (flatten them with gymnasium.wrappers.FlattenObservation)"
        )
    act_spec = env.full_action_spec_unbatched["action"]
    if isinstance(act_spec, MultiCategorical):
        raise SpaceMismatchError(
            f"reward nets do not support MultiDiscrete actions ({act_spec.shape}); wrap the env "
            "so that actions are one Discrete index or a Box vector"
        )
    obs_shape = tuple(int(s) for s in obs_spec.shape)
    if isinstance(act_spec, CategoricalSpec):
        return obs_shape, int(act_spec.space.n), True
    return obs_shape, _flat_size(act_spec.shape), False


class RewardNet(TensorDictModuleBase):
    """Base class of reward networks (see the module docstring for the two modes).

    Subclasses implement :meth:`reward` and :meth:`used_inputs`, store their primitive
    constructor arguments in ``self._config`` (or override :meth:`_own_config`), and
    override ``from_config`` when they hold nested nets.

    Args:
        observation_shape: shape of one observation.
        action_dim: number of discrete actions, or the width of continuous actions.
        discrete_actions: whether actions are int64 indices (one-hot encoded inside).
        out_key: TensorDict key ``forward`` writes (default ``"learned_reward"``).
    """

    #: True for wrappers that change ``predict_processed`` but not ``reward`` (for instance
    #: normalisation); potential shaping must sit below all of them.
    processes_output: bool = False

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.action_dim = int(action_dim)
        self.discrete_actions = bool(discrete_actions)
        self._config: dict = {}
        self._keys: dict[str, NestedKey] = dict(DEFAULT_KEYS)
        self._key_overrides: dict[str, NestedKey] = {}
        if unravel_key(out_key) != DEFAULT_KEYS["learned_reward"]:
            self.set_keys(learned_reward=out_key)

    # ------------------------------------------------------------------ keys
    def used_inputs(self) -> frozenset[str]:
        """The subset of :data:`REWARD_INPUTS` this net reads."""
        raise NotImplementedError

    # ------------------------------------------------------------------ modes
    def uses_training_mode(self) -> bool:
        """Whether this net's own ``reward`` reads ``self.training`` (submodules aside).

        Conservatively True here; built-in nets that ignore the mode return False, so
        :func:`evaluating` need not switch them.
        """
        return True

    def mode_sensitive_modules(self) -> list[nn.Module]:
        """Submodules (self included) whose output depends on training mode.

        Cached; the cache is cleared by ``train()``/``eval()`` and when a submodule is
        assigned to a reward net. Call ``train(mode)`` after replacing modules deeper in
        the tree by other means.
        """
        cache = self.__dict__.get("_mode_sensitive")
        if cache is None:
            cache = [m for m in self.modules() if _is_mode_sensitive(m)]
            self.__dict__["_mode_sensitive"] = cache
        return cache

    def train(self, mode: bool = True) -> RewardNet:
        self.__dict__["_mode_sensitive"] = None
        return super().train(mode)

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, nn.Module):
            self.__dict__["_mode_sensitive"] = None
        super().__setattr__(name, value)

    @property
    def in_keys(self) -> list[NestedKey]:
        used = self.used_inputs()
        return [self._keys[name] for name in REWARD_INPUTS if name in used]

    @property
    def out_keys(self) -> list[NestedKey]:
        return [self._keys["learned_reward"]]

    def set_keys(self, **keys: NestedKey) -> RewardNet:
        """Rename the TensorDict keys ``forward`` reads or writes; returns ``self``.

        Names: ``observation``, ``action``, ``next_observation``, ``done``,
        ``learned_reward``. For example ``set_keys(done=("next", "terminated"))`` makes
        shaping ignore truncations. Renamings are saved with the net.
        """
        for name, key in keys.items():
            if name not in DEFAULT_KEYS:
                raise RewardNetError(
                    f"unknown reward net key name {name!r}; choose among {list(DEFAULT_KEYS)}"
                )
            key = unravel_key(key)
            self._keys[name] = key
            if key == DEFAULT_KEYS[name]:
                self._key_overrides.pop(name, None)
            else:
                self._key_overrides[name] = key
        return self

    # ---------------------------------------------------------------- config
    def _own_config(self) -> dict:
        return dict(self._config)

    @property
    def config(self) -> dict:
        """Constructor arguments (primitives; nested specs for wrapped nets)."""
        cfg = self._own_config()
        if self._key_overrides:
            cfg["keys"] = {k: _key_to_primitive(v) for k, v in self._key_overrides.items()}
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> RewardNet:
        """Build an (untrained) net of this class from its ``config``."""
        config = dict(config)
        keys = config.pop("keys", None)
        net = cls._from_plain_config(config)
        if keys:
            net.set_keys(**{k: _key_from_primitive(v) for k, v in keys.items()})
        return net

    @classmethod
    def _from_plain_config(cls, config: dict) -> RewardNet:
        return cls(**config)

    # ------------------------------------------------------------ evaluation
    def reward(
        self,
        observation: torch.Tensor | None,
        action: torch.Tensor | None,
        next_observation: torch.Tensor | None,
        done: torch.Tensor | None,
    ) -> torch.Tensor:
        """The raw, differentiable reward ``[*B]`` of a batch of transitions."""
        raise NotImplementedError

    def predict_processed(
        self,
        observation: torch.Tensor | None,
        action: torch.Tensor | None,
        next_observation: torch.Tensor | None,
        done: torch.Tensor | None,
        update_stats: bool = True,
    ) -> torch.Tensor:
        """The reward RL sees ``[*B]``: no gradients, evaluation mode, post-processed.

        For a plain net it is :meth:`reward` in evaluation mode; ``update_stats`` only
        matters to wrappers with statistics (:class:`NormalizedRewardNet`).
        """
        with torch.no_grad(), evaluating(self):
            return self.reward(observation, action, next_observation, done)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write ``predict_processed`` (``[*B, 1]``) to the ``learned_reward`` key.

        Statistics of normalising wrappers are updated in training mode only.
        """
        used = self.used_inputs()
        args = [tensordict.get(self._keys[n]) if n in used else None for n in REWARD_INPUTS]
        reward = self.predict_processed(*args, update_stats=self.training)
        tensordict.set(self._keys["learned_reward"], reward.unsqueeze(-1))
        return tensordict

    # ------------------------------------------------------- input handling
    def _require(self, name: str, value: torch.Tensor | None) -> torch.Tensor:
        if value is None:
            raise RewardNetError(
                f"{type(self).__name__} uses the {name} but got None; pass it (TensorDict "
                f"key {self._keys[name]!r})"
            )
        return value

    def _batch_shape(
        self,
        observation: torch.Tensor | None,
        action: torch.Tensor | None,
        next_observation: torch.Tensor | None,
        done: torch.Tensor | None,
    ) -> torch.Size:
        """Leading batch shape, from the first input present."""
        for name, value in (("observation", observation), ("next_observation", next_observation)):
            if value is not None:
                nd = len(self.observation_shape)
                if tuple(value.shape[value.dim() - nd :]) != self.observation_shape:
                    raise SpaceMismatchError(
                        f"{type(self).__name__} expects {name} of shape [*batch, "
                        f"{', '.join(map(str, self.observation_shape))}], got "
                        f"{tuple(value.shape)}: the data comes from another environment"
                    )
                return value.shape[: value.dim() - nd]
        if action is not None:
            trailing = 0 if self.discrete_actions and not action.is_floating_point() else 1
            if self.discrete_actions and action.shape[-1:] == (1,):
                trailing = 1
            return action.shape[: action.dim() - trailing]
        if done is not None:
            return done.shape[:-1] if done.shape[-1:] == (1,) else done.shape
        raise RewardNetError("a reward net needs at least one input tensor")

    def _flat_observation(self, obs: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        return obs.reshape(*batch, -1).to(torch.get_default_dtype())

    def _action_features(self, action: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        """Actions as float features ``[*B, action_dim]`` (discrete ones one-hot)."""
        shape = tuple(action.shape)
        if self.discrete_actions:
            if action.is_floating_point() and shape == (*batch, self.action_dim):
                return action  # already one-hot (or a distribution over actions)
            if shape == (*batch, 1):
                action = action.squeeze(-1)
            elif shape != tuple(batch):
                raise SpaceMismatchError(
                    f"expected discrete actions of shape {tuple(batch)} (int64 indices), got "
                    f"{shape}"
                )
            return F.one_hot(action.long(), self.action_dim).to(torch.get_default_dtype())
        if shape == tuple(batch) and self.action_dim == 1:
            action = action.unsqueeze(-1)
        elif shape[: len(batch)] != tuple(batch) or _flat_size(shape[len(batch) :]) != (
            self.action_dim
        ):
            raise SpaceMismatchError(
                f"expected continuous actions of shape {(*batch, self.action_dim)}, got {shape}"
            )
        return action.reshape(*batch, self.action_dim).to(torch.get_default_dtype())

    @staticmethod
    def _done_feature(done: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        """Done flags as float ``[*B, 1]`` (accepts bool or float, ``[*B]`` or ``[*B, 1]``)."""
        return done.reshape(*batch, 1).to(torch.get_default_dtype())


def _check_uses(cls_name: str, **flags: bool) -> None:
    if not any(flags.values()):
        raise RewardNetError(
            f"{cls_name} uses no input: set at least one of {', '.join(flags)} to True"
        )


def _mlp(
    in_features: int, hidden_sizes: Sequence[int], activation: str, dropout: float
) -> nn.Sequential:
    """``build_mlp`` to one output, with dropout after each hidden activation."""
    mlp = build_mlp(in_features, 1, hidden_sizes, activation)
    if dropout <= 0:
        return mlp
    layers: list[nn.Module] = []
    for layer in mlp:
        layers.append(layer)
        if not isinstance(layer, nn.Linear):
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _check_common(activation: str, dropout: float) -> None:
    if activation not in ACTIVATIONS:
        raise RewardNetError(
            f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise RewardNetError(f"dropout must be in [0, 1), got {dropout}")


@register_reward_class
class MLPRewardNet(RewardNet):
    """An MLP over the flattened, concatenated selected inputs.

    Discrete actions are one-hot encoded; ``done`` enters as a 0/1 feature. With
    ``normalize_input`` a :class:`~tdimitation.nn.RunningNorm` standardises the
    concatenated input; its statistics are updated by :meth:`reward` in training mode
    only (so by discriminator training, not by RL rollouts).

    Args:
        observation_shape: shape of one observation (flattened inside).
        action_dim: number of discrete actions, or the continuous action width.
        discrete_actions: whether actions are int64 indices.
        use_state: feed the observation.
        use_action: feed the action.
        use_next_state: feed the next observation.
        use_done: feed the done flag.
        hidden_sizes: hidden layer widths.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
        dropout: dropout probability after each hidden layer (training mode only).
        normalize_input: standardise the input with running statistics.
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        normalize_input: bool = False,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(observation_shape, action_dim, discrete_actions, out_key=out_key)
        _check_uses(
            "MLPRewardNet",
            use_state=use_state,
            use_action=use_action,
            use_next_state=use_next_state,
            use_done=use_done,
        )
        _check_common(activation, dropout)
        self.use_state, self.use_action = bool(use_state), bool(use_action)
        self.use_next_state, self.use_done = bool(use_next_state), bool(use_done)
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "use_state": self.use_state,
            "use_action": self.use_action,
            "use_next_state": self.use_next_state,
            "use_done": self.use_done,
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "dropout": float(dropout),
            "normalize_input": bool(normalize_input),
        }
        obs_width = _flat_size(self.observation_shape)
        width = (
            obs_width * (self.use_state + self.use_next_state)
            + self.action_dim * self.use_action
            + self.use_done
        )
        self.input_norm = RunningNorm(width) if normalize_input else None
        self.mlp = _mlp(width, hidden_sizes, activation, float(dropout))

    @classmethod
    def from_env(cls, env, **kwargs) -> MLPRewardNet:
        """A net fitting ``env``'s observation and action specs; kwargs as in the constructor."""
        obs_shape, action_dim, discrete = spaces_from_env(env)
        return cls(obs_shape, action_dim, discrete, **kwargs)

    def used_inputs(self) -> frozenset[str]:
        flags = (self.use_state, self.use_action, self.use_next_state, self.use_done)
        return frozenset(name for name, on in zip(REWARD_INPUTS, flags, strict=True) if on)

    def uses_training_mode(self) -> bool:
        return self.input_norm is not None  # input statistics update in training mode

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        batch = self._batch_shape(
            observation if self.use_state else None,
            action if self.use_action else None,
            next_observation if self.use_next_state else None,
            done if self.use_done else None,
        )
        parts = []
        if self.use_state:
            parts.append(self._flat_observation(self._require("observation", observation), batch))
        if self.use_action:
            parts.append(self._action_features(self._require("action", action), batch))
        if self.use_next_state:
            nxt = self._require("next_observation", next_observation)
            parts.append(self._flat_observation(nxt, batch))
        if self.use_done:
            parts.append(self._done_feature(self._require("done", done), batch))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        if self.input_norm is not None:
            if self.training:
                self.input_norm.update(x.detach())
            x = self.input_norm(x)
        return mlp_forward(self.mlp, x).squeeze(-1)


def _image_layout(observation_shape: Sequence[int], hwc_format: bool) -> tuple[int, int, int]:
    """``(C, H, W)`` of image observations, or a clear error if they are not images."""
    if len(observation_shape) != 3:
        raise SpaceMismatchError(
            f"CNN reward nets and potentials need image observations (H, W, C) or (C, H, W); "
            f"got shape {tuple(observation_shape)} (use MLPRewardNet for vectors)"
        )
    if hwc_format:
        h, w, c = observation_shape
    else:
        c, h, w = observation_shape
    return int(c), int(h), int(w)


def _guess_hwc(observation_shape: Sequence[int]) -> bool:
    # Images with at most 4 trailing channels (grey, RGB, RGBA, 4 stacked frames) are HWC.
    return len(observation_shape) == 3 and observation_shape[-1] <= 4 < observation_shape[0]


class _ImageFeatures(nn.Module):
    """Shared by the CNN net and potential: images to float ``[*B, C, H, W]`` in [0, 1]."""

    mode_free = True

    def __init__(self, observation_shape: Sequence[int], hwc_format: bool) -> None:
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.hwc_format = bool(hwc_format)
        self.chw = _image_layout(self.observation_shape, self.hwc_format)

    def image(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        """``obs [*B, *obs_shape]`` as float ``[prod(B), C, H, W]`` and the batch shape."""
        batch = obs.shape[:-3]
        if tuple(obs.shape[-3:]) != self.observation_shape:
            raise SpaceMismatchError(
                f"expected image observations of shape [*batch, {self.observation_shape}], got "
                f"{tuple(obs.shape)}"
            )
        x = obs.reshape(-1, *self.observation_shape)
        if self.hwc_format:
            x = x.permute(0, 3, 1, 2)
        # uint8 pixels are scaled to [0, 1]; float images are taken as already scaled.
        x = x.to(torch.get_default_dtype()) / 255.0 if obs.dtype == torch.uint8 else x.float()
        return x, batch


@register_reward_class
class CNNRewardNet(RewardNet):
    """A reward net for image observations: conv features, then an MLP head.

    The observation and next observation (those used) are stacked along channels and go
    through one conv stack (:func:`~tdimitation.nn.build_cnn`, Nature-DQN-like by
    default), so the convolutions can compare them. The action (one-hot when discrete) and
    done flag are concatenated to the conv features before the MLP head. ``uint8`` pixels
    are scaled to [0, 1]; float images are used as they are.

    Args:
        observation_shape: ``(H, W, C)`` (``hwc_format=True``) or ``(C, H, W)``.
        action_dim: number of discrete actions, or the continuous action width.
        discrete_actions: whether actions are int64 indices.
        use_state: feed the observation.
        use_action: feed the action.
        use_next_state: feed the next observation.
        use_done: feed the done flag.
        hwc_format: whether images are channels-last (gymnasium's convention).
        hidden_channels: channels of the conv layers.
        kernel_sizes: kernel sizes of the conv layers.
        strides: strides of the conv layers.
        hidden_sizes: widths of the MLP head's hidden layers.
        activation: activation name.
        dropout: dropout probability after each hidden layer of the head.
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        hwc_format: bool = True,
        hidden_channels: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        hidden_sizes: Sequence[int] = (512,),
        activation: str = "relu",
        dropout: float = 0.0,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(observation_shape, action_dim, discrete_actions, out_key=out_key)
        if not (use_state or use_next_state):
            raise RewardNetError(
                "CNNRewardNet needs an image: set use_state or use_next_state to True"
            )
        _check_common(activation, dropout)
        self.use_state, self.use_action = bool(use_state), bool(use_action)
        self.use_next_state, self.use_done = bool(use_next_state), bool(use_done)
        self.images = _ImageFeatures(self.observation_shape, hwc_format)
        self.hwc_format = bool(hwc_format)
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "use_state": self.use_state,
            "use_action": self.use_action,
            "use_next_state": self.use_next_state,
            "use_done": self.use_done,
            "hwc_format": self.hwc_format,
            "hidden_channels": [int(c) for c in hidden_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "strides": [int(s) for s in strides],
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "dropout": float(dropout),
        }
        c, h, w = self.images.chw
        in_channels = c * (self.use_state + self.use_next_state)
        self.cnn = build_cnn(in_channels, hidden_channels, kernel_sizes, strides, activation)
        features = cnn_output_width(self.cnn, (in_channels, h, w))
        width = features + self.action_dim * self.use_action + self.use_done
        self.head = _mlp(width, hidden_sizes, activation, float(dropout))

    @classmethod
    def from_env(cls, env, **kwargs) -> CNNRewardNet:
        """A net for ``env``'s image observations; kwargs as in the constructor.

        ``hwc_format`` is guessed when not given: channels-last when the last dimension
        is at most 4.
        """
        obs_shape, action_dim, discrete = spaces_from_env(env)
        kwargs.setdefault("hwc_format", _guess_hwc(obs_shape))
        return cls(obs_shape, action_dim, discrete, **kwargs)

    def used_inputs(self) -> frozenset[str]:
        flags = (self.use_state, self.use_action, self.use_next_state, self.use_done)
        return frozenset(name for name, on in zip(REWARD_INPUTS, flags, strict=True) if on)

    def uses_training_mode(self) -> bool:
        return False  # dropout layers are submodules, switched on their own

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        images = []
        batch = None
        if self.use_state:
            x, batch = self.images.image(self._require("observation", observation))
            images.append(x)
        if self.use_next_state:
            x, batch = self.images.image(self._require("next_observation", next_observation))
            images.append(x)
        x = images[0] if len(images) == 1 else torch.cat(images, 1)
        parts = [self.cnn(x).reshape(*batch, -1)]
        if self.use_action:
            parts.append(self._action_features(self._require("action", action), batch))
        if self.use_done:
            parts.append(self._done_feature(self._require("done", done), batch))
        features = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return mlp_forward(self.head, features).squeeze(-1)


@register_reward_class
class MLPPotential(nn.Module):
    """A state potential Φ(s) for reward shaping: an MLP on the flattened observation.

    Args:
        observation_shape: shape of one observation.
        hidden_sizes: hidden layer widths.
        activation: activation name.
    """

    mode_free = True  # forward ignores training mode

    def __init__(
        self,
        observation_shape: Sequence[int],
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_common(activation, 0.0)
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.config = {
            "observation_shape": list(self.observation_shape),
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
        }
        self.mlp = build_mlp(_flat_size(self.observation_shape), 1, hidden_sizes, activation)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation.shape[: observation.dim() - len(self.observation_shape)]
        x = observation.reshape(*batch, -1).to(torch.get_default_dtype())
        return mlp_forward(self.mlp, x).squeeze(-1)


@register_reward_class
class CNNPotential(nn.Module):
    """A state potential Φ(s) for image observations: conv stack, then an MLP.

    Args:
        observation_shape: ``(H, W, C)`` or ``(C, H, W)`` (see ``hwc_format``).
        hwc_format: whether images are channels-last.
        hidden_channels: channels of the conv layers.
        kernel_sizes: kernel sizes of the conv layers.
        strides: strides of the conv layers.
        hidden_sizes: widths of the MLP's hidden layers.
        activation: activation name.
    """

    mode_free = True  # forward ignores training mode

    def __init__(
        self,
        observation_shape: Sequence[int],
        hwc_format: bool = True,
        hidden_channels: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        hidden_sizes: Sequence[int] = (512,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_common(activation, 0.0)
        self.images = _ImageFeatures(observation_shape, hwc_format)
        self.config = {
            "observation_shape": list(self.images.observation_shape),
            "hwc_format": bool(hwc_format),
            "hidden_channels": [int(c) for c in hidden_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "strides": [int(s) for s in strides],
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
        }
        c, h, w = self.images.chw
        self.cnn = build_cnn(c, hidden_channels, kernel_sizes, strides, activation)
        features = cnn_output_width(self.cnn, (c, h, w))
        self.head = build_mlp(features, 1, hidden_sizes, activation)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x, batch = self.images.image(observation)
        return mlp_forward(self.head, self.cnn(x)).squeeze(-1).reshape(batch)


class RewardNetWrapper(RewardNet):
    """Base of wrappers around one reward net, exposed as ``.base``.

    By default ``reward`` delegates to the base and ``predict_processed`` is ``reward`` in
    evaluation mode, so a subclass changing ``reward`` (like :class:`ShapedRewardNet`)
    changes both; wrappers that only post-process (``processes_output = True``) override
    ``predict_processed`` and call the base's. The TensorDict keys are inherited from the
    base (so a renamed ``done`` key carries over).

    Args:
        base: the wrapped reward net.
        out_key: TensorDict key ``forward`` writes (default: the base's).
    """

    def __init__(self, base: RewardNet, *, out_key: NestedKey | None = None) -> None:
        if not isinstance(base, RewardNet):
            raise TypeError(f"{type(self).__name__} wraps a RewardNet, got {type(base).__name__}")
        super().__init__(base.observation_shape, base.action_dim, base.discrete_actions)
        self.base = base
        for name, key in base._key_overrides.items():
            self.set_keys(**{name: key})
        if out_key is not None:
            self.set_keys(learned_reward=out_key)

    def used_inputs(self) -> frozenset[str]:
        return self.base.used_inputs()

    def uses_training_mode(self) -> bool:
        return False  # modes matter only inside the wrapped net

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        return self.base.reward(observation, action, next_observation, done)

    def _own_config(self) -> dict:
        return {"base": module_spec(self.base), **self._config}

    @classmethod
    def _from_plain_config(cls, config: dict) -> RewardNet:
        config = dict(config)
        base = build_from_spec(config.pop("base"))
        return cls(base, **config)


def iter_reward_nets(net: nn.Module) -> Iterator[RewardNet]:
    """``net`` and every reward net nested in it (wrapped bases, ensemble members)."""
    for module in net.modules():
        if isinstance(module, RewardNet):
            yield module


@register_reward_class
class ShapedRewardNet(RewardNetWrapper):
    """Potential-based shaping: ``r(s, a, s', d) + γ·(1 − d)·Φ(s') − Φ(s)``.

    Shaping by a potential leaves optimal policies unchanged (Ng et al., 1999), so AIRL
    trains the shaped net and evaluates the unshaped ``.base``. ``done`` masks the next
    potential: after the last step there is no future. To mask terminations only (and
    bootstrap through time-limit truncations) use ``set_keys(done=("next",
    "terminated"))``. Shaping must apply to the raw reward, so ``base`` may not contain
    normalisation wrappers (wrap the shaped net instead).

    Args:
        base: the reward net being shaped (the unshaped reward).
        potential: a module mapping observations ``[*B, *obs_shape]`` to ``[*B]`` (or
            ``[*B, 1]``); default an MLP (32, 32) (:class:`MLPPotential`), or a
            :class:`CNNPotential` with the base's architecture when ``base`` is a
            :class:`CNNRewardNet`.
        discount: γ, the RL discount factor, in [0, 1].
        out_key: TensorDict key ``forward`` writes (default: the base's).
    """

    def __init__(
        self,
        base: RewardNet,
        potential: nn.Module | None = None,
        discount: float = 0.99,
        *,
        out_key: NestedKey | None = None,
    ) -> None:
        super().__init__(base, out_key=out_key)
        for inner in iter_reward_nets(base):
            if inner.processes_output:
                raise RewardNetError(
                    f"ShapedRewardNet cannot wrap a {type(inner).__name__}: shaping applies "
                    "to the raw reward; wrap the shaped net instead, e.g. "
                    "NormalizedRewardNet(ShapedRewardNet(net))"
                )
        if not 0.0 <= float(discount) <= 1.0:
            raise RewardNetError(f"discount must be in [0, 1], got {discount}")
        if potential is None:
            if isinstance(base, CNNRewardNet):
                # Same conv architecture as the base, which is known to fit the images.
                arch = ("hidden_channels", "kernel_sizes", "strides", "hidden_sizes", "activation")
                potential = CNNPotential(
                    base.observation_shape,
                    hwc_format=base.hwc_format,
                    **{k: base._config[k] for k in arch},
                )
            else:
                potential = MLPPotential(base.observation_shape)
        self.potential = potential
        self.discount = float(discount)
        self._config = {"discount": self.discount}

    @classmethod
    def from_env(
        cls,
        env,
        *,
        discount: float = 0.99,
        potential_hidden_sizes: Sequence[int] = (32, 32),
        **base_kwargs,
    ) -> ShapedRewardNet:
        """An :class:`MLPRewardNet` base (``base_kwargs``) shaped by an MLP potential."""
        base = MLPRewardNet.from_env(env, **base_kwargs)
        activation = base_kwargs.get("activation", "relu")
        potential = MLPPotential(base.observation_shape, potential_hidden_sizes, activation)
        return cls(base, potential, discount)

    def used_inputs(self) -> frozenset[str]:
        return self.base.used_inputs() | {"observation", "next_observation", "done"}

    def _potential(self, observation: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        value = self.potential(observation)
        return value.reshape(batch)

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        observation = self._require("observation", observation)
        next_observation = self._require("next_observation", next_observation)
        batch = self._batch_shape(observation, None, None, None)
        base = self.base.reward(observation, action, next_observation, done)
        not_done = 1.0 - self._done_feature(self._require("done", done), batch).squeeze(-1)
        phi = self._potential(observation, batch)
        phi_next = self._potential(next_observation, batch)
        return base + self.discount * not_done * phi_next - phi

    def _own_config(self) -> dict:
        return {
            "base": module_spec(self.base),
            "potential": module_spec(self.potential),
            **self._config,
        }

    @classmethod
    def _from_plain_config(cls, config: dict) -> RewardNet:
        config = dict(config)
        base = build_from_spec(config.pop("base"))
        potential = build_from_spec(config.pop("potential"))
        return cls(base, potential, **config)


__all__ = [
    "REWARD_INPUTS",
    "DEFAULT_KEYS",
    "REWARD_CLASSES",
    "RewardNetError",
    "RewardFileError",
    "RewardNet",
    "RewardNetWrapper",
    "MLPRewardNet",
    "CNNRewardNet",
    "MLPPotential",
    "CNNPotential",
    "ShapedRewardNet",
    "register_reward_class",
    "module_spec",
    "build_from_spec",
    "spaces_from_env",
    "iter_reward_nets",
    "evaluating",
]
