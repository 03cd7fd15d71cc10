"""Tabular models: matrices, gymnasium behaviour, registered ids, rollouts and storage."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from tdimitation.data.rollout import rollout
from tdimitation.data.storage import load_trajectories, save_trajectories
from tdimitation.envs import TABULAR_ENVS, CliffWorld, TabularModel, make_env, random_mdp
from tdimitation.errors import TabularModelError
from tdimitation.policies.base import RandomPolicy


def test_cliff_world_matrices():
    env = CliffWorld(width=5, height=3, horizon=6)
    T, R = env.transition_matrix, env.reward_matrix
    assert T.shape == (15, 4, 15)
    np.testing.assert_allclose(T.sum(-1), 1.0)
    # Cell (row 1, col 1) = 6; action 3 = (drow +1, dcol +1) aims at (2, 2) = 12, and the
    # wind blows one row up, to (1, 2) = 7.
    assert T[6, 3, 12] == pytest.approx(0.7) and T[6, 3, 7] == pytest.approx(0.3)
    # At row 0, aiming up clamps: target and blown cell coincide, probability 1.
    assert T[1, 1, 2] == pytest.approx(1.0)
    assert R[0] == -1 and R[4] == 10 and R[2] == -10 and R[7] == -1
    np.testing.assert_array_equal(env.observation_matrix, np.eye(15, dtype=np.float32))
    xy = CliffWorld(width=5, height=3, horizon=6, use_xy_obs=True).observation_matrix
    np.testing.assert_allclose(xy[7], [2 / 4, 1 / 2])


def test_from_matrices_steps_follow_the_model():
    T = np.zeros((3, 2, 3))
    T[:, 0, 1] = 1.0  # action 0 always leads to state 1
    T[:, 1, :] = [0.2, 0.3, 0.5]
    env = TabularModel(T, [0.0, 1.0, 2.0], None, [0.0, 0.0, 1.0], horizon=4)
    obs, info = env.reset(seed=0)
    assert info["state"] == 2 and obs.tolist() == [0.0, 0.0, 1.0]
    obs, reward, terminated, truncated, info = env.step(0)
    assert info["state"] == 1 and reward == 2.0  # the reward of the state the step left
    assert not terminated and not truncated
    counts = np.zeros(3)
    for _ in range(4000):
        env.reset()
        counts[env.step(1)[-1]["state"]] += 1
    np.testing.assert_allclose(counts / counts.sum(), [0.2, 0.3, 0.5], atol=0.03)
    env.reset()
    flags = [env.step(0)[3] for _ in range(4)]
    assert flags == [False, False, False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transition_matrix": np.ones((3, 2))}, "shape"),
        ({"transition_matrix": np.full((2, 1, 2), 0.7)}, "probability"),
        ({"reward_matrix": np.zeros(5)}, "reward_matrix"),
        ({"observation_matrix": np.zeros((3, 2))}, "observation_matrix"),
        ({"initial_state_dist": [0.5, 0.6]}, "initial_state_dist"),
        ({"horizon": 0}, "horizon"),
        ({"reward_matrix": [np.nan, 0.0]}, "NaN"),
    ],
)
def test_bad_matrices(kwargs, message):
    args = {
        "transition_matrix": np.full((2, 1, 2), 0.5),
        "reward_matrix": np.zeros(2),
        "observation_matrix": None,
        "initial_state_dist": None,
        "horizon": 3,
        **kwargs,
    }
    with pytest.raises(TabularModelError, match=message):
        TabularModel(**args)


def test_random_mdp_is_repeatable_and_branches():
    a, b = (
        random_mdp(12, 3, 5, branch_factor=3, seed=4),
        random_mdp(12, 3, 5, branch_factor=3, seed=4),
    )
    np.testing.assert_array_equal(a.transition_matrix, b.transition_matrix)
    np.testing.assert_array_equal(a.reward_matrix, b.reward_matrix)
    assert ((a.transition_matrix > 0).sum(-1) == 3).all()
    np.testing.assert_allclose(a.transition_matrix.sum(-1), 1.0)
    c = random_mdp(12, 3, 5, seed=5, obs_dim=4)
    assert c.observation_matrix.shape == (12, 4)
    assert not np.array_equal(c.transition_matrix, a.transition_matrix)


def test_registered_ids_build():
    assert "tdimitation/CliffWorld100x20XY-v0" in TABULAR_ENVS
    env = gym.make("tdimitation/CliffWorld15x6-v0").unwrapped
    assert env.transition_matrix.shape == (90, 4, 90) and env.horizon == 18
    assert gym.make("tdimitation/RandomMDP-v0").unwrapped.n_states == 16


@pytest.mark.parametrize(
    "env_id", ["tdimitation/CliffWorld7x4-v0", "tdimitation/CliffWorld7x4XY-v0"]
)
def test_rollout_and_storage(env_id, tmp_path):
    env = make_env(env_id, 2, seed=0)
    data = rollout(RandomPolicy(env, seed=0), env, min_episodes=4)
    env.close()
    episode = data.get("episode")
    lengths = torch.bincount(episode)
    assert (lengths == 9).all()  # every episode lasts the horizon
    ends = data.get(("next", "truncated")).reshape(-1)
    assert ends.sum() == lengths.numel() and not data.get(("next", "terminated")).any()
    obs = data.get("observation")
    assert obs.dtype == torch.float32 and obs.shape[-1] == (28 if "XY" not in env_id else 2)
    save_trajectories(tmp_path / "demos", data)
    back = load_trajectories(tmp_path / "demos")
    torch.testing.assert_close(back.get("observation"), obs)
    torch.testing.assert_close(back.get("action"), data.get("action"))


def test_expose_state_observations():
    env = make_env("tdimitation/CliffWorld7x4XY-v0", 1, seed=0, env_kwargs={"expose_state": True})
    td = env.rollout(3)
    env.close()
    obs = td.get("observation")
    assert obs.dtype == torch.int64 and obs[0, 0].item() == 0  # the start cell
