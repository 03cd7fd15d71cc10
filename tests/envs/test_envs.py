import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from tdimitation.envs import FIXED_HORIZON_ENVS, FixedHorizon, make_env
from tdimitation.errors import EnvCreationError
from tests.conftest import DictObsEnv, FixedLengthEnv


def _random_rollout(env, steps):
    return env.rollout(steps, break_when_any_done=False)


def test_cartpole_batched_specs_and_dtypes():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    assert env.batch_size == torch.Size([4])
    check_env_specs(env)
    td = _random_rollout(env, 50)
    assert td["observation"].dtype == torch.float32
    assert td["action"].dtype == torch.int64 and td["action"].shape == (4, 50)
    assert td["next", "reward"].shape == (4, 50, 1)


def test_float64_observations_are_cast_to_float32():
    def pendulum_float64():
        space = gym.spaces.Box(-8, 8, (3,), np.float64)
        base = gym.make("Pendulum-v1")
        return gym.wrappers.TransformObservation(base, lambda o: o.astype(np.float64), space)

    env = make_env(pendulum_float64, num_envs=2, seed=0)
    td = _random_rollout(env, 5)
    assert td["observation"].dtype == torch.float32
    assert td["next", "observation"].dtype == torch.float32


@pytest.mark.parametrize("num_envs", [1, 3])
def test_episode_boundaries_are_correct(num_envs):
    """True final observation kept, continuity within episodes, no junk after reset."""
    env = make_env("CartPole-v1", num_envs=num_envs, seed=1)
    td = _random_rollout(env, 400)
    obs, next_obs = td["observation"], td["next", "observation"]
    done = td["next", "done"][..., 0]
    assert done.sum() > 5
    # Within an episode, next observation of step t is the observation of step t+1.
    same = (obs[:, 1:] == next_obs[:, :-1]).all(-1)
    assert (same | done[:, :-1]).all()
    # After a done, the next observation is a fresh reset state (CartPole: |x| <= 0.05).
    assert (obs[:, 1:][done[:, :-1]].abs() <= 0.05).all()
    # Terminated final observations are the real out-of-bounds states, not zeros.
    term = td["next", "terminated"][..., 0]
    final = next_obs[term]
    angle_limit = 12 * 2 * math.pi / 360  # CartPole terminates beyond 12 degrees or |x| > 2.4
    assert ((final[:, 0].abs() > 2.4) | (final[:, 2].abs() > angle_limit - 1e-6)).all()
    # Every reward is 1 (a junk transition after a reset would have reward 0).
    assert (td["next", "reward"] == 1).all()
    # Episode statistics: length equals return for CartPole at every done.
    assert (td["next", "step_count"][done] == td["next", "episode_reward"][done].long()).all()


def test_fixed_horizon_absorbs_after_termination():
    env = FixedHorizon(FixedLengthEnv(3), horizon=6)
    obs, _ = env.reset()
    rewards, observations, flags = [], [], []
    for _ in range(6):
        obs, r, term, trunc, info = env.step(1)
        rewards.append(r)
        observations.append(float(obs[0]))
        flags.append((term, trunc))
    assert rewards == [1, 1, 1, 0, 0, 0]
    assert observations == [1, 2, 3, 3, 3, 3]
    assert flags[:-1] == [(False, False)] * 5 and flags[-1] == (False, True)


def test_fixed_horizon_rejects_bad_horizon():
    with pytest.raises(ValueError, match="horizon"):
        FixedHorizon(FixedLengthEnv(3), horizon=0)
    with pytest.raises(EnvCreationError, match="fixed_horizon"):
        make_env("CartPole-v1", fixed_horizon=-5)


@pytest.mark.parametrize("env_id", sorted(FIXED_HORIZON_ENVS))
def test_registered_fixed_horizon_envs_have_exact_length(env_id):
    horizon = FIXED_HORIZON_ENVS[env_id][2]
    env = make_env(env_id, num_envs=2, seed=0)
    td = _random_rollout(env, horizon)
    done = td["next", "done"][..., 0]
    assert done[:, -1].all() and not done[:, :-1].any()
    assert td["next", "truncated"][..., 0][:, -1].all()
    assert not td["next", "terminated"].any()


def test_fixed_horizon_cartpole_repeats_final_observation_with_zero_reward():
    env = make_env("tdimitation/CartPoleFixed-v1", num_envs=1, seed=0)
    td = _random_rollout(env, 500)[0]
    reward = td["next", "reward"][:, 0]
    first_zero = int((reward == 0).nonzero()[0])
    assert first_zero > 5 and (reward[first_zero:] == 0).all() and (reward[:first_zero] == 1).all()
    tail = td["next", "observation"][first_zero - 1 :]
    assert (tail == tail[0]).all()


def test_make_env_with_factories_of_different_lengths():
    env = make_env([lambda: FixedLengthEnv(3), lambda: FixedLengthEnv(5)])
    td = _random_rollout(env, 15)
    done = td["next", "done"][..., 0]
    assert done[0].nonzero().reshape(-1).tolist() == [2, 5, 8, 11, 14]
    assert done[1].nonzero().reshape(-1).tolist() == [4, 9, 14]


def test_dict_and_multidiscrete_spaces():
    env = make_env(DictObsEnv, num_envs=2, seed=0)
    check_env_specs(env)
    td = _random_rollout(env, 9)
    assert td["observation", "position"].dtype == torch.float32
    assert td["observation", "counter"].dtype == torch.int64
    assert td["action"].shape == (2, 9, 2)
    assert td["next", "observation", "counter"][0, :4, 0].tolist() == [1, 2, 3, 4]
    assert td["observation", "counter"][0, 4, 0] == 0  # fresh episode after reset


def test_seeding_is_reproducible():
    a = make_env("CartPole-v1", num_envs=2, seed=7).reset()["observation"]
    b = make_env("CartPole-v1", num_envs=2, seed=7).reset()["observation"]
    c = make_env("CartPole-v1", num_envs=2, seed=8).reset()["observation"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # sub-envs get different seeds


def test_unknown_env_id_names_close_matches():
    with pytest.raises(EnvCreationError, match="unknown environment id 'CartPol-v1'.*CartPole-v1"):
        make_env("CartPol-v1")


def test_num_envs_must_be_positive():
    with pytest.raises(EnvCreationError, match="num_envs"):
        make_env("CartPole-v1", num_envs=0)


def test_lunar_lander_builds_when_box2d_is_installed():
    pytest.importorskip("Box2D")
    env = make_env("LunarLander-v3", num_envs=2, seed=0, env_kwargs={"continuous": True})
    td = _random_rollout(env, 5)
    assert td["action"].shape == (2, 5, 2) and td["action"].dtype == torch.float32
