import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import check_env_specs

from tdimitation.data import VecCollector
from tdimitation.envs import RewardReplacement, make_env
from tdimitation.policies import build_actor
from tdimitation.rewards import MLPRewardNet, NormalizedRewardNet, ShapedRewardNet


def _replaced(net, env_id="CartPole-v1", num_envs=4, **kwargs):
    env = make_env(env_id, num_envs=num_envs, seed=0, **kwargs)
    return TransformedEnv(env, RewardReplacement(net))


def _expected_learned(net, batch):
    return net.predict_processed(
        batch["observation"],
        batch["action"],
        batch["next", "observation"],
        batch["next", "done"],
        update_stats=False,
    )


def test_specs_and_rollout_keep_true_reward_and_episode_stats():
    base = make_env("CartPole-v1", num_envs=4, seed=0)
    net = ShapedRewardNet.from_env(base).eval()
    env = TransformedEnv(base, RewardReplacement(net))
    check_env_specs(env)
    assert env.reward_key == "reward"  # still one reward key
    td = env.rollout(120, break_when_any_done=False)
    nxt = td["next"]
    assert (nxt["original_reward"] == 1).all()  # CartPole's true reward
    learned = _expected_learned(net, td)
    assert torch.allclose(nxt["reward"][..., 0], learned, atol=1e-6)
    assert not torch.allclose(nxt["reward"], nxt["original_reward"])
    # Episode statistics: the env's is the true return, ours the learned one, both reset
    # at episode starts.
    done = nxt["done"][..., 0]
    assert done.sum() >= 4
    assert torch.equal(nxt["episode_reward"][..., 0], nxt["step_count"][..., 0].float())
    for i in range(4):
        running = 0.0
        for t in range(120):
            running += learned[i, t].item()
            assert nxt["episode_learned_reward"][i, t, 0].item() == pytest.approx(running, abs=1e-4)
            if done[i, t]:
                running = 0.0


def test_vec_collector_collects_replaced_rewards_across_batches():
    torch.manual_seed(0)
    base = make_env("CartPole-v1", num_envs=4, seed=0)
    net = MLPRewardNet.from_env(base, use_next_state=True).eval()
    env = TransformedEnv(base, RewardReplacement(net))
    collector = VecCollector(env, build_actor(base), frames_per_batch=4 * 32)
    batches = [collector.rollout() for _ in range(3)]
    for batch in batches:
        assert batch.batch_size == (4, 32)
        nxt = batch["next"]
        assert torch.allclose(nxt["reward"][..., 0], _expected_learned(net, batch), atol=1e-6)
        assert (nxt["original_reward"] == 1).all()
    # Learned returns accumulate across batch boundaries and restart with each episode.
    full = torch.cat(batches, dim=1)
    reward = full["next", "reward"][..., 0]
    ep_learned = full["next", "episode_learned_reward"][..., 0]
    ep_true = full["next", "episode_reward"][..., 0]
    checked = 0
    for i in range(4):
        starts = torch.nonzero(full["next", "done"][i, :-1, 0])[:, 0] + 1
        for start, end in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            rows = slice(start, end)  # one complete episode
            assert (full["episode"][i, rows] == full["episode"][i, start]).all()
            assert torch.allclose(ep_learned[i, rows], reward[i, rows].cumsum(0), atol=1e-4)
            assert ep_true[i, end - 1].item() == end - start  # the true return is kept
            checked += 1
    assert checked >= 4
    collector.shutdown()


def test_training_mode_updates_normaliser_eval_freezes_it():
    base = make_env("CartPole-v1", num_envs=2, seed=0)
    net = NormalizedRewardNet(MLPRewardNet.from_env(base))
    env = TransformedEnv(base, RewardReplacement(net))
    env.rollout(10, break_when_any_done=False)
    assert net.normalizer.count.item() == 20
    net.eval()
    env.rollout(10, break_when_any_done=False)
    assert net.normalizer.count.item() == 20


def test_offline_relabel_keeps_the_original_reward():
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    batch = env.rollout(8, break_when_any_done=False)
    true_reward = batch["next", "reward"].clone()
    net = MLPRewardNet.from_env(env).eval()
    relabel = RewardReplacement(net)
    relabel(batch)
    assert torch.equal(batch["next", "original_reward"], true_reward)
    assert torch.allclose(batch["next", "reward"][..., 0], _expected_learned(net, batch))
    with torch.no_grad():
        net.mlp[-1].bias += 1.0
    relabel(batch)  # a second relabelling never overwrites the original
    assert torch.equal(batch["next", "original_reward"], true_reward)
    assert torch.allclose(batch["next", "reward"][..., 0], _expected_learned(net, batch))


def test_any_tensordict_module_and_key_errors():
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    module = TensorDictModule(
        lambda obs, act: -(obs[..., :1] ** 2) - act**2,
        in_keys=["observation", "action"],
        out_keys=["my_reward"],
    )
    tenv = TransformedEnv(env, RewardReplacement(module, original_key=("next", "env_reward")))
    check_env_specs(tenv)
    td = tenv.rollout(5, break_when_any_done=False)
    expected = -(td["observation"][..., :1] ** 2) - td["action"] ** 2
    assert torch.allclose(td["next", "reward"], expected)
    assert "env_reward" in td["next"].keys()
    with pytest.raises(ValueError, match="must be under 'next'"):
        RewardReplacement(module, original_key="original_reward")
    with pytest.raises(ValueError, match="pass reward_key="):
        RewardReplacement(torch.nn.Linear(2, 1))
