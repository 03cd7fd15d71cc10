"""The Density algorithm: training an agent on the density reward, guards, checkpoints."""

from __future__ import annotations

import pytest
import torch

from tdimitation.algorithms import DemonstrationData, Density
from tdimitation.data.rollout import rollout
from tdimitation.envs import make_env
from tdimitation.errors import HorizonError, TrajectoryError
from tdimitation.policies import load_policy
from tdimitation.policies.registry import policy_from_string
from tdimitation.rewards import DensityRewardNet, load_reward
from tests.helpers import quiet_trainer as trainer

CARTPOLE_FIXED = "tdimitation/CartPoleFixed-v1"
TINY_PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}


@pytest.fixture(scope="module")
def cartpole_demos():
    env = make_env(CARTPOLE_FIXED, num_envs=2, seed=0)
    try:
        expert = policy_from_string("scripted", env=env)
        return rollout(expert, env, min_episodes=2, deterministic=True)
    finally:
        env.close()


def density(demos, **kwargs) -> Density:
    options = dict(num_envs=2, total_frames=256, rl_kwargs=TINY_PPO) | kwargs
    return Density(CARTPOLE_FIXED, demonstrations=demos, **options)


@pytest.mark.parametrize("stationary", [True, False])
def test_ppo_trains_on_the_relabelled_log_density(cartpole_demos, stationary):
    model = density(cartpole_demos, stationary=stationary, density_type="state")
    seen = []
    update = model.agent.update

    def spy(batch, optimizer, backward=None, reward_fn=None):
        seen.append((batch.clone(), reward_fn(batch).clone()))
        return update(batch, optimizer, backward, reward_fn)

    model.agent.update = spy
    trainer().fit(model)
    assert model.frames == 256 and len(seen) == 2
    batch, reward = seen[-1]
    # The agent sees the normalised log-density of its own round, not the env's reward.
    raw = model.reward_net.reward(
        batch["observation"], None, None, None, batch["next", "step_count"] - 1
    )
    expected = model.reward_norm(raw.unsqueeze(-1))
    torch.testing.assert_close(reward, expected)
    assert not torch.equal(reward, batch["next", "reward"])


def test_sac_agent_relabels_replayed_transitions():
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    try:
        demos = rollout(policy_from_string("scripted", env=env), env, min_episodes=2)
    finally:
        env.close()
    model = Density(
        "Pendulum-v1",
        demonstrations=demos,
        rl="sac",
        num_envs=2,
        total_frames=128,
        rl_kwargs={"frames_per_batch": 64, "learning_starts": 64, "batch_size": 16},
        density_type="state_state",
        kernel="exponential",
    )
    t = trainer()
    t.fit(model)
    assert model.frames == 128
    assert t.callback_metrics["train/rl/gradient_steps"] > 0
    assert t.callback_metrics["train/log_density_mean"] < 0


def test_same_seed_same_policy(cartpole_demos):
    params = []
    for _ in range(2):
        model = density(cartpole_demos)
        trainer().fit(model)
        params.append(torch.cat([p.detach().flatten() for p in model.agent.parameters()]))
    assert torch.equal(params[0], params[1])


def test_checkpoint_holds_policy_and_fitted_density(cartpole_demos, tmp_path):
    model = density(cartpole_demos, stationary=False, kernel="exponential")
    t = trainer(default_root_dir=tmp_path)
    t.fit(model)
    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)
    reward = load_reward("tdimitation", path)
    assert isinstance(reward, DensityRewardNet) and reward.kde.num_models == 500
    batch = cartpole_demos[:20].copy()
    torch.testing.assert_close(
        reward(batch.copy())["learned_reward"], model.reward_net(batch.copy())["learned_reward"]
    )
    assert load_policy("tdimitation", str(path)) is not None
    restored = Density.load_from_checkpoint(path, weights_only=True)
    assert restored.frames == 256
    torch.testing.assert_close(restored.reward_net.kde.points, model.reward_net.kde.points)


def test_datamodule_supplies_demonstrations(cartpole_demos):
    model = Density(CARTPOLE_FIXED, num_envs=2, total_frames=128, rl_kwargs=TINY_PPO)
    data = DemonstrationData(CARTPOLE_FIXED, trajectories=cartpole_demos)
    trainer().fit(model, datamodule=data)
    assert model.reward_net.kde.fitted and model.frames == 128


def test_bad_input_is_refused(cartpole_demos):
    no_next = cartpole_demos.exclude(("next", "observation"), "episode")
    with pytest.raises(TrajectoryError, match="next observations"):
        density(None, density_type="state_state").set_demonstrations(no_next)
    with pytest.raises(TrajectoryError, match="needs trajectories, not transitions"):
        density(None, stationary=False).set_demonstrations(cartpole_demos.exclude("episode"))
    with pytest.raises(ValueError, match="non-stationary density needs rl='ppo'"):
        Density("Pendulum-v1", rl="sac", stationary=False)
    with pytest.raises(ValueError, match="rl_kwargs may not set"):
        Density(CARTPOLE_FIXED, rl_kwargs={"seed": 3})
    with pytest.raises(TrajectoryError, match="no demonstrations"):
        trainer().fit(density(None))


def test_variable_horizon_is_refused(cartpole_demos):
    cut = cartpole_demos[:-10].clone()  # the last episode ends 10 steps early
    cut["next", "done"][-1] = True
    cut["next", "truncated"][-1] = True
    with pytest.raises(HorizonError, match="different lengths"):
        density(None).set_demonstrations(cut)
    model = Density(
        "CartPole-v1",
        demonstrations=cartpole_demos,
        num_envs=2,
        total_frames=256,
        rl_kwargs=TINY_PPO,
    )
    with pytest.raises(HorizonError, match="CartPoleFixed"):
        trainer().fit(model)
