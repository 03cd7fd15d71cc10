"""``make_env``: the one way tdimitation builds environments.

An environment is named by

* a gymnasium registry id (``"CartPole-v1"``, tdimitation's ``"tdimitation/CartPoleFixed-v1"``,
  or ``"my_package:MyEnv-v0"``: gymnasium's form that imports ``my_package`` first, for
  packages that register their envs on import);
* an entry point ``"my_package.my_module:MyEnv"``: the class, or a function returning a
  ``gymnasium.Env``, is imported and called with ``env_kwargs``;
* from Python, the callable itself (or a list of them, one per sub-env).

Strings are what algorithms store in their hyperparameters (see :func:`as_env_id`), so a
checkpoint or a YAML recipe names a user's environment as well as a registered one.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch

from tdimitation.envs.fixed_horizon import FixedHorizon, register_fixed_horizon_envs
from tdimitation.envs.gym_vec import GymVecEnv
from tdimitation.errors import EnvCreationError

EnvSource = str | Callable[..., gym.Env] | Sequence[Callable[..., gym.Env]]


def _one_line(err: BaseException) -> str:
    # Error messages are printed as one line by the command line: fold any newlines.
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _registered(env_id: str) -> bool:
    try:
        gym.spec(env_id)
    except gym.error.Error:
        return False
    return True


def _unknown_id(env_id: str) -> EnvCreationError:
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return EnvCreationError(
        f"unknown environment id {env_id!r}{hint} (name a gymnasium registry id such as "
        "'CartPole-v1' or 'tdimitation/CartPoleFixed-v1', or your own env as "
        "'package.module:EnvClassOrFactory')"
    )


def _import_entry_point(env_id: str) -> Callable[..., gym.Env] | str:
    """Resolve ``"module:attr"`` to the callable it names, or to a registry id ``attr``.

    ``attr`` may also be an id that importing ``module`` registered (gymnasium's
    ``"module:EnvName-v0"`` form); ids cannot be Python attribute names, as they hold a
    ``-v`` version, so the two readings do not collide.
    """
    module_name, _, attr = env_id.partition(":")
    if not module_name or not attr:
        raise EnvCreationError(
            f"environment {env_id!r} is not of the form 'package.module:EnvClassOrFactory'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise EnvCreationError(
            f"environment {env_id!r}: cannot import module {module_name!r} ({_one_line(err)}); "
            "install its package or put its directory on the Python path (PYTHONPATH=.)"
        ) from err
    except Exception as err:  # noqa: BLE001 - any failure while importing the user's module
        raise EnvCreationError(
            f"environment {env_id!r}: importing module {module_name!r} failed: {_one_line(err)}"
        ) from err
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            break
    if target is None:
        if _registered(attr):
            return attr
        raise EnvCreationError(
            f"environment {env_id!r}: module {module_name!r} has no attribute {attr!r} and "
            f"registers no environment id {attr!r}; check the name after the ':'"
        )
    if not callable(target):
        raise EnvCreationError(
            f"environment {env_id!r} names an object of type {type(target).__name__}, which "
            "cannot be called; name a gymnasium.Env subclass or a function returning one"
        )
    return target


def _callable_name(fn: Callable) -> str:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if module and name:
        return f"{module}:{name}"
    return repr(fn)


def as_env_id(env: EnvSource) -> str:
    """The string that names ``env`` in hyperparameters, checkpoints and recipes.

    A string is returned unchanged. A class or function defined at the top level of an
    importable module becomes its entry point ``"module:Name"`` (which :func:`make_env`
    imports again). Anything else (a lambda, a nested function, a list of factories, an
    object) cannot be named, and is refused.

    Raises:
        EnvCreationError: ``env`` cannot be named by a string.
    """
    if isinstance(env, str):
        return env
    what = type(env).__name__
    if callable(env):
        module, name = getattr(env, "__module__", None), getattr(env, "__qualname__", None)
        what = _callable_name(env)
        if module and name and "<" not in name and module != "__main__":
            try:
                found = _import_entry_point(f"{module}:{name}")
            except EnvCreationError:
                found = None
            if found is env:
                return f"{module}:{name}"
        if module == "__main__":
            what += " (defined in the script being run, which cannot be imported back)"
    raise EnvCreationError(
        f"the environment {what} cannot be stored in hyperparameters or checkpoints: give "
        "env_id as a string, either 'package.module:EnvClassOrFactory' (defined at the top "
        "level of an importable module) or an id registered with gymnasium.register"
    )


def _build_one(
    creator: Callable[..., gym.Env],
    name: str,
    kwargs: dict[str, Any],
    *,
    fixed_horizon: int | None,
    max_episode_steps: int | None,
    render_mode: str | None,
) -> gym.Env:
    """Call a creator with ``kwargs``, check what it returns, add the time limit."""
    try:
        env = creator(**kwargs)
    except EnvCreationError:
        raise
    except gym.error.DependencyNotInstalled:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the user's constructor
        hint = ""
        if render_mode is not None and "render_mode" in str(err):
            hint = (
                f" (render_mode={render_mode!r} was asked for, e.g. to record videos: give "
                "the env's constructor a render_mode argument)"
            )
        raise EnvCreationError(
            f"environment {name!r} could not be built: {_one_line(err)}{hint}"
        ) from err
    if not isinstance(env, gym.Env):
        raise EnvCreationError(
            f"environment {name!r} returned a {type(env).__name__}, not a gymnasium.Env; "
            "return an instance of a gymnasium.Env subclass (gymnasium.make(...) or MyEnv())"
        )
    for attr in ("observation_space", "action_space"):
        if not isinstance(getattr(env, attr, None), gym.spaces.Space):
            env.close()
            raise EnvCreationError(
                f"environment {name!r} has no {attr} (a gymnasium space): set "
                f"self.{attr} in its constructor"
            )
    if fixed_horizon is not None:
        return FixedHorizon(env, fixed_horizon)
    if max_episode_steps is not None and max_episode_steps > 0:
        return gym.wrappers.TimeLimit(env, max_episode_steps)
    return env


def _gym_factory(
    env_id: str,
    name: str,
    *,
    fixed_horizon: int | None,
    max_episode_steps: int | None,
    render_mode: str | None,
    env_kwargs: dict[str, Any],
) -> Callable[[], gym.Env]:
    kwargs = dict(env_kwargs)
    # As gymnasium.make: render_mode only when asked, so constructors without one work.
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    # Registered envs are trusted: the passive checker only adds a call per step.
    kwargs["disable_env_checker"] = True
    if fixed_horizon is not None:
        # Drop the registered TimeLimit: the horizon wrapper sets the episode length.
        kwargs["max_episode_steps"] = -1
    elif max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps

    def factory() -> gym.Env:
        return _build_one(
            lambda: gym.make(env_id, **kwargs),
            name,
            {},
            fixed_horizon=fixed_horizon,
            max_episode_steps=None,
            render_mode=render_mode,
        )

    return factory


def _callable_factory(
    creator: Callable[..., gym.Env],
    name: str,
    *,
    fixed_horizon: int | None,
    max_episode_steps: int | None,
    render_mode: str | None,
    env_kwargs: dict[str, Any],
) -> Callable[[], gym.Env]:
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode

    def factory() -> gym.Env:
        return _build_one(
            creator,
            name,
            kwargs,
            fixed_horizon=fixed_horizon,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
        )

    return factory


def make_env(
    env_id: EnvSource,
    num_envs: int = 1,
    *,
    seed: int | None = None,
    fixed_horizon: int | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    device: torch.device | str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> GymVecEnv:
    """Build a batched torchrl environment of ``num_envs`` gymnasium sub-envs.

    Args:
        env_id: what to build, one of

            * a gymnasium registry id: ``"CartPole-v1"``, one of tdimitation's fixed-horizon
              ids (``"tdimitation/CartPoleFixed-v1"``, see :data:`FIXED_HORIZON_ENVS`), an
              id you registered with ``gymnasium.register``, or ``"my_package:MyEnv-v0"``
              (imports ``my_package``, which registers ``MyEnv-v0``, as ``gymnasium.make``);
            * an entry point ``"my_package.my_module:MyEnv"``: a ``gymnasium.Env``
              subclass or a function returning a ``gymnasium.Env``, imported and called
              with ``env_kwargs``; the string is the env's name in messages and metadata;
            * a callable returning a ``gymnasium.Env`` (called with ``env_kwargs``), or a
              list of them, one per sub-env (which sets ``num_envs``). Algorithms store
              their ``env_id`` in checkpoints and need a string: see :func:`as_env_id`.
        num_envs: number of sub-envs stepped together (batch size ``[num_envs]``).
        seed: seed of the first reset; sub-env ``i`` gets ``seed + i``.
        fixed_horizon: if set, every episode lasts exactly this many steps (see
            :class:`FixedHorizon`); a registered env's own time limit is removed.
        max_episode_steps: time limit: overrides a registered one, or adds one to an
            entry point or callable (ignored with ``fixed_horizon``).
        render_mode: passed to the env's constructor only when given, as
            ``gymnasium.make`` does (``"rgb_array"`` for videos): constructors that take
            no ``render_mode`` work otherwise.
        device: device of the returned tensors.
        env_kwargs: keyword arguments of the env's constructor (for a registered id, they
            update its registered kwargs, as in ``gymnasium.make``).

    Returns:
        A :class:`GymVecEnv` with batch size ``[num_envs]``.

    Raises:
        EnvCreationError: one line naming the env and the cause: an id neither registered
            nor importable (with close matches), a module that does not import, a missing
            or non-callable attribute, a constructor that raised or returned something
            other than a ``gymnasium.Env``, a missing optional dependency, a bad option.
    """
    env_kwargs = dict(env_kwargs or {})
    if fixed_horizon is not None and int(fixed_horizon) <= 0:
        raise EnvCreationError(f"fixed_horizon must be a positive step count, got {fixed_horizon}")
    options = {
        "fixed_horizon": fixed_horizon,
        "max_episode_steps": max_episode_steps,
        "render_mode": render_mode,
        "env_kwargs": env_kwargs,
    }
    name: str | None = None
    shown = "the environment"  # how messages name the env
    if isinstance(env_id, str) or callable(env_id):
        if int(num_envs) < 1:
            raise EnvCreationError(f"num_envs must be at least 1, got {num_envs}")
        if isinstance(env_id, str):
            name = shown = env_id
            factory = _string_factory(env_id, options)
        else:
            shown = _callable_name(env_id)
            factory = _callable_factory(env_id, shown, **options)
        env_fns = [factory] * int(num_envs)
    else:
        env_fns = [_callable_factory(fn, _callable_name(fn), **options) for fn in env_id]
        if not env_fns:
            raise EnvCreationError("an empty list of environment factories was given")
    try:
        return GymVecEnv(env_fns, env_id=name, device=device, seed=seed, env_kwargs=env_kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise EnvCreationError(
            f"{shown} needs an optional dependency: {_one_line(err)} "
            "(install tdimitation's dependencies with the README's install command, or "
            "pip install 'gymnasium[box2d]' / 'gymnasium[mujoco]')"
        ) from None
    except EnvCreationError as err:
        if shown in str(err) or "environment '" in str(err):
            raise
        # Errors found on the built envs (unsupported spaces, sub-envs that disagree).
        raise EnvCreationError(f"environment {shown!r}: {err}") from err


def _string_factory(env_id: str, options: dict[str, Any]) -> Callable[[], gym.Env]:
    register_fixed_horizon_envs()
    if ":" not in env_id:
        if not _registered(env_id):
            raise _unknown_id(env_id) from None
        return _gym_factory(env_id, env_id, **options)
    target = _import_entry_point(env_id)
    if isinstance(target, str):
        return _gym_factory(target, env_id, **options)
    return _callable_factory(target, env_id, **options)
