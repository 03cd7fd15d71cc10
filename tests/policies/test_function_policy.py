"""Plain Python functions of one observation as policies (scripted experts)."""

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tdimitation.data import episode_returns, rollout
from tdimitation.envs import make_env
from tdimitation.errors import PolicyError
from tdimitation.policies import CallablePolicy, FunctionPolicy, policy_from_function
from tests.conftest import DictObsEnv


def cartpole_expert(observation):
    """Push toward the side the pole leans to (and its angular velocity)."""
    _, _, angle, angular_velocity = observation
    return 1 if angle + 0.5 * angular_velocity > 0 else 0


def test_one_observation_function_acts_per_sub_env():
    policy = policy_from_function(cartpole_expert)
    obs = torch.tensor([[0, 0, 0.1, 0], [0, 0, -0.1, 0], [0, 0, 0.0, 0.3]])
    out = policy(TensorDict({"observation": obs}, batch_size=[3]))
    assert out["action"].tolist() == [1, 0, 1] and out["action"].dtype == torch.int64


def test_function_expert_balances_cartpole_on_batched_envs_and_repeats():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    policy = policy_from_function(cartpole_expert, env)
    first = rollout(policy, env, min_episodes=4, seed=0)
    returns = episode_returns(first)
    assert (returns == 500).all()  # the scripted expert is perfect on CartPole
    second = rollout(policy, env, min_episodes=4, seed=0)
    assert torch.equal(first["observation"], second["observation"])


def test_any_batch_shape_and_float_actions():
    policy = policy_from_function(lambda o: [float(o.sum()), -1.0])
    obs = torch.arange(12.0).reshape(2, 3, 2)
    out = policy(TensorDict({"observation": obs}, batch_size=[2, 3]))
    assert out["action"].shape == (2, 3, 2) and out["action"].dtype == torch.float32
    assert out["action"][1, 2].tolist() == [21.0, -1.0]


def test_action_dtype_follows_the_env():
    env = make_env("Pendulum-v1")
    policy = policy_from_function(lambda o: np.array([1], np.int64), env)
    out = policy(TensorDict({"observation": torch.zeros(1, 3)}, batch_size=[1]))
    assert out["action"].dtype == torch.float32 and out["action"].shape == (1, 1)


def test_dict_observations_are_given_one_dict_per_sub_env():
    env = make_env(DictObsEnv, num_envs=2, seed=0)
    seen = []

    def expert(observation):
        seen.append(sorted(observation))
        return np.array([int(observation["counter"][0]) % 3, 1])

    data = rollout(policy_from_function(expert, env), env, min_episodes=2)
    assert seen[0] == ["counter", "position"]
    assert data["action"][:4, 0].tolist() == [0, 1, 2, 0]


def test_batched_functions_and_bad_input():
    assert isinstance(policy_from_function(lambda o: o[:, 0] > 0, batched=True), CallablePolicy)
    assert isinstance(policy_from_function(cartpole_expert), FunctionPolicy)
    with pytest.raises(PolicyError, match="function observation -> action"):
        FunctionPolicy(42)
