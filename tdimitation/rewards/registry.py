"""Saving reward nets and loading them by kind, with a registry users can extend.

``save_reward(net, path)`` writes ``{format, version, class, config, state_dict}`` (plus
the spaces, for inspection), loadable with ``torch.load(weights_only=True)``; wrappers,
ensemble members, potentials and normaliser statistics are all included.

``load_reward(kind, path, device=None, **options)`` kinds:

* ``"tdimitation"``: the net as saved;
* ``"shaped"``: the net as saved, which must contain a :class:`ShapedRewardNet`;
* ``"unshaped"``: every :class:`ShapedRewardNet` replaced by its base (AIRL's test reward);
* ``"normalized"``: the net as saved, which must contain a :class:`NormalizedRewardNet`;
* ``"unnormalized"``: every :class:`NormalizedRewardNet` removed;
* ``"raw"``: both removed;
* ``"std_added"``: a saved :class:`RewardEnsemble` as ``mean + alpha * std`` of its members
  (:class:`AddStdRewardWrapper`; option ``alpha``, default 0 as in ``imitation``, or the
  saved wrapper's);
* ``"zero"``: a :class:`ZeroRewardNet` for the spaces of option ``env`` (then ``path`` may
  be None) or else of the saved net.

``imitation``'s registry names are aliases: ``RewardNet_shaped``, ``RewardNet_unshaped``,
``RewardNet_normalized``, ``RewardNet_unnormalized``, ``RewardNet_std_added`` (``zero`` is
the same name). Add kinds with :func:`register_reward_kind`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

import torch

from tdimitation.rewards.nets import (
    REWARD_CLASSES,
    RewardFileError,
    RewardNet,
    RewardNetError,
    ShapedRewardNet,
    ZeroRewardNet,
    env_spaces,
    iter_reward_nets,
)
from tdimitation.rewards.wrappers import (
    AddStdRewardWrapper,
    NormalizedRewardNet,
    RewardEnsemble,
    strip_wrappers,
)
from tdimitation.utils import atomic_path

REWARD_FILE_FORMAT = "tdimitation-reward"
REWARD_FILE_VERSION = 1
#: Key of the exported reward net inside a training checkpoint's ``"tdimitation"`` entry.
CHECKPOINT_REWARD_KEY = "reward_net"

RewardLoader = Callable[..., RewardNet]
#: Loaders by kind: ``loader(path, device, **options) -> RewardNet``.
REWARD_KINDS: dict[str, RewardLoader] = {}


def register_reward_kind(name: str) -> Callable[[RewardLoader], RewardLoader]:
    """Decorator registering ``loader(path, device, **options) -> RewardNet`` as ``name``.

    ``path`` is a :class:`~pathlib.Path` (or None when the caller gave none), ``device`` a
    :class:`torch.device` or None; ``options`` are the keyword arguments given to
    :func:`load_reward` (a loader taking none may omit them).

    Example::

        @register_reward_kind("optimistic")
        def _load(path, device):
            return AddStdRewardWrapper(load_reward("tdimitation", path, device), alpha=1.0)
    """

    def decorator(loader: RewardLoader) -> RewardLoader:
        REWARD_KINDS[name] = loader
        return loader

    return decorator


def reward_payload(reward_net: RewardNet) -> dict:
    """The saved form of a reward net (what :func:`save_reward` writes)."""
    if not isinstance(reward_net, RewardNet):
        raise RewardNetError(
            f"save_reward saves RewardNet modules, got {type(reward_net).__name__}"
        )
    cls_name = type(reward_net).__name__
    if REWARD_CLASSES.get(cls_name) is not type(reward_net):
        raise RewardNetError(
            f"cannot save a {cls_name}: it is not a registered reward class (known: "
            f"{sorted(REWARD_CLASSES)}); decorate it with register_reward_class"
        )
    return {
        "format": REWARD_FILE_FORMAT,
        "version": REWARD_FILE_VERSION,
        "class": cls_name,
        "config": reward_net.config,
        "observation_shape": list(reward_net.observation_shape),
        "action_dim": reward_net.action_dim,
        "discrete_actions": reward_net.discrete_actions,
        "num_states": reward_net.num_states,
        "state_dict": {k: v.detach().cpu() for k, v in reward_net.state_dict().items()},
    }


def reward_from_payload(payload: dict, source: str = "the payload") -> RewardNet:
    """Rebuild a reward net from :func:`reward_payload` output (in evaluation mode)."""
    if not isinstance(payload, dict) or payload.get("format") != REWARD_FILE_FORMAT:
        raise RewardFileError(
            f"{source} is not a tdimitation reward file (nor a training checkpoint holding "
            "one); write reward nets with tdimitation.rewards.save_reward"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > REWARD_FILE_VERSION:
        raise RewardFileError(
            f"{source} has reward file version {version!r}; this tdimitation reads up to "
            f"version {REWARD_FILE_VERSION} (upgrade tdimitation)"
        )
    cls = REWARD_CLASSES.get(payload.get("class"))
    if cls is None or not issubclass(cls, RewardNet):
        raise RewardNetError(
            f"{source} holds an unknown reward class {payload.get('class')!r}; known: "
            f"{sorted(n for n, c in REWARD_CLASSES.items() if issubclass(c, RewardNet))} "
            "(import the module registering custom classes before loading)"
        )
    net = cls.from_config(payload["config"])
    try:
        net.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise RewardFileError(
            f"{source}: the saved weights do not fit the saved configuration ({err}); the "
            "file is corrupted"
        ) from None
    return net.eval()


def save_reward(reward_net: RewardNet, path: str | os.PathLike) -> Path:
    """Save a reward net (with its wrappers and statistics) atomically to ``path``."""
    payload = reward_payload(reward_net)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _read(path: Path | None, kind: str = "tdimitation") -> RewardNet:
    if path is None:
        raise RewardNetError(f"reward kind {kind!r} loads a reward file: pass its path")
    if not path.is_file():
        raise RewardFileError(
            f"reward file {path} does not exist{' (it is a directory)' if path.is_dir() else ''}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RewardFileError(
            f"reward file {path} is corrupted, truncated or not a torch file "
            f"({type(err).__name__}); save it again with save_reward"
        ) from None
    if isinstance(payload, dict) and isinstance(payload.get("tdimitation"), dict):
        # A training checkpoint: the exported reward net is stored beside the run's state.
        payload = payload["tdimitation"].get(CHECKPOINT_REWARD_KEY)
    return reward_from_payload(payload, str(path))


def _to(net: RewardNet, device) -> RewardNet:
    return net if device is None else net.to(device)


def _require_wrapper(net: RewardNet, wrapper: type, kind: str, path: Path) -> RewardNet:
    if not any(isinstance(inner, wrapper) for inner in iter_reward_nets(net)):
        raise RewardNetError(
            f"reward kind {kind!r} needs a net saved with a {wrapper.__name__}, but {path} "
            f"holds a {type(net).__name__} without one; load it as 'tdimitation'"
        )
    return net


@register_reward_kind("tdimitation")
def _load_as_saved(path: Path, device=None) -> RewardNet:
    return _to(_read(path), device)


@register_reward_kind("shaped")
@register_reward_kind("RewardNet_shaped")
def _load_shaped(path: Path, device=None) -> RewardNet:
    return _to(_require_wrapper(_read(path, "shaped"), ShapedRewardNet, "shaped", path), device)


@register_reward_kind("unshaped")
@register_reward_kind("RewardNet_unshaped")
def _load_unshaped(path: Path, device=None) -> RewardNet:
    return _to(strip_wrappers(_read(path, "unshaped"), ShapedRewardNet), device)


@register_reward_kind("normalized")
@register_reward_kind("RewardNet_normalized")
def _load_normalized(path: Path, device=None) -> RewardNet:
    net = _read(path, "normalized")
    return _to(_require_wrapper(net, NormalizedRewardNet, "normalized", path), device)


@register_reward_kind("unnormalized")
@register_reward_kind("RewardNet_unnormalized")
def _load_unnormalized(path: Path, device=None) -> RewardNet:
    return _to(strip_wrappers(_read(path, "unnormalized"), NormalizedRewardNet), device)


@register_reward_kind("raw")
def _load_raw(path: Path, device=None) -> RewardNet:
    net = _read(path, "raw")
    return _to(strip_wrappers(net, ShapedRewardNet, NormalizedRewardNet), device)


@register_reward_kind("std_added")
@register_reward_kind("RewardNet_std_added")
def _load_std_added(path: Path, device=None, *, alpha: float | None = None) -> RewardNet:
    net = _read(path, "std_added")
    if isinstance(net, AddStdRewardWrapper):
        if alpha is not None:
            net.alpha = float(alpha)
    elif isinstance(net, RewardEnsemble):
        # imitation's AddSTDRewardWrapper defaults to alpha 0 (the ensemble mean).
        net = AddStdRewardWrapper(net, alpha=0.0 if alpha is None else float(alpha)).eval()
    else:
        raise RewardNetError(
            f"reward kind 'std_added' needs a saved RewardEnsemble (mean + alpha * std of its "
            f"members), but {path} holds a {type(net).__name__}"
        )
    return _to(net, device)


@register_reward_kind("zero")
def _load_zero(path: Path | None, device=None, *, env=None) -> RewardNet:
    if env is not None:
        net = ZeroRewardNet(**env_spaces(env))
    elif path is not None:
        saved = _read(path, "zero")
        net = ZeroRewardNet(
            saved.observation_shape,
            saved.action_dim,
            saved.discrete_actions,
            num_states=saved.num_states,
        )
    else:
        raise RewardNetError(
            "reward kind 'zero' needs the env (load_reward('zero', None, env=env)) or a saved "
            "reward file whose spaces it takes"
        )
    return _to(net.eval(), device)


def load_reward(
    kind: str,
    path: str | os.PathLike | None,
    device: torch.device | str | None = None,
    **options,
) -> RewardNet:
    """Load a reward net of a registered ``kind`` (see the module docstring).

    The net is returned in evaluation mode, so ``forward`` does not update normalisation
    statistics; call ``.train()`` to continue training it.

    Args:
        kind: a key of :data:`REWARD_KINDS`.
        path: a file written by :func:`save_reward`, or a training checkpoint holding one
            (None for ``"zero"`` with ``env=``).
        device: where to put the net (default: CPU).
        **options: the kind's options: ``alpha`` for ``"std_added"``, ``env`` for
            ``"zero"``.
    """
    loader = REWARD_KINDS.get(kind)
    if loader is None:
        raise RewardNetError(f"unknown reward kind {kind!r}; known kinds: {sorted(REWARD_KINDS)}")
    path = None if path is None else Path(path)
    device = None if device is None else torch.device(device)
    try:
        inspect.signature(loader).bind(path, device, **options)
    except TypeError:
        raise RewardNetError(
            f"reward kind {kind!r} does not take the options {sorted(options)} (options: "
            "alpha= for 'std_added', env= for 'zero')"
        ) from None
    return loader(path, device, **options)


__all__ = [
    "REWARD_FILE_FORMAT",
    "REWARD_FILE_VERSION",
    "REWARD_KINDS",
    "CHECKPOINT_REWARD_KEY",
    "register_reward_kind",
    "reward_payload",
    "reward_from_payload",
    "save_reward",
    "load_reward",
]
