"""The seals-style MuJoCo tasks: positions in the observation, no early termination."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tdimitation.envs import FIXED_HORIZON_ENVS, make_env

MUJOCO_TASKS = sorted(k for k in FIXED_HORIZON_ENVS if k.endswith("Fixed-v5"))


def test_the_five_tasks_are_registered():
    names = {k.split("/")[1].removesuffix("Fixed-v5") for k in MUJOCO_TASKS}
    assert names == {"Ant", "HalfCheetah", "Hopper", "Swimmer", "Walker2d"}


@pytest.mark.parametrize("env_id", MUJOCO_TASKS)
def test_observation_starts_with_the_bodys_full_position(env_id):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    base_id = FIXED_HORIZON_ENVS[env_id][0]
    stock = gym.make(base_id).observation_space.shape[0]
    qpos = env.unwrapped.data.qpos
    # The stock task drops the root's x (and y, for Ant and Swimmer) position; ours keeps it.
    assert obs.shape[0] > stock
    assert obs.shape[0] - stock == {"Ant": 2, "Swimmer": 2}.get(base_id[:-3], 1)
    np.testing.assert_allclose(obs[: qpos.shape[0]], qpos)
    obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_allclose(obs[: qpos.shape[0]], env.unwrapped.data.qpos)
    env.close()


@pytest.mark.parametrize("env_id", ["tdimitation/HopperFixed-v5", "tdimitation/Walker2dFixed-v5"])
def test_an_unhealthy_body_keeps_going_to_the_horizon(env_id):
    env = make_env(env_id, num_envs=1, seed=0)
    td = env.rollout(1000, break_when_any_done=False)  # [1 sub-env, 1000 steps]
    assert not td["next", "terminated"].any()
    assert td["next", "truncated"][0, :, 0].nonzero().flatten().tolist() == [999]
    # Random actions make these bodies fall long before step 1,000: the stock task would
    # have ended the episode (its health check is what the fixed task switches off).
    stock = gym.make(FIXED_HORIZON_ENVS[env_id][0])
    stock.reset(seed=0)
    ended = any(stock.step(stock.action_space.sample())[2] for _ in range(1000))
    assert ended
    env.close()
