"""What a reward net needs to know of an environment's spaces, and observation encoding.

Array observations are flattened; discrete observations (``Discrete(n)``, int64 indices
of shape ``()``) are one-hot encoded to ``n`` features, as discrete actions are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchrl.data import Categorical as CategoricalSpec
from torchrl.data import Composite, MultiCategorical

from tdimitation.errors import SpaceMismatchError
from tdimitation.rewards.errors import RewardNetError


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


def num_states_from_env(env) -> int | None:
    """Number of values of ``env``'s discrete observation (``Discrete(n)``), else None.

    FrozenLake-v1 gives 16. Reward nets one-hot encode such observations (as they do
    discrete actions), so their input width is ``n`` rather than 1.
    """
    obs_spec = env.observation_spec_unbatched["observation"]
    if isinstance(obs_spec, MultiCategorical):
        raise SpaceMismatchError(
            f"reward nets do not support MultiDiscrete observations ({obs_spec.shape}); wrap "
            "the env so that observations are one Discrete index or a Box array"
        )
    if isinstance(obs_spec, CategoricalSpec):
        return int(obs_spec.space.n)
    return None


def env_spaces(env) -> dict:
    """The reward-net constructor arguments describing ``env``'s spaces.

    ``observation_shape``, ``action_dim``, ``discrete_actions`` (see
    :func:`spaces_from_env`) and ``num_states`` (see :func:`num_states_from_env`).
    """
    obs_shape, action_dim, discrete = spaces_from_env(env)
    return {
        "observation_shape": obs_shape,
        "action_dim": action_dim,
        "discrete_actions": discrete,
        "num_states": num_states_from_env(env),
    }


def _check_num_states(num_states: int | None, observation_shape: tuple[int, ...]) -> None:
    if num_states is None:
        return
    if observation_shape != () or int(num_states) < 1:
        raise RewardNetError(
            f"num_states={num_states} describes a discrete observation (an index of shape "
            f"()), but observation_shape is {observation_shape}; pass num_states=None for "
            "array observations"
        )


def observation_batch_shape(
    value: torch.Tensor, observation_shape: tuple[int, ...], num_states: int | None, name: str
) -> torch.Size:
    """Leading batch shape of observations ``value`` (discrete: indices or one-hot rows)."""
    if num_states is not None and value.is_floating_point():
        if value.shape[-1:] != (num_states,):
            raise SpaceMismatchError(
                f"expected discrete {name}s as int64 indices or one-hot rows [*batch, "
                f"{num_states}], got float {name}s of shape {tuple(value.shape)}"
            )
        return value.shape[:-1]
    nd = len(observation_shape)
    if tuple(value.shape[value.dim() - nd :]) != observation_shape:
        raise SpaceMismatchError(
            f"expected {name}s of shape [*batch, {', '.join(map(str, observation_shape))}], "
            f"got {tuple(value.shape)}: the data comes from another environment"
        )
    return value.shape[: value.dim() - nd]


def observation_features(
    value: torch.Tensor, batch: torch.Size, num_states: int | None
) -> torch.Tensor:
    """Observations as float features ``[*B, width]``: flattened, or one-hot if discrete."""
    if num_states is None:
        return value.reshape(*batch, -1).to(torch.get_default_dtype())
    if value.is_floating_point():
        # Already one-hot (or a distribution over the values).
        return value.reshape(*batch, num_states).to(torch.get_default_dtype())
    if tuple(value.shape) != tuple(batch):
        raise SpaceMismatchError(
            f"expected discrete observations of shape {tuple(batch)} (int64 indices), got "
            f"{tuple(value.shape)}"
        )
    try:
        encoded = F.one_hot(value.long(), num_states)
    except RuntimeError:  # one_hot checks the range itself; no second pass over the data
        raise SpaceMismatchError(
            f"discrete observations must be indices in [0, {num_states}), got values from "
            f"{value.min().item()} to {value.max().item()}"
        ) from None
    return encoded.to(torch.get_default_dtype())


def observation_width(observation_shape: Sequence[int], num_states: int | None) -> int:
    """Width of :func:`observation_features` (``num_states`` for discrete observations)."""
    return int(num_states) if num_states is not None else _flat_size(observation_shape)


__all__ = [
    "spaces_from_env",
    "num_states_from_env",
    "env_spaces",
    "observation_batch_shape",
    "observation_features",
    "observation_width",
]
