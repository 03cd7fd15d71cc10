import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import BaseCollector
from torchrl.envs import GymEnv, SerialEnv

from tdimitation.data import VecCollector, check_matches_env, check_trajectories, rollout
from tdimitation.data.trajectory import episode_lengths
from tdimitation.envs import make_env
from tdimitation.errors import SpaceMismatchError
from tdimitation.policies import CategoricalActor, RandomPolicy
from tests.conftest import DictObsEnv, FixedLengthEnv


def cartpole_expert(obs):
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def test_collector_is_a_torchrl_collector_with_ted_batches():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    actor = CategoricalActor(4, 2, (16,))
    collector = VecCollector(env, actor, frames_per_batch=400, total_frames=1200)
    assert isinstance(collector, BaseCollector)
    batches = list(collector)
    assert len(batches) == 3 == len(collector) and collector.frames == 1200
    batch = batches[0]
    assert batch.batch_size == (4, 100)
    for key in [
        "observation",
        "action",
        "action_log_prob",
        "episode",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
        ("next", "truncated"),
    ]:
        assert key in batch.keys(include_nested=True)
    # log-probs are those of the actions under the actor's current parameters
    logp = actor.log_prob(batch["observation"], batch["action"])
    assert torch.allclose(logp, batch["action_log_prob"], atol=1e-5)


def test_collector_boundaries_and_episode_ids_across_batches():
    env = make_env("CartPole-v1", num_envs=3, seed=2)
    collector = VecCollector(env, RandomPolicy(env, seed=0), frames_per_batch=3 * 64)
    data = torch.cat([collector.rollout() for _ in range(5)], dim=1)
    obs, nxt = data["observation"], data["next", "observation"]
    done = data["next", "done"][..., 0]
    episode = data["episode"]
    assert ((obs[:, 1:] == nxt[:, :-1]).all(-1) | done[:, :-1]).all()
    assert torch.equal(episode[:, 1:] != episode[:, :-1], done[:, :-1])
    assert episode.unique().numel() == int(done.sum()) + 3 - int(done[:, -1].sum())


def test_collector_matches_torchrl_env_semantics_on_generic_path():
    """A plain torchrl GymEnv takes the generic path and gives the same keys."""
    batched = SerialEnv(2, lambda: GymEnv("CartPole-v1", categorical_action_encoding=True))
    collector = VecCollector(batched, cartpole_expert, frames_per_batch=2 * 50)
    batch = collector.rollout()
    assert batch.batch_size == (2, 50)
    assert (batch["next", "reward"] == 1).all()
    collector.shutdown()
    batched.close()


def test_collector_rejects_bad_budgets():
    env = make_env("CartPole-v1", num_envs=4)
    with pytest.raises(ValueError, match="multiple of the number of sub-envs"):
        VecCollector(env, RandomPolicy(env), frames_per_batch=10)
    with pytest.raises(ValueError, match="smaller than one batch"):
        VecCollector(env, RandomPolicy(env), frames_per_batch=400, total_frames=100)


def test_collector_state_dict_resumes_counters():
    env = make_env("CartPole-v1", num_envs=2, seed=0)
    c = VecCollector(env, RandomPolicy(env, seed=1), frames_per_batch=20)
    c.rollout()
    c.rollout()
    state = c.state_dict()
    c2 = VecCollector(make_env("CartPole-v1", num_envs=2), RandomPolicy(env), frames_per_batch=20)
    c2.load_state_dict(state)
    assert c2.frames == 40
    batch = c2.rollout()
    assert batch["episode"].min() >= state["next_episode_id"]


def test_rollout_has_no_bias_toward_short_episodes():
    env = make_env([lambda: FixedLengthEnv(3), lambda: FixedLengthEnv(5)])
    td = rollout(lambda obs: np.zeros(len(obs), np.int64), env, min_episodes=2)
    assert sorted(episode_lengths(td).tolist()) == [3, 3, 5]
    check_trajectories(td)


def test_rollout_min_timesteps_and_both_conditions():
    env = make_env([lambda: FixedLengthEnv(3), lambda: FixedLengthEnv(5)])
    td = rollout(lambda obs: np.ones(len(obs), np.int64), env, min_timesteps=12)
    lengths = sorted(episode_lengths(td).tolist())
    # completed by step 9: 3,3,5,3 = 14 >= 12 at step 9 (A finishes 3,6,9; B 5,10)
    assert sum(lengths) >= 12 and lengths == [3, 3, 3, 5, 5]
    assert (td["next", "reward"] == 1).all()
    td = rollout(lambda obs: np.ones(len(obs), np.int64), env, min_timesteps=1, min_episodes=4)
    assert len(episode_lengths(td)) >= 4


def test_rollout_scripted_cartpole_scores_500_and_is_deterministic_flagged():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    td = rollout(cartpole_expert, env, min_episodes=4, deterministic=True)
    returns = td["next", "reward"].reshape(-1)
    assert episode_lengths(td).tolist() == [500] * 4 and float(returns.sum()) == 2000
    assert td["next", "truncated"][..., 0].sum() == 4


def test_rollout_deterministic_actor_is_repeatable():
    actor = CategoricalActor(4, 2, (16,))
    a = rollout(actor, make_env("CartPole-v1", 2, seed=3), min_episodes=2, deterministic=True)
    b = rollout(actor, make_env("CartPole-v1", 2, seed=3), min_episodes=2, deterministic=True)
    assert torch.equal(a["action"], b["action"])


def test_rollout_accepts_env_id_and_dict_spaces():
    td = rollout(
        RandomPolicy(make_env(DictObsEnv), seed=0), make_env(DictObsEnv, 2), min_episodes=3
    )
    assert td["observation", "position"].shape[-1] == 2
    assert td["action"].shape[-1] == 2
    td = rollout(cartpole_expert, "CartPole-v1", min_timesteps=600, seed=0)
    assert td.shape[0] >= 600


@pytest.mark.parametrize("kwargs", [{}, {"min_episodes": 0}, {"min_timesteps": -3}])
def test_rollout_rejects_bad_stop_conditions(kwargs):
    with pytest.raises(ValueError, match="stop condition|positive"):
        rollout(cartpole_expert, make_env("CartPole-v1"), **kwargs)


def test_check_matches_env():
    env = make_env("CartPole-v1", 2)
    td = rollout(cartpole_expert, env, min_episodes=1)
    check_matches_env(td, env)
    bad = td.clone()
    bad["observation"] = td["observation"][:, :3]
    with pytest.raises(SpaceMismatchError, match=r"shape \(3,\).*expects \(4,\)"):
        check_matches_env(bad, env)
    bad = td.clone()
    bad["observation"] = td["observation"].double()
    with pytest.raises(SpaceMismatchError, match="dtype torch.float64"):
        check_matches_env(bad, env)
    pendulum = make_env("Pendulum-v1")
    with pytest.raises(SpaceMismatchError, match="Pendulum-v1"):
        check_matches_env(td, pendulum)


def test_collector_writes_into_a_fresh_batch_each_time():
    env = make_env("CartPole-v1", 2, seed=0)
    c = VecCollector(env, RandomPolicy(env, seed=0), frames_per_batch=20)
    first = c.rollout()
    snapshot = first.clone()
    c.rollout()
    assert (first == snapshot).all()
    assert isinstance(first, TensorDict)


def test_rollout_seed_fixes_sampled_actions_and_leaves_the_global_rngs_alone():
    from tdimitation.rl.ppo import PPO

    actor = PPO("Pendulum-v1", num_envs=1, n_steps=64, batch_size=64).export_policy()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    runs = [rollout(actor, "Pendulum-v1", min_episodes=1, seed=seed) for seed in (3, 3, 4)]
    first, again, other_seed = (run["action"] for run in runs)
    assert torch.equal(first, again)  # the same seed samples the same actions
    assert not torch.equal(first, other_seed)
    assert torch.equal(torch.get_rng_state(), before)
