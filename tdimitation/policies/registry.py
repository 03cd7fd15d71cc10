"""Loading and saving policies by kind, with a registry users can extend.

``load_policy(kind, path=None, env=None)`` resolves:

* ``"tdimitation"``: a file written by :func:`save_policy`, or a training checkpoint;
* ``"scripted"``: a scripted expert, by name (``path``) or picked for ``env``;
* ``"random"`` / ``"zero"``: uniformly random or all-zero actions for ``env``.

Command lines name policies as ``kind[:argument]``, e.g. ``scripted:cartpole``,
``tdimitation:runs/policy.pt``, ``random`` (see :func:`policy_from_string`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict.nn import TensorDictModuleBase

from tdimitation.errors import PolicyError, SpaceMismatchError
from tdimitation.policies.actors import ACTOR_CLASSES
from tdimitation.policies.base import RandomPolicy, ZeroPolicy
from tdimitation.utils import atomic_path

POLICY_FILE_FORMAT = "tdimitation-policy"
POLICY_FILE_VERSION = 1

PolicyLoader = Callable[..., TensorDictModuleBase]
POLICY_LOADERS: dict[str, PolicyLoader] = {}


def register_policy_loader(kind: str, loader: PolicyLoader) -> None:
    """Register ``loader(path, env=None, **kwargs) -> policy`` under ``kind``."""
    POLICY_LOADERS[kind] = loader


def policy_payload(policy: TensorDictModuleBase) -> dict:
    """The saved form of an MLP actor: format tag, class name, config and state dict."""
    cls_name = type(policy).__name__
    if cls_name not in ACTOR_CLASSES or not hasattr(policy, "config"):
        raise PolicyError(
            f"save_policy supports {sorted(ACTOR_CLASSES)}, got {cls_name}; save other "
            "modules with torch.save(module.state_dict(), path)"
        )
    return {
        "format": POLICY_FILE_FORMAT,
        "version": POLICY_FILE_VERSION,
        "class": cls_name,
        "config": dict(policy.config),
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
    }


def checkpoint_policy_entry(policy: TensorDictModuleBase) -> tuple[dict | None, str | None]:
    """What a training checkpoint stores as its exported policy: ``(payload, None)``, or
    ``(None, reason)`` for policies the file format cannot hold (e.g. torchrl modules,
    which are saved in the checkpoint's state dict instead).
    """
    try:
        return policy_payload(policy), None
    except PolicyError as err:
        return None, str(err)


def save_policy(policy: TensorDictModuleBase, path: str | os.PathLike) -> Path:
    """Save an MLP actor: its class, constructor arguments and state dict.

    The file loads with ``torch.load(weights_only=True)``; it is written atomically.
    """
    payload = policy_payload(policy)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def check_actor_fits_env(policy: TensorDictModuleBase, env, path) -> None:
    import math

    obs_spec = env.observation_spec_unbatched["observation"]
    obs_dim = int(math.prod(obs_spec.shape)) if len(obs_spec.shape) else 1
    cfg = policy.config
    if cfg["obs_dim"] != obs_dim:
        raise SpaceMismatchError(
            f"policy {path} takes observations of width {cfg['obs_dim']} but the environment "
            f"{getattr(env, 'env_id', '')} has width {obs_dim}: it was trained on another env"
        )
    act_spec = env.full_action_spec_unbatched["action"]
    if "n_actions" in cfg:
        n = getattr(getattr(act_spec, "space", None), "n", None)
        if n != cfg["n_actions"]:
            raise SpaceMismatchError(
                f"policy {path} chooses among {cfg['n_actions']} discrete actions but the "
                f"environment's action space is {act_spec}"
            )
    elif int(math.prod(act_spec.shape)) != cfg["action_dim"]:
        raise SpaceMismatchError(
            f"policy {path} outputs {cfg['action_dim']}-dimensional actions but the "
            f"environment expects shape {tuple(act_spec.shape)}"
        )


def _load_tdimitation(path: str | os.PathLike | None, env=None, **_) -> TensorDictModuleBase:
    if path is None:
        raise PolicyError("the 'tdimitation' policy kind needs a path: tdimitation:PATH")
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PolicyError(
            f"policy file {path} is corrupted or not a tdimitation policy ({type(err).__name__}); "
            "re-export it with save_policy"
        ) from None
    if isinstance(payload, dict) and "tdimitation" in payload and "state_dict" in payload:
        # A training checkpoint: its exported policy is stored beside the run's state.
        state = payload["tdimitation"]
        payload = state.get("policy")
        if payload is None and state.get("policy_not_saved"):
            raise PolicyError(
                f"{path} holds no exported policy ({state['policy_not_saved']}); load the "
                "algorithm with load_from_checkpoint and use its export_policy()"
            )
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FILE_FORMAT:
        raise PolicyError(
            f"{path} is neither a tdimitation policy file nor a training checkpoint with a "
            "policy; export one with save_policy"
        )
    cls = ACTOR_CLASSES.get(payload.get("class"))
    if cls is None:
        raise PolicyError(f"{path} holds an unknown policy class {payload.get('class')!r}")
    policy = cls(**payload["config"])
    policy.load_state_dict(payload["state_dict"])
    if env is not None:
        check_actor_fits_env(policy, env, path)
    return policy


def _load_scripted(name: str | None, env=None, **_) -> TensorDictModuleBase:
    from tdimitation.policies.scripted import make_scripted_policy, scripted_policy_for_env

    if name is None:
        env_id = getattr(env, "env_id", None)
        env_kwargs = getattr(env, "env_kwargs", None)
        name = scripted_policy_for_env(env_id, env_kwargs) if env_id else None
        if name is None:
            raise PolicyError(
                f"no scripted expert is known for environment {env_id!r}; name one: scripted:NAME"
            )
    return make_scripted_policy(str(name))


def _need_env(kind: str, env):
    if env is None:
        raise PolicyError(f"the {kind!r} policy needs the environment (for its action space)")
    return env


register_policy_loader("tdimitation", _load_tdimitation)
register_policy_loader("scripted", _load_scripted)
register_policy_loader(
    "random",
    lambda arg=None, env=None, seed=None, **_: RandomPolicy(_need_env("random", env), seed),
)
register_policy_loader("zero", lambda arg=None, env=None, **_: ZeroPolicy(_need_env("zero", env)))


def load_policy(kind: str, path: str | os.PathLike | None = None, env=None, **kwargs):
    """Load a policy of a registered ``kind`` (see the module docstring).

    Args:
        kind: a key of :data:`POLICY_LOADERS`.
        path: the kind's argument: a file path, or a scripted expert's name.
        env: the environment the policy will act in; used to check spaces and to build
            random/zero policies.
        **kwargs: passed to the loader (e.g. ``seed`` for ``random``).
    """
    loader = POLICY_LOADERS.get(kind)
    if loader is None:
        raise PolicyError(f"unknown policy kind {kind!r}; known kinds: {sorted(POLICY_LOADERS)}")
    return loader(path, env=env, **kwargs)


def policy_from_string(spec: str, env=None, **kwargs) -> TensorDictModuleBase:
    """Resolve ``kind[:argument]`` (e.g. ``scripted:pendulum``) with :func:`load_policy`."""
    kind, _, arg = spec.partition(":")
    return load_policy(kind, arg or None, env=env, **kwargs)
