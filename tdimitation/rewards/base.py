"""Reward net foundations: the base class, the wrappers' base and the class registry.

Reward networks are TensorDict modules mapping transitions (s, a, s', done) to rewards.

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
Discrete actions and discrete observations (int64 indices) are one-hot encoded inside.

Every net keeps primitive constructor arguments in ``config`` (nested ``{"class",
"config"}`` specs for wrapped nets and potentials), from which
:func:`~tdimitation.rewards.load_reward` rebuilds it; classes are found by name in
:data:`REWARD_CLASSES` (add yours with :func:`register_reward_class`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn

from tdimitation.errors import SpaceMismatchError
from tdimitation.nn import ACTIVATIONS, EMANorm, RunningNorm, build_mlp
from tdimitation.rewards.errors import RewardFileError, RewardNetError
from tdimitation.rewards.spaces import (
    _check_num_states,
    _flat_size,
    env_spaces,
    num_states_from_env,
    observation_batch_shape,
    observation_features,
    observation_width,
    spaces_from_env,
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


class RewardNet(TensorDictModuleBase):
    """Base class of reward networks (see the module docstring for the two modes).

    Subclasses implement :meth:`reward` and :meth:`used_inputs`, store their primitive
    constructor arguments in ``self._config`` (or override :meth:`_own_config`), and
    override ``from_config`` when they hold nested nets.

    Args:
        observation_shape: shape of one observation.
        action_dim: number of discrete actions, or the width of continuous actions.
        discrete_actions: whether actions are int64 indices (one-hot encoded inside).
        num_states: for a discrete observation space (``Discrete(n)``, observation shape
            ``()``), its number of values ``n``: observations are int64 indices, one-hot
            encoded inside (float one-hot rows ``[*B, n]`` are accepted too). None for
            array observations.
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
        num_states: int | None = None,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.action_dim = int(action_dim)
        self.discrete_actions = bool(discrete_actions)
        _check_num_states(num_states, self.observation_shape)
        self.num_states = None if num_states is None else int(num_states)
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
                return observation_batch_shape(
                    value, self.observation_shape, self.num_states, f"{type(self).__name__} {name}"
                )
        if action is not None:
            trailing = 0 if self.discrete_actions and not action.is_floating_point() else 1
            if self.discrete_actions and action.shape[-1:] == (1,):
                trailing = 1
            return action.shape[: action.dim() - trailing]
        if done is not None:
            return done.shape[:-1] if done.shape[-1:] == (1,) else done.shape
        raise RewardNetError("a reward net needs at least one input tensor")

    def _flat_observation(self, obs: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        """Observations as float features ``[*B, width]`` (discrete ones one-hot)."""
        return observation_features(obs, batch, self.num_states)

    @property
    def observation_width(self) -> int:
        """Width of one encoded observation: ``num_states`` if discrete, else its size."""
        return observation_width(self.observation_shape, self.num_states)

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
            raise RewardNetError(
                f"{type(self).__name__} wraps a RewardNet, got {type(base).__name__}"
            )
        super().__init__(
            base.observation_shape,
            base.action_dim,
            base.discrete_actions,
            num_states=base.num_states,
        )
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


__all__ = [
    "REWARD_INPUTS",
    "DEFAULT_KEYS",
    "REWARD_CLASSES",
    "MaybeTensor",
    "RewardNetError",
    "RewardFileError",
    "RewardNet",
    "RewardNetWrapper",
    "register_reward_class",
    "module_spec",
    "build_from_spec",
    "spaces_from_env",
    "num_states_from_env",
    "env_spaces",
    "observation_batch_shape",
    "observation_features",
    "observation_width",
    "iter_reward_nets",
    "evaluating",
]
