"""Stable-Baselines3 ``model.zip`` checkpoints, loaded without Stable-Baselines3.

An SB3 checkpoint is a zip holding ``data`` (JSON: policy class, ``policy_kwargs``,
spaces, hyperparameters), ``policy.pth`` (the policy's state dict) and optimizer states.
This module reads the JSON and the state dict (``weights_only``: nothing is unpickled and
no code from the file runs) and copies the weights into the matching tdimitation actor:

=============  ==============================================  ==========================
kind           SB3 policy (``MlpPolicy``)                       tdimitation actor
=============  ==============================================  ==========================
``sb3-ppo``    ``ActorCriticPolicy`` (PPO, A2C), Discrete       :class:`CategoricalActor`
``sb3-ppo``    ``ActorCriticPolicy`` (PPO, A2C), 1-D Box        :class:`GaussianActor`
``sb3-sac``    ``SACPolicy``                                    :class:`TanhNormalActor`
``sb3-dqn``    ``DQNPolicy``                                    :class:`QValueActor`
``sb3``        any of the above, picked from the policy class
=============  ==============================================  ==========================

Deterministic actions are those of SB3's ``model.predict(obs, deterministic=True)``: the
PPO mean clipped to the action bounds, SAC's ``tanh(mu)`` rescaled to the bounds, DQN's
greedy action. Value functions, critics and target networks are ignored; DQN's
exploration rate is not carried over (like ``imitation``, which loads ``model.policy``).
Only flat vector observations and the default (flatten) features extractor are
supported; CNN and multi-input policies, gSDE, custom extractors and other algorithms
raise :class:`~tdimitation.errors.PolicyError`. ``VecNormalize`` statistics are not
applied: a ``vec_normalize.pkl`` beside the zip is refused, as ``imitation`` does.

Use ``load_policy("sb3-ppo", "model.zip", env=env)`` or ``--policy sb3-ppo:model.zip``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchrl.data import Bounded, MultiCategorical
from torchrl.data import Categorical as CategoricalSpec

from tdimitation.errors import PolicyError, SpaceMismatchError
from tdimitation.policies.actors import (
    CategoricalActor,
    GaussianActor,
    MLPActor,
    QValueActor,
    TanhNormalActor,
)
from tdimitation.policies.registry import check_actor_fits_env, register_policy_loader

# algorithm -> the policy class its MlpPolicy is an alias of.
SB3_POLICY_CLASSES: dict[str, str] = {
    "ppo": "stable_baselines3.common.policies.ActorCriticPolicy",
    "sac": "stable_baselines3.sac.policies.SACPolicy",
    "dqn": "stable_baselines3.dqn.policies.DQNPolicy",
}
DEFAULT_ACTIVATIONS = {"ppo": "tanh", "sac": "relu", "dqn": "relu"}
# torch.nn activation class name -> tdimitation.nn.ACTIVATIONS name.
_ACTIVATION_NAMES = {
    "Tanh": "tanh",
    "ReLU": "relu",
    "ELU": "elu",
    "GELU": "gelu",
    "LeakyReLU": "leaky_relu",
    "SiLU": "silu",
}
# State-dict key prefixes each loader understands; anything else is refused.
_KNOWN_PREFIXES = {
    "ppo": (
        "mlp_extractor.policy_net.",
        "mlp_extractor.shared_net.",  # SB3 < 1.8 shared layers
        "mlp_extractor.value_net.",
        "action_net.",
        "value_net.",
        "log_std",
    ),
    "sac": ("actor.latent_pi.", "actor.mu.", "actor.log_std.", "critic.", "critic_target."),
    "dqn": ("q_net.q_net.", "q_net_target.q_net."),
}
_CLASS_RE = re.compile(r"<class '([\w.]+)'>")


@dataclass(frozen=True)
class SB3Space:
    """The readable part of a space serialised in an SB3 ``data`` file.

    Attributes:
        kind: class name (``"Box"``, ``"Discrete"``, ``"Dict"``, ...).
        shape: the space's shape.
        n: number of actions of a ``Discrete`` space.
        low: flat lower bounds of a ``Box`` (None when unreadable).
        high: flat upper bounds of a ``Box``.
    """

    kind: str
    shape: tuple[int, ...]
    n: int | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def describe(self) -> str:
        if self.kind == "Discrete":
            return f"Discrete({self.n})"
        return f"{self.kind}{self.shape}"


@dataclass(frozen=True)
class SB3Checkpoint:
    """The parts of an SB3 ``model.zip`` the loaders use.

    Attributes:
        path: the zip file.
        policy_class: ``module.ClassName`` of the saved policy.
        data: the parsed ``data`` JSON.
        state_dict: the policy's parameters (``policy.pth``).
        sb3_version: the SB3 version that wrote the file, when recorded.
        observation_space: the observation space.
        action_space: the action space.
    """

    path: Path
    policy_class: str
    data: dict
    state_dict: dict[str, torch.Tensor]
    sb3_version: str | None
    observation_space: SB3Space
    action_space: SB3Space

    @property
    def policy_kwargs(self) -> dict:
        """``policy_kwargs`` as saved (a non-JSON dict is stored with readable items)."""
        kwargs = self.data.get("policy_kwargs") or {}
        return kwargs if isinstance(kwargs, dict) else {}


# ------------------------------------------------------------------------ reading
def _resolve_zip(path: str | os.PathLike | None, kind: str) -> Path:
    if path is None:
        raise PolicyError(f"the {kind!r} policy kind needs a path: {kind}:PATH/model.zip")
    path = Path(path).expanduser()
    if path.is_dir():
        # imitation accepts a directory holding model.zip.
        path = path / "model.zip"
    if not path.is_file():
        raise PolicyError(f"SB3 checkpoint {path} does not exist")
    if (path.parent / "vec_normalize.pkl").exists():
        raise PolicyError(
            f"{path.parent / 'vec_normalize.pkl'} is present: the policy was trained with "
            "VecNormalize, whose (pickled) statistics cannot be applied; unsupported"
        )
    return path


def _parse_array(value) -> np.ndarray | None:
    """A flat float array from a saved numpy ``str()`` such as ``'[-2. -2.]'``, or None."""
    if isinstance(value, (list, int, float)):
        return np.asarray(value, dtype=np.float64).reshape(-1)
    if not isinstance(value, str) or "..." in value:  # numpy abbreviates huge arrays
        return None
    try:
        return np.array(value.replace("[", " ").replace("]", " ").split(), dtype=np.float64)
    except ValueError:
        return None


def _parse_space(entry) -> SB3Space:
    if not isinstance(entry, dict):
        return SB3Space("unknown", ())
    match = _CLASS_RE.search(str(entry.get(":type:", "")))
    kind = match.group(1).rsplit(".", 1)[-1] if match else "unknown"
    shape_value = entry.get("_shape", entry.get("shape")) or ()
    shape = tuple(int(s) for s in shape_value) if isinstance(shape_value, list) else ()
    n = int(entry["n"]) if kind == "Discrete" and "n" in entry else None
    low = high = None
    if kind == "Box":
        size = math.prod(shape)
        low, high = _parse_array(entry.get("low")), _parse_array(entry.get("high"))
        if low is not None and low.size == 1 and size != 1:
            low = np.full(size, low[0])
        if high is not None and high.size == 1 and size != 1:
            high = np.full(size, high[0])
        if low is None or high is None or low.size != size or high.size != size:
            low = high = None
    return SB3Space(kind, shape, n, low, high)


def _global_name(entry) -> str:
    """``module.Name`` of a class SB3 cloudpickled, read from the pickle opcodes.

    The pickle is never loaded: ``pickletools.genops`` only tokenises it.
    """
    if not isinstance(entry, dict):
        return "unknown"
    strings: list[str] = []
    try:
        raw = base64.b64decode(entry.get(":serialized:", ""), validate=True)
        for opcode, arg, _ in pickletools.genops(raw):
            if opcode.name == "GLOBAL":  # protocols 0-3: "module name"
                module, name = str(arg).split(" ", 1)
                return f"{module}.{name}"
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, TypeError):
        pass
    # Fallback: the class's own methods are listed as "<function Name.__init__ at ...>".
    init = re.match(r"<function (\w+)\.", str(entry.get("__init__", "")))
    module = entry.get("__module__", "unknown")
    return f"{module}.{init.group(1)}" if init else f"{module}.unknown"


def read_sb3_zip(path: str | os.PathLike, kind: str = "sb3") -> SB3Checkpoint:
    """Read an SB3 ``model.zip`` (or a directory holding one) without unpickling anything.

    Args:
        path: the zip, or a directory containing ``model.zip``.
        kind: the policy kind named in error messages.

    Raises:
        PolicyError: missing file, corrupted zip, or ``vec_normalize.pkl`` beside it.
    """
    path = _resolve_zip(path, kind)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in ("data", "policy.pth") if name not in names]
            if missing:
                raise PolicyError(
                    f"SB3 checkpoint {path} is corrupted or not an SB3 model.zip: it has no "
                    f"{' or '.join(missing)}"
                )
            data = json.loads(archive.read("data"))
            policy_bytes = archive.read("policy.pth")
            version = None
            if "_stable_baselines3_version" in names:
                version = archive.read("_stable_baselines3_version").decode().strip()
        state_dict = torch.load(io.BytesIO(policy_bytes), map_location="cpu", weights_only=True)
    except PolicyError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse means a bad file
        raise PolicyError(
            f"SB3 checkpoint {path} is corrupted or not an SB3 model.zip "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not isinstance(data, dict) or not isinstance(state_dict, dict):
        raise PolicyError(f"SB3 checkpoint {path} is corrupted: unexpected data/policy.pth")
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise PolicyError(f"SB3 checkpoint {path} is corrupted: policy.pth is not a state dict")
    try:
        observation_space = _parse_space(data.get("observation_space"))
        action_space = _parse_space(data.get("action_space"))
    except (TypeError, ValueError):
        raise PolicyError(f"SB3 checkpoint {path} is corrupted: unreadable spaces") from None
    return SB3Checkpoint(
        path=path,
        policy_class=_global_name(data.get("policy_class")),
        data=data,
        state_dict=state_dict,
        sb3_version=version,
        observation_space=observation_space,
        action_space=action_space,
    )


# ----------------------------------------------------------------------- mapping
def _activation(checkpoint: SB3Checkpoint, algo: str) -> str:
    value = checkpoint.policy_kwargs.get("activation_fn")
    if value is None:
        return DEFAULT_ACTIVATIONS[algo]
    match = _CLASS_RE.search(str(value))
    name = match.group(1).rsplit(".", 1)[-1] if match else str(value)
    if name not in _ACTIVATION_NAMES:
        raise PolicyError(
            f"{checkpoint.path}: activation {name} is unsupported (supported: "
            f"{', '.join(sorted(_ACTIVATION_NAMES))})"
        )
    return _ACTIVATION_NAMES[name]


def _linear_chain(checkpoint: SB3Checkpoint, prefix: str) -> list[tuple[torch.Tensor, ...]]:
    """(weight, bias) of the Linear layers of an SB3 ``create_mlp`` Sequential, in order.

    ``create_mlp`` alternates Linear and activation modules, so the Linear layers sit at
    even indices; any other layout (normalisation layers, missing biases) is refused.
    """
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in checkpoint.state_dict.items():
        if not key.startswith(prefix):
            continue
        index, _, param = key[len(prefix) :].partition(".")
        if not index.isdigit() or param not in ("weight", "bias"):
            raise PolicyError(f"{checkpoint.path}: unsupported layer {key} in an SB3 MLP")
        entries.setdefault(int(index), {})[param] = value
    indices = sorted(entries)
    if indices != list(range(0, 2 * len(indices), 2)):
        raise PolicyError(
            f"{checkpoint.path}: unexpected layer layout under {prefix} (indices {indices}); "
            "only Linear/activation MLPs are supported"
        )
    layers = []
    for i in indices:
        layer = entries[i]
        if set(layer) != {"weight", "bias"} or layer["weight"].ndim != 2:
            raise PolicyError(f"{checkpoint.path}: layer {prefix}{i} is not a Linear layer")
        layers.append((layer["weight"], layer["bias"]))
    return layers


def _tensor(checkpoint: SB3Checkpoint, key: str) -> torch.Tensor:
    if key not in checkpoint.state_dict:
        raise PolicyError(f"{checkpoint.path}: {key} is missing from policy.pth (corrupted?)")
    return checkpoint.state_dict[key]


def _check_chain(checkpoint: SB3Checkpoint, layers, obs_dim: int) -> None:
    width = obs_dim
    for weight, bias in layers:
        if weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise PolicyError(
                f"{checkpoint.path}: layer shapes do not chain (expected input width {width}, "
                f"got weight {tuple(weight.shape)}): corrupted checkpoint"
            )
        width = weight.shape[0]


def _bounds(space: SB3Space, path: Path, need_finite: bool):
    if space.low is None:
        raise PolicyError(f"{path}: cannot read the bounds of the action space {space.describe()}")
    if need_finite and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise PolicyError(f"{path}: SAC needs finite action bounds, got {space.describe()}")
    if np.isinf(space.low).all() and np.isinf(space.high).all():
        return None, None  # nothing to clip to
    return space.low.tolist(), space.high.tolist()


def _load_weights(actor: MLPActor, mapped: dict[str, torch.Tensor], path: Path) -> MLPActor:
    state = actor.state_dict()
    for key, value in mapped.items():
        if state[key].shape != value.shape:
            raise PolicyError(
                f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}"
            )
        state[key] = value.detach().to(state[key].dtype).clone()
    actor.load_state_dict(state)
    return actor.eval()


def _chain_to_net(layers, prefix: str = "net.") -> dict[str, torch.Tensor]:
    # Our MLPs also alternate Linear and activation: layer j is module 2j.
    mapped = {}
    for j, (weight, bias) in enumerate(layers):
        mapped[f"{prefix}{2 * j}.weight"] = weight
        mapped[f"{prefix}{2 * j}.bias"] = bias
    return mapped


def _ppo_actor(checkpoint: SB3Checkpoint, obs_dim: int, activation: str) -> MLPActor:
    path, space = checkpoint.path, checkpoint.action_space
    hidden_layers = _linear_chain(checkpoint, "mlp_extractor.shared_net.") + _linear_chain(
        checkpoint, "mlp_extractor.policy_net."
    )
    head = (_tensor(checkpoint, "action_net.weight"), _tensor(checkpoint, "action_net.bias"))
    layers = hidden_layers + [head]
    _check_chain(checkpoint, layers, obs_dim)
    hidden = [int(w.shape[0]) for w, _ in hidden_layers]
    out_dim = int(head[0].shape[0])
    mapped = _chain_to_net(layers)
    if space.kind == "Discrete":
        if out_dim != space.n:
            raise PolicyError(f"{path}: action_net has {out_dim} outputs for {space.describe()}")
        actor: MLPActor = CategoricalActor(obs_dim, out_dim, hidden, activation)
    elif space.kind == "Box" and len(space.shape) == 1:
        log_std = _tensor(checkpoint, "log_std")
        if out_dim != space.shape[0] or log_std.shape != (out_dim,):
            raise PolicyError(
                f"{path}: action_net/log_std shapes {tuple(head[0].shape)}/"
                f"{tuple(log_std.shape)} do not fit {space.describe()}"
            )
        low, high = _bounds(space, path, need_finite=False)
        actor = GaussianActor(obs_dim, out_dim, low, high, hidden, activation)
        mapped["log_std"] = log_std
    else:
        raise PolicyError(
            f"{path}: PPO/A2C policies over {space.describe()} actions are unsupported "
            "(supported: Discrete, 1-D Box)"
        )
    return _load_weights(actor, mapped, path)


def _sac_actor(checkpoint: SB3Checkpoint, obs_dim: int, activation: str) -> MLPActor:
    path, space = checkpoint.path, checkpoint.action_space
    if space.kind != "Box" or len(space.shape) != 1:
        raise PolicyError(f"{path}: SAC over {space.describe()} actions is unsupported")
    trunk = _linear_chain(checkpoint, "actor.latent_pi.")
    mu = (_tensor(checkpoint, "actor.mu.weight"), _tensor(checkpoint, "actor.mu.bias"))
    log_std = (
        _tensor(checkpoint, "actor.log_std.weight"),
        _tensor(checkpoint, "actor.log_std.bias"),
    )
    _check_chain(checkpoint, trunk + [mu], obs_dim)
    _check_chain(checkpoint, trunk + [log_std], obs_dim)
    action_dim = int(mu[0].shape[0])
    if action_dim != space.shape[0]:
        raise PolicyError(f"{path}: actor.mu has {action_dim} outputs for {space.describe()}")
    low, high = _bounds(space, path, need_finite=True)
    hidden = [int(w.shape[0]) for w, _ in trunk]
    actor = TanhNormalActor(obs_dim, action_dim, low, high, hidden, activation)
    mapped = _chain_to_net(trunk, prefix="trunk.")
    mapped.update(
        {
            "mu.weight": mu[0],
            "mu.bias": mu[1],
            "log_std.weight": log_std[0],
            "log_std.bias": log_std[1],
        }
    )
    return _load_weights(actor, mapped, path)


def _dqn_actor(checkpoint: SB3Checkpoint, obs_dim: int, activation: str) -> MLPActor:
    path, space = checkpoint.path, checkpoint.action_space
    if space.kind != "Discrete":
        raise PolicyError(f"{path}: DQN over {space.describe()} actions is unsupported")
    layers = _linear_chain(checkpoint, "q_net.q_net.")
    if not layers:
        raise PolicyError(f"{path}: q_net.q_net is missing from policy.pth (corrupted?)")
    _check_chain(checkpoint, layers, obs_dim)
    n_actions = int(layers[-1][0].shape[0])
    if n_actions != space.n:
        raise PolicyError(f"{path}: q_net has {n_actions} outputs for {space.describe()}")
    hidden = [int(w.shape[0]) for w, _ in layers[:-1]]
    actor = QValueActor(obs_dim, n_actions, hidden, activation)
    return _load_weights(actor, _chain_to_net(layers), path)


_BUILDERS = {"ppo": _ppo_actor, "sac": _sac_actor, "dqn": _dqn_actor}


def _refusal_hint(policy_class: str) -> str:
    name = policy_class.rsplit(".", 1)[-1]
    for algo, cls in SB3_POLICY_CLASSES.items():
        if policy_class == cls:
            return f"; it is an SB3 {algo.upper()} policy: load it with sb3-{algo}"
    if "Cnn" in name:
        return " (CNN policies for image observations are unsupported)"
    if "MultiInput" in name:
        return " (multi-input policies for dict observations are unsupported)"
    return ""


def sb3_actor(checkpoint: SB3Checkpoint, algo: str | None = None) -> MLPActor:
    """The tdimitation actor holding an SB3 checkpoint's policy weights.

    Args:
        checkpoint: from :func:`read_sb3_zip`.
        algo: ``"ppo"`` (also A2C), ``"sac"`` or ``"dqn"``; None picks it from the
            checkpoint's policy class.

    Raises:
        PolicyError: an unsupported policy class, space, feature or layer layout.
    """
    path = checkpoint.path
    if algo is None:
        by_class = {cls: name for name, cls in SB3_POLICY_CLASSES.items()}
        algo = by_class.get(checkpoint.policy_class)
        if algo is None:
            raise PolicyError(
                f"{path}: unsupported SB3 policy class {checkpoint.policy_class}"
                f"{_refusal_hint(checkpoint.policy_class)}; supported: "
                f"{', '.join(SB3_POLICY_CLASSES.values())} (MlpPolicy of PPO/A2C, SAC, DQN)"
            )
    if algo not in SB3_POLICY_CLASSES:
        raise PolicyError(f"unknown SB3 algorithm {algo!r}: ppo, sac or dqn")
    expected = SB3_POLICY_CLASSES[algo]
    if checkpoint.policy_class != expected:
        raise PolicyError(
            f"{path}: sb3-{algo} loads {expected} (MlpPolicy) checkpoints, this one holds "
            f"unsupported policy class {checkpoint.policy_class}"
            f"{_refusal_hint(checkpoint.policy_class)}"
        )
    kwargs = checkpoint.policy_kwargs
    if checkpoint.data.get("use_sde") or kwargs.get("use_sde"):
        raise PolicyError(f"{path}: gSDE (use_sde=True) policies are unsupported")
    extractor = kwargs.get("features_extractor_class")
    if extractor is not None and "FlattenExtractor" not in str(extractor):
        raise PolicyError(f"{path}: custom features extractor {extractor} is unsupported")
    unknown = sorted(k for k in checkpoint.state_dict if not k.startswith(_KNOWN_PREFIXES[algo]))
    if unknown:
        shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
        raise PolicyError(
            f"{path}: unsupported parameters for an SB3 {algo.upper()} MlpPolicy: {shown} "
            "(a custom features extractor or network?)"
        )
    obs = checkpoint.observation_space
    if obs.kind != "Box" or len(obs.shape) != 1:
        raise PolicyError(
            f"{path}: observation space {obs.describe()} is unsupported (MLP actors take flat "
            "1-D Box observations)"
        )
    return _BUILDERS[algo](checkpoint, obs.shape[0], _activation(checkpoint, algo))


# ------------------------------------------------------------------- env checks
def check_sb3_fits_env(checkpoint: SB3Checkpoint, actor: MLPActor, env) -> None:
    """Raise :class:`SpaceMismatchError` unless the checkpoint's spaces match ``env``'s.

    Besides widths (:func:`~tdimitation.policies.registry.check_actor_fits_env`), checks
    the kind of action space and the Box bounds, which SB3 uses to clip or rescale.
    """
    path = checkpoint.path
    obs_spec = env.observation_spec_unbatched["observation"]
    if hasattr(obs_spec, "keys") or tuple(obs_spec.shape) != checkpoint.observation_space.shape:
        shape = "dict" if hasattr(obs_spec, "keys") else tuple(obs_spec.shape)
        raise SpaceMismatchError(
            f"policy {path} takes observations of shape {checkpoint.observation_space.shape} "
            f"but the environment {getattr(env, 'env_id', '')} has {shape}"
        )
    act_spec = env.full_action_spec_unbatched["action"]
    discrete = isinstance(act_spec, CategoricalSpec) and not isinstance(act_spec, MultiCategorical)
    space = checkpoint.action_space
    if discrete != (space.kind == "Discrete"):
        raise SpaceMismatchError(
            f"policy {path} acts in {space.describe()} but the environment's action space "
            f"is {type(act_spec).__name__}{tuple(act_spec.shape)}"
        )
    check_actor_fits_env(actor, env, path)
    if space.kind == "Box" and space.low is not None:
        if isinstance(act_spec, Bounded):
            low = act_spec.space.low.reshape(-1).double().numpy()
            high = act_spec.space.high.reshape(-1).double().numpy()
        else:
            low = np.full(space.low.shape, -np.inf)
            high = np.full(space.high.shape, np.inf)
        # float32 bounds saved as text: compare with a relative tolerance.
        if not (
            np.allclose(low, space.low, rtol=1e-6) and np.allclose(high, space.high, rtol=1e-6)
        ):
            raise SpaceMismatchError(
                f"policy {path} was trained with action bounds {space.low.tolist()}.."
                f"{space.high.tolist()} but the environment's are {low.tolist()}.."
                f"{high.tolist()}; SB3 clips/rescales actions to its own bounds"
            )


def load_sb3_policy(
    path: str | os.PathLike,
    algo: str | None = None,
    env=None,
) -> MLPActor:
    """Load an SB3 ``model.zip`` as a tdimitation actor (see the module docstring).

    Args:
        path: the zip, or a directory containing ``model.zip``.
        algo: ``"ppo"`` (also A2C), ``"sac"``, ``"dqn"``, or None to pick from the file.
        env: if given, the checkpoint's spaces must match this environment's.

    Raises:
        PolicyError: missing/corrupted file or unsupported policy.
        SpaceMismatchError: the policy does not fit ``env``.
    """
    kind = "sb3" if algo is None else f"sb3-{algo}"
    checkpoint = read_sb3_zip(path, kind)
    actor = sb3_actor(checkpoint, algo)
    if env is not None:
        check_sb3_fits_env(checkpoint, actor, env)
    return actor


def _loader(algo: str | None):
    def load(path=None, env=None, **_) -> MLPActor:
        if path is None:
            kind = "sb3" if algo is None else f"sb3-{algo}"
            raise PolicyError(f"the {kind!r} policy kind needs a path: {kind}:PATH/model.zip")
        return load_sb3_policy(path, algo, env=env)

    return load


register_policy_loader("sb3", _loader(None))
for _algo in SB3_POLICY_CLASSES:
    register_policy_loader(f"sb3-{_algo}", _loader(_algo))

__all__ = [
    "SB3Checkpoint",
    "SB3Space",
    "SB3_POLICY_CLASSES",
    "check_sb3_fits_env",
    "load_sb3_policy",
    "read_sb3_zip",
    "sb3_actor",
]
