"""Scripted experts on real gymnasium environments: returns, action format, registry."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.envs.box2d.lunar_lander import heuristic
from tensordict import TensorDict

from tdimitation.errors import PolicyError, SpaceMismatchError
from tdimitation.policies.scripted import (
    SCRIPTED_POLICIES,
    LunarLanderExpert,
    MountainCarExpert,
    PendulumExpert,
    ScriptedPolicy,
    make_scripted_policy,
    scripted_policy_for_env,
)

# The policies run a few tiny ops per step; extra intra-op threads only add overhead.
torch.set_num_threads(1)

# Registry name -> (gymnasium id, make kwargs) of the environment it was written for.
ENVS = {
    "cartpole": ("CartPole-v1", {}),
    "lunarlander": ("LunarLander-v3", {}),
    "lunarlander-continuous": ("LunarLander-v3", {"continuous": True}),
    "mountaincar": ("MountainCar-v0", {}),
    "mountaincar-continuous": ("MountainCarContinuous-v0", {}),
    "pendulum": ("Pendulum-v1", {}),
}


def episode_returns(
    policy: ScriptedPolicy,
    env_id: str,
    n_episodes: int,
    *,
    n_envs: int = 8,
    seed: int = 0,
    **env_kwargs,
) -> np.ndarray:
    """Returns of ``n_episodes`` episodes, ``n_episodes / n_envs`` from each sub-env.

    Counting a fixed number of episodes per sub-env (rather than the first N to finish)
    keeps short episodes, often crashes, from being over-represented.
    """
    assert n_episodes % n_envs == 0
    per_env = n_episodes // n_envs
    venv = gymnasium.make_vec(
        env_id,
        n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.DISABLED},
        **env_kwargs,
    )
    try:
        obs, _ = venv.reset(seed=seed)
        running = np.zeros(n_envs)
        returns: list[list[float]] = [[] for _ in range(n_envs)]
        while min(len(r) for r in returns) < per_env:
            td = TensorDict({"observation": torch.as_tensor(obs)}, batch_size=[n_envs])
            obs, reward, terminated, truncated, _ = venv.step(policy(td)["action"].numpy())
            running += reward
            done = terminated | truncated
            if done.any():
                for i in np.flatnonzero(done):
                    returns[i].append(running[i])
                running[done] = 0.0
                obs, _ = venv.reset(options={"reset_mask": done})
    finally:
        venv.close()
    return np.array([r for env_returns in returns for r in env_returns[:per_env]])


# --- returns on the real environments ---------------------------------------------------


def test_cartpole_expert_balances_for_the_whole_episode():
    returns = episode_returns(make_scripted_policy("cartpole"), "CartPole-v1", 16)
    assert (returns == 500.0).all(), returns


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_lunarlander_expert_passes_the_reward_threshold(continuous):
    policy = LunarLanderExpert(continuous=continuous)
    # 40 episodes: the discrete heuristic crashes in ~5% of episodes (-100 each).
    n_episodes = 24 if continuous else 40
    returns = episode_returns(policy, "LunarLander-v3", n_episodes, continuous=continuous)
    assert returns.mean() >= 200.0, returns


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_lunarlander_expert_is_gymnasium_heuristic(continuous):
    env = gymnasium.make("LunarLander-v3", continuous=continuous)
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 0.7, 0.5, 0.5, 0.3, 0.3, 1.0, 1.0])
    obs = torch.randn(4096, 8, generator=generator) * scale
    obs[:, 6:] = (torch.rand(4096, 2, generator=generator) < 0.3).float()  # leg contacts
    td = TensorDict({"observation": obs}, batch_size=[4096])
    actions = LunarLanderExpert(continuous=continuous)(td)["action"].numpy()
    reference = np.stack([np.asarray(heuristic(env, o)) for o in obs.double().numpy()])
    env.close()
    if continuous:
        np.testing.assert_allclose(actions, reference, atol=1e-5)
    else:
        # float32 vs float64 rounding could flip a decision sitting on a threshold.
        assert (actions != reference).mean() < 1e-3


def test_mountaincar_expert_always_reaches_the_goal():
    returns = episode_returns(make_scripted_policy("mountaincar"), "MountainCar-v0", 32)
    assert (returns > -200.0).all(), returns


def test_mountaincar_expert_reaches_the_goal_from_every_start():
    # Sweep the reset interval; one observation at a time also covers batch size [].
    policy = MountainCarExpert()
    env = gymnasium.make("MountainCar-v0")
    for start in np.linspace(-0.6, -0.4, 41):
        obs, _ = env.reset(options={"low": start, "high": start})
        terminated = truncated = False
        while not (terminated or truncated):  # MountainCar-v0 truncates at 200 steps
            td = TensorDict({"observation": torch.as_tensor(obs)}, batch_size=[])
            obs, _, terminated, truncated, _ = env.step(int(policy(td)["action"]))
        assert terminated, f"no goal within 200 steps from x = {start:.3f}"
    env.close()


def test_mountaincar_continuous_expert_passes_the_reward_threshold():
    policy = make_scripted_policy("mountaincar-continuous")
    returns = episode_returns(policy, "MountainCarContinuous-v0", 32)
    assert returns.mean() > 90.0, returns
    assert (returns > 0).all(), returns  # every episode reaches the goal (+100)


def test_pendulum_expert_swings_up_and_balances():
    returns = episode_returns(make_scripted_policy("pendulum"), "Pendulum-v1", 96)
    assert returns.mean() >= -200.0, returns.mean()


def test_pendulum_expert_swings_up_from_hanging_at_rest():
    # The symmetric start where energy pumping and the balance term both vanish.
    env = gymnasium.make("Pendulum-v1")
    env.reset(seed=0)
    env.unwrapped.state = np.array([np.pi, 0.0])
    obs = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
    policy, total, cos_theta = PendulumExpert(), 0.0, []
    for _ in range(200):
        td = TensorDict({"observation": torch.as_tensor(obs)}, batch_size=[])
        obs, reward, _, _, _ = env.step(policy(td)["action"].numpy())
        total += reward
        cos_theta.append(obs[0])
    env.close()
    assert min(cos_theta[-50:]) > 0.99, "not balanced upright at the end"
    assert total > -450.0


def test_pendulum_expert_holds_the_upright_position():
    obs = torch.tensor([[1.0, 0.0, 0.0]])
    td = TensorDict({"observation": obs}, batch_size=[1])
    assert PendulumExpert()(td)["action"].abs().item() < 1e-6


# --- action format -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENVS))
def test_actions_have_the_env_dtype_shape_and_bounds(name):
    env_id, kwargs = ENVS[name]
    env = gymnasium.make(env_id, **kwargs)
    env.observation_space.seed(0)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(8)]))
    policy = make_scripted_policy(name)
    action = policy(TensorDict({"observation": obs}, batch_size=[8]))["action"]
    space = env.action_space
    if isinstance(space, gymnasium.spaces.Discrete):
        assert action.dtype == torch.int64 and action.shape == (8,)
    else:
        assert action.dtype == torch.float32 and action.shape == (8, *space.shape)
    assert all(space.contains(a) for a in action.numpy())

    single = policy(TensorDict({"observation": obs[0]}, batch_size=[]))["action"]
    assert single.shape == action.shape[1:] and single.dtype == action.dtype
    assert torch.equal(single, action[0])

    stacked = policy(TensorDict({"observation": obs.reshape(2, 4, -1)}, batch_size=[2, 4]))
    assert torch.equal(stacked["action"].reshape(action.shape), action)
    env.close()


def test_policies_follow_module_conversions():
    policy = make_scripted_policy("pendulum")
    assert policy.state_dict() == {}  # nothing to save: the constants are not state
    assert policy.in_keys == ["observation"] and policy.out_keys == ["action"]
    obs = torch.tensor([[0.0, 1.0, 0.5]])
    expected = policy(TensorDict({"observation": obs}, batch_size=[1]))["action"]
    policy.double()
    assert policy.const.linear_map.dtype == torch.float64
    converted = policy(TensorDict({"observation": obs}, batch_size=[1]))["action"]
    assert converted.dtype == torch.float64
    torch.testing.assert_close(converted.float(), expected)


def test_wrong_observation_size_is_a_space_mismatch():
    td = TensorDict({"observation": torch.zeros(8, 3)}, batch_size=[8])
    with pytest.raises(SpaceMismatchError, match="size 4"):
        make_scripted_policy("cartpole")(td)


def test_scripted_policy_is_abstract():
    with pytest.raises(TypeError):
        ScriptedPolicy()


# --- registry ------------------------------------------------------------------------------


def test_registry_builds_every_expert():
    assert sorted(SCRIPTED_POLICIES) == sorted(ENVS)
    for name in SCRIPTED_POLICIES:
        assert isinstance(make_scripted_policy(name), ScriptedPolicy)


def test_unknown_policy_name_lists_the_known_ones():
    with pytest.raises(PolicyError) as error:
        make_scripted_policy("acrobot")
    message = str(error.value)
    assert "'acrobot'" in message
    assert all(name in message for name in SCRIPTED_POLICIES)


@pytest.mark.parametrize(
    ("env_id", "env_kwargs", "expected"),
    [
        ("CartPole-v0", None, "cartpole"),
        ("CartPole-v1", None, "cartpole"),
        ("LunarLander-v2", None, "lunarlander"),
        ("LunarLander-v3", None, "lunarlander"),
        ("LunarLander-v3", {"continuous": True}, "lunarlander-continuous"),
        ("LunarLander-v3", {"continuous": False}, "lunarlander"),
        ("LunarLanderContinuous-v3", None, "lunarlander-continuous"),
        ("LunarLanderContinuous-v2", None, "lunarlander-continuous"),
        ("MountainCar-v0", None, "mountaincar"),
        ("MountainCarContinuous-v0", None, "mountaincar-continuous"),
        ("Pendulum-v1", None, "pendulum"),
        ("tdimitation/CartPoleFixed-v1", None, "cartpole"),
        ("tdimitation/LunarLanderFixed-v3", {"continuous": True}, "lunarlander-continuous"),
        ("tdimitation/LunarLanderContinuousFixed-v3", None, "lunarlander-continuous"),
        ("tdimitation/MountainCarFixed-v0", None, "mountaincar"),
        ("tdimitation/MountainCarContinuousFixed-v0", None, "mountaincar-continuous"),
        ("tdimitation/PendulumFixed-v1", None, "pendulum"),
        ("Acrobot-v1", None, None),
        ("Pendulum-v0", None, None),
        ("CartPoleFixed-v1", None, None),
        ("other/CartPole-v1", None, None),
        ("tdimitation/Acrobot-v1", None, None),
    ],
)
def test_scripted_policy_for_env(env_id, env_kwargs, expected):
    assert scripted_policy_for_env(env_id, env_kwargs) == expected
