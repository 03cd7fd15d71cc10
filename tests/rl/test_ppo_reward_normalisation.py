"""PPO's normalize_rewards: rewards scaled by the running std of the discounted return."""

from __future__ import annotations

import torch

from tdimitation.data.collector import VecCollector
from tdimitation.nn import discounted_returns
from tdimitation.rl.ppo import PPO
from tests.helpers import quiet_trainer


def naive_returns(reward, done, gamma):
    """Per env, per step: the discounted sum since the env's last episode end."""
    out = torch.zeros_like(reward, dtype=torch.float64)
    for i in range(reward.shape[0]):
        running = 0.0
        for t in range(reward.shape[1]):
            running = gamma * running + float(reward[i, t])
            out[i, t] = running
            if done[i, t]:
                running = 0.0
    return out


def test_discounted_returns_reset_after_episode_ends_and_carry_across_blocks():
    generator = torch.Generator().manual_seed(0)
    reward = torch.randn(3, 12, generator=generator)
    done = torch.rand(3, 12, generator=generator) < 0.2
    expected = naive_returns(reward, done, 0.9)
    # In one block, and in two blocks with the carry handed over: the same returns.
    whole, _ = discounted_returns(reward, done, torch.zeros(3), 0.9)
    first, carry = discounted_returns(reward[:, :5], done[:, :5], torch.zeros(3), 0.9)
    second, _ = discounted_returns(reward[:, 5:], done[:, 5:], carry, 0.9)
    # float32 sums against float64 ones
    torch.testing.assert_close(whole.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def _round(model):
    env = model.make_env()
    frames = model.frames_per_batch
    collector = VecCollector(env, model.actor, frames_per_batch=frames, total_frames=frames)
    batch = collector.rollout()
    collector.shutdown()
    return batch


def test_advantages_are_computed_on_rewards_divided_by_the_return_std():
    kwargs = dict(env_id="Pendulum-v1", num_envs=2, n_steps=32, total_frames=64, batch_size=32)
    scaled = PPO(normalize_rewards=True, **kwargs)
    plain = PPO(**kwargs)  # same seed: same critic
    batch = _round(plain)
    scaled.return_norm.var.fill_(4.0)
    expected = plain.advantages(batch, reward_fn=lambda td: td["next", "reward"] / 2.0)
    # advantages() scales with the current statistics and does not change them.
    count = scaled.return_norm.count.clone()
    got = scaled.advantages(batch)
    assert torch.equal(scaled.return_norm.count, count)
    # (sqrt(4 + eps) is 2 to float precision)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_training_folds_each_round_into_the_statistics_and_checkpoints_them(tmp_path):
    model = PPO(
        "Pendulum-v1",
        num_envs=2,
        n_steps=100,
        total_frames=600,
        batch_size=50,
        n_epochs=1,
        normalize_rewards=True,
    )
    trainer = quiet_trainer(default_root_dir=tmp_path)
    trainer.fit(model)
    # Every training frame was folded in once; Pendulum's rewards are all negative and its
    # 200-step episodes end at step 200, so after 300 steps per env the carry is the
    # (negative) return of each env's unfinished second episode.
    assert int(model.return_norm.count) == 600
    assert float(model.return_norm.var) > 0
    assert (model._return_carry < 0).all()
    path = tmp_path / "ppo.ckpt"
    trainer.save_checkpoint(path)
    restored = PPO.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(restored.return_norm.var, model.return_norm.var)
    assert torch.equal(restored._return_carry, model._return_carry)
    # Without the option there are no such statistics (default checkpoints unchanged).
    assert PPO("Pendulum-v1", num_envs=2, n_steps=32).return_norm is None
