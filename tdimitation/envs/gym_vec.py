"""A lean torchrl ``EnvBase`` over one gymnasium synchronous vector env.

Why not ``GymEnv(id, num_envs=N)``: with gymnasium 1.x it records corrupted transitions at
episode ends (zero final observations and a junk step after each reset, as its vector env
autoresets on the next step).
Why not ``GymWrapper`` plus transforms: each torchrl step then costs ~220 µs against ~57 µs
for the gymnasium step itself (see the collection table in ``benchmarks/RESULTS.md``). This env

* steps its sub-envs in one Python loop into preallocated numpy arrays (gymnasium's
  ``SyncVectorEnv`` costs ~50% more: it concatenates and deep-copies every step), and
  resets finished sub-envs explicitly, never automatically, so the true final observation
  is kept and no junk transition follows a reset;
* casts observations to float32 and tracks the running episode return and length in numpy
  (``episode_reward``, ``step_count``), which replaces three torchrl transforms;
* overrides ``step_and_maybe_reset`` to build its TensorDicts straight from numpy;
* exposes :meth:`numpy_step` / :meth:`numpy_reset` for the lean collector
  (:class:`tdimitation.data.VecCollector`), which skips TensorDict building per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from tdimitation.envs.specs import space_to_spec, torch_dtype
from tdimitation.errors import EnvCreationError

OBS_KEY = "observation"


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _np_to_torch(array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    # from_numpy shares memory and costs ~1 µs; the cast only happens for float64 spaces.
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


class GymVecEnv(EnvBase):
    """Batched torchrl environment over ``num_envs`` gymnasium envs stepped in lockstep.

    Batch size is ``[num_envs]``. Keys follow torchrl's TED layout: ``observation`` (a
    nested TensorDict for Dict spaces), ``action`` (int64 indices for Discrete),
    ``("next", "reward")`` float32 ``[N, 1]``, ``done``/``terminated``/``truncated`` bool
    ``[N, 1]``, plus ``episode_reward`` (running return) and ``step_count`` (steps so far in
    the episode) at the root and under ``"next"``.

    Args:
        env_fns: one factory per sub-env, each returning a ``gymnasium.Env``.
        env_id: name used in messages and metadata.
        device: device of the returned tensors.
        seed: seed of the first reset (sub-env ``i`` gets ``seed + i``).
        env_kwargs: the ``gymnasium.make`` keyword arguments the sub-envs were built with
            (recorded, e.g. so a scripted expert can tell continuous LunarLander apart).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        env_id: str | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
        env_kwargs: dict | None = None,
    ) -> None:
        if not env_fns:
            raise EnvCreationError("GymVecEnv needs at least one sub-env factory")
        envs: list[gym.Env] = []
        try:
            for fn in env_fns:
                envs.append(fn())
        except BaseException:
            # Sub-envs may hold windows, files or simulators: release the ones built.
            for sub in envs:
                sub.close()
            raise
        num_envs = len(envs)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.envs = envs
        first_spec = envs[0].spec
        self.env_id = env_id or (first_spec.id if first_spec is not None else None)
        # The gymnasium.make keyword arguments, e.g. LunarLander's continuous=True.
        self.env_kwargs = dict(env_kwargs or {})
        self.num_envs = num_envs
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        for i, sub in enumerate(envs[1:], start=1):
            if (
                sub.observation_space != self.single_observation_space
                or sub.action_space != self.single_action_space
            ):
                for built in envs:
                    built.close()
                raise EnvCreationError(
                    f"sub-env {i} has spaces {sub.observation_space}, {sub.action_space}; "
                    f"sub-env 0 has {self.single_observation_space}, "
                    f"{self.single_action_space}: every sub-env needs the same spaces"
                )
        self._dict_obs = isinstance(self.single_observation_space, gym.spaces.Dict)
        self._make_specs()
        self._next_seed = seed
        self._episode_return = np.zeros(num_envs, dtype=np.float32)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)
        self._needs_full_reset = True
        self._obs = self._empty_obs()
        self._reward = np.zeros(num_envs, dtype=np.float32)
        self._terminated = np.zeros(num_envs, dtype=bool)
        self._truncated = np.zeros(num_envs, dtype=bool)

    def _empty_obs(self):
        space = self.single_observation_space
        if self._dict_obs:
            return {
                k: np.zeros((self.num_envs,) + sub.shape, dtype=sub.dtype)
                for k, sub in space.spaces.items()
            }
        return np.zeros((self.num_envs,) + space.shape, dtype=space.dtype)

    def _write_obs(self, i: int, obs) -> None:
        if self._dict_obs:
            for k, v in obs.items():
                self._obs[k][i] = v
        else:
            self._obs[i] = obs

    def _obs_copy(self):
        if self._dict_obs:
            return {k: v.copy() for k, v in self._obs.items()}
        return self._obs.copy()

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        n = torch.Size([self.num_envs])
        obs_spec = space_to_spec(self.single_observation_space, n, self.device)
        self.observation_spec = Composite(
            {
                OBS_KEY: obs_spec,
                "episode_reward": Unbounded(
                    shape=n + (1,), dtype=torch.float32, device=self.device
                ),
                "step_count": Unbounded(shape=n + (1,), dtype=torch.int64, device=self.device),
            },
            shape=n,
            device=self.device,
        )
        self.action_spec = space_to_spec(self.single_action_space, n, self.device)
        self.reward_spec = Unbounded(shape=n + (1,), dtype=torch.float32, device=self.device)
        flag = Categorical(2, shape=n + (1,), dtype=torch.bool, device=self.device)
        self.full_done_spec = Composite(
            done=flag.clone(),
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=n,
            device=self.device,
        )
        # numpy dtype matching the stored torch dtype (float64 spaces are stored as float32).
        self._on_cpu = self.device is None or self.device.type == "cpu"
        if self._dict_obs:
            self._obs_np_dtypes = {
                k: _numpy_dtype(torch_dtype(s.dtype))
                for k, s in self.single_observation_space.spaces.items()
            }
        else:
            self._obs_np_dtype = _numpy_dtype(torch_dtype(self.single_observation_space.dtype))

    # --------------------------------------------------------- numpy fast path
    def numpy_reset(self, mask: np.ndarray | None = None):
        """Reset the sub-envs selected by ``mask`` (all when None); return all observations.

        Observations of sub-envs not in ``mask`` are their current ones. The episode return
        and length of the reset sub-envs go back to zero. The first reset after creation or
        :meth:`set_seed` resets every sub-env, seeding sub-env ``i`` with ``seed + i``.
        """
        if mask is None or self._needs_full_reset:
            seed = self._next_seed
            self._next_seed = None
            for i, sub in enumerate(self.envs):
                obs, _ = sub.reset(seed=None if seed is None else seed + i)
                self._write_obs(i, obs)
            self._episode_return[:] = 0
            self._episode_length[:] = 0
            self._needs_full_reset = False
        else:
            for i in np.flatnonzero(mask):
                obs, _ = self.envs[i].reset()
                self._write_obs(i, obs)
            self._episode_return[mask] = 0
            self._episode_length[mask] = 0
        return self._obs_copy()

    def numpy_step(self, actions: np.ndarray):
        """Step every sub-env; return ``(obs, reward, terminated, truncated)`` numpy arrays.

        Sub-envs that report done must be reset with :meth:`numpy_reset` before the next
        step (there is no autoreset, so that the true final observation is kept).
        """
        reward, terminated, truncated = self._reward, self._terminated, self._truncated
        for i, sub in enumerate(self.envs):
            obs, reward[i], terminated[i], truncated[i], _ = sub.step(actions[i])
            self._write_obs(i, obs)
        self._episode_return += reward
        self._episode_length += 1
        return self._obs_copy(), reward.copy(), terminated.copy(), truncated.copy()

    @property
    def episode_return(self) -> np.ndarray:
        """Running return of the current episode of each sub-env (float32, ``[N]``)."""
        return self._episode_return

    @property
    def episode_length(self) -> np.ndarray:
        """Steps taken so far in the current episode of each sub-env (int64, ``[N]``)."""
        return self._episode_length

    def observation_to_tensor(self, obs) -> torch.Tensor | TensorDict:
        """Convert a batch of numpy observations to the env's tensor layout (shares memory)."""
        if self._dict_obs:
            return TensorDict(
                {k: _np_to_torch(v, self._obs_np_dtypes[k]) for k, v in obs.items()},
                batch_size=self.batch_size,
                device=self.device,
            )
        tensor = _np_to_torch(obs, self._obs_np_dtype)
        return tensor if self._on_cpu else tensor.to(self.device)

    # -------------------------------------------------------------- EnvBase API
    def _stats(self) -> dict[str, torch.Tensor]:
        return {
            "episode_reward": torch.from_numpy(self._episode_return.copy()).unsqueeze(-1),
            "step_count": torch.from_numpy(self._episode_length.copy()).unsqueeze(-1),
        }

    def _flags(self, terminated: np.ndarray, truncated: np.ndarray) -> dict[str, torch.Tensor]:
        te = torch.from_numpy(np.asarray(terminated, dtype=bool)).unsqueeze(-1)
        tr = torch.from_numpy(np.asarray(truncated, dtype=bool)).unsqueeze(-1)
        return {"terminated": te, "truncated": tr, "done": te | tr}

    def _to_device(self, td: TensorDict) -> TensorDict:
        return td if self.device is None or self.device.type == "cpu" else td.to(self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.num_envs).cpu().numpy()
            if mask.all():
                mask = None
        obs = self.numpy_reset(mask)
        zeros = np.zeros(self.num_envs, dtype=bool)
        td = TensorDict(
            {
                OBS_KEY: self.observation_to_tensor(obs),
                **self._stats(),
                **self._flags(zeros, zeros),
            },
            batch_size=self.batch_size,
        )
        return self._to_device(td)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").cpu().numpy()
        obs, reward, terminated, truncated = self.numpy_step(action)
        td = TensorDict(
            {
                OBS_KEY: self.observation_to_tensor(obs),
                "reward": torch.from_numpy(reward).unsqueeze(-1),
                **self._stats(),
                **self._flags(terminated, truncated),
            },
            batch_size=self.batch_size,
        )
        return self._to_device(td)

    def step_and_maybe_reset(
        self, tensordict: TensorDictBase
    ) -> tuple[TensorDictBase, TensorDictBase]:
        """Step, then reset the sub-envs that finished: one gymnasium call each.

        Same contract as :meth:`torchrl.envs.EnvBase.step_and_maybe_reset`: the first
        output is the input with ``"next"`` filled (true final observations kept), the
        second is the root of the next step, with fresh observations where an episode
        ended.
        """
        next_td = self._step(tensordict)
        tensordict.set("next", next_td)
        done = next_td.get("done").reshape(-1).cpu().numpy()
        if not done.any():
            carry = next_td.exclude("reward")
            return tensordict, carry
        obs = self.numpy_reset(done)
        zeros = np.zeros(self.num_envs, dtype=bool)
        carry = TensorDict(
            {
                OBS_KEY: self.observation_to_tensor(obs),
                **self._stats(),
                **self._flags(zeros, zeros),
            },
            batch_size=self.batch_size,
        )
        return tensordict, self._to_device(carry)

    def _set_seed(self, seed: int | None) -> None:
        # Takes effect at the next full reset, as gymnasium seeds on reset.
        self._next_seed = seed
        self._needs_full_reset = True
        if seed is not None:
            for i, sub in enumerate(self.envs):
                sub.action_space.seed(seed + i)

    def render(self) -> list[np.ndarray]:
        """Rendered frames of every sub-env (needs ``render_mode="rgb_array"``)."""
        return [sub.render() for sub in self.envs]

    def close(self, *, raise_if_closed: bool = True) -> None:
        if not self.is_closed:
            for sub in self.envs:
                sub.close()
        super().close(raise_if_closed=raise_if_closed)

    def __repr__(self) -> str:
        return (
            f"GymVecEnv(env_id={self.env_id!r}, num_envs={self.num_envs}, "
            f"observation_space={self.single_observation_space}, "
            f"action_space={self.single_action_space})"
        )
