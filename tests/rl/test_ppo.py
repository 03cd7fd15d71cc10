import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss

from tdimitation.data import rollout, rollout_stats
from tdimitation.data.collector import VecCollector
from tdimitation.envs import make_env
from tdimitation.objectives import PPOClipLoss
from tdimitation.policies import CategoricalActor, load_policy
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl.ppo import PPO
from tests.helpers import quiet_trainer as trainer


def test_loss_matches_torchrl_clip_ppo_loss():
    torch.manual_seed(0)
    actor, critic = CategoricalActor(4, 3, (16,)), ValueCritic(4, (16,))
    batch = TensorDict(
        {
            "observation": torch.randn(64, 4),
            "action": torch.randint(0, 3, (64,)),
            "action_log_prob": torch.randn(64).clamp(-3, -0.1),
            "advantage": torch.randn(64, 1),
            "value_target": torch.randn(64, 1),
        },
        batch_size=[64],
    )
    ours = PPOClipLoss(actor, critic, clip_epsilon=0.2, vf_coef=0.5, ent_coef=0.01)
    t_actor = ProbabilisticActor(
        TensorDictModule(actor.net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    t_critic = ValueOperator(critic.net, in_keys=["observation"])
    theirs = ClipPPOLoss(
        t_actor,
        t_critic,
        clip_epsilon=0.2,
        entropy_bonus=True,
        entropy_coeff=0.01,
        critic_coeff=0.5,
        loss_critic_type="l2",
        normalize_advantage=True,
    )
    theirs.set_keys(sample_log_prob="action_log_prob")
    a, b = ours(batch.clone()), theirs(batch.clone())
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    grads = []
    for out in (a, b):
        actor.zero_grad()
        critic.zero_grad()
        (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
        grads.append([p.grad.clone() for p in list(actor.parameters()) + list(critic.parameters())])
    for g1, g2 in zip(*grads, strict=True):
        assert torch.allclose(g1, g2, atol=1e-5)


def test_gae_bootstraps_through_truncation_not_termination():
    model = PPO(
        env_id="CartPole-v1",
        num_envs=1,
        n_steps=64,
        total_frames=64,
        gamma=0.5,
        gae_lambda=1.0,
        batch_size=64,
    )
    with torch.no_grad():
        for p in model.critic.net.parameters():
            p.zero_()
        model.critic.net[-1].bias.fill_(2.0)  # V(s) = 2 everywhere

    def batch(terminated):
        flags = torch.tensor([[[False], [True]]])
        return TensorDict(
            {
                "observation": torch.zeros(1, 2, 4),
                "next": {
                    "observation": torch.zeros(1, 2, 4),
                    "reward": torch.ones(1, 2, 1),
                    "done": flags,
                    "terminated": flags if terminated else ~flags & False,
                    "truncated": flags if not terminated else flags & False,
                },
            },
            batch_size=[1, 2],
        )

    _, target_term = model.advantages(batch(True))
    _, target_trunc = model.advantages(batch(False))
    # last step: terminated -> r = 1; truncated -> r + gamma * V = 2
    assert target_term[0, 1, 0].item() == pytest.approx(1.0)
    assert target_trunc[0, 1, 0].item() == pytest.approx(2.0)
    # first step: 1 + 0.5 * target of the next step (lambda = 1)
    assert target_term[0, 0, 0].item() == pytest.approx(1.5)
    # A reward_fn replaces the env's reward (the generator interface of GAIL/AIRL).
    _, relabelled = model.advantages(batch(True), reward_fn=lambda td: 3 * td["next", "reward"])
    assert relabelled[0, 1, 0].item() == pytest.approx(3.0)
    assert relabelled[0, 0, 0].item() == pytest.approx(4.5)


def test_update_outside_a_trainer_trains_on_the_given_reward():
    """The generator interface: update() runs without a Trainer and uses reward_fn."""
    torch.manual_seed(0)
    model = PPO(env_id="CartPole-v1", num_envs=2, n_steps=32, total_frames=64, batch_size=16)
    env = model.make_env()
    collector = VecCollector(env, model.actor, frames_per_batch=64, total_frames=64)
    batch = collector.rollout()
    optimizer = model.configure_optimizers()
    before = [p.detach().clone() for p in model.critic.parameters()]
    seen = []

    def reward_fn(td):
        seen.append(td.shape)
        return torch.full_like(td["next", "reward"], -1.0)

    metrics = model.update(batch, optimizer, reward_fn=reward_fn)
    assert seen == [torch.Size([2, 32])]
    assert metrics["updates"] == 4 * model.hparams.n_epochs
    after = list(model.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # The critic moved towards the relabelled (negative) returns, not the env's (+1 a step).
    values = model.critic.value(batch["observation"].reshape(-1, 4))
    before_model = PPO(env_id="CartPole-v1", num_envs=2, n_steps=32, total_frames=64)
    with torch.no_grad():
        for p, b in zip(before_model.critic.parameters(), before, strict=True):
            p.copy_(b)
    assert values.mean() < before_model.critic.value(batch["observation"].reshape(-1, 4)).mean()
    collector.shutdown()


def test_ppo_learns_cartpole_quickly():
    torch.manual_seed(0)
    model = PPO(
        env_id="CartPole-v1",
        num_envs=8,
        n_steps=128,
        total_frames=8 * 128 * 14,
        n_epochs=4,
        batch_size=128,
        learning_rate=1e-3,
        seed=0,
    )
    before = rollout_stats(
        rollout(model.actor, make_env("CartPole-v1", 8, seed=5), min_episodes=8, deterministic=True)
    )["return_mean"]
    trainer().fit(model)
    assert model.frames == 8 * 128 * 14
    after = rollout_stats(
        rollout(model.actor, make_env("CartPole-v1", 8, seed=5), min_episodes=8, deterministic=True)
    )["return_mean"]
    assert after > max(3 * before, 120), (before, after)


def test_continuous_ppo_runs_with_normalisation():
    model = PPO(
        env_id="Pendulum-v1",
        num_envs=4,
        n_steps=64,
        total_frames=4 * 64 * 2,
        n_epochs=2,
        batch_size=64,
        normalize_observations=True,
    )
    trainer().fit(model)
    assert model.actor.obs_norm.count == 4 * 64 * 2
    assert model.critic.obs_norm is model.actor.obs_norm


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"total_frames": 100}, "smaller than one collection batch"),
        ({"batch_size": 100}, "must divide"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
    ],
)
def test_bad_configuration(kwargs, message):
    args = {"env_id": "CartPole-v1", "num_envs": 2, "n_steps": 64, "total_frames": 1280} | kwargs
    with pytest.raises(ValueError, match=message):
        PPO(**args)


SCRIPT = textwrap.dedent("""
    import sys, time, torch, lightning as L
    torch.set_num_threads(1)
    from tdimitation.rl.ppo import PPO
    from tdimitation.callbacks import PeriodicCheckpoint

    class Slow(L.Callback):
        def on_train_batch_end(self, *args):
            time.sleep(0.3)  # leave time to kill the run between rounds

    model = PPO(env_id="CartPole-v1", num_envs=4, n_steps=64, total_frames=4 * 64 * 40,
                n_epochs=2, batch_size=64, normalize_observations=True)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[PeriodicCheckpoint(sys.argv[1], every_n_rounds=1), Slow()])
    trainer.fit(model)
""")


def test_sigkill_and_resume_continues_the_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists():
                state = torch.load(ckpt, weights_only=True)
                if state["tdimitation"]["frames"] >= 4 * 64 * 3:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint after 120 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = torch.load(ckpt, weights_only=True)
    frames_at_kill = saved["tdimitation"]["frames"]
    assert frames_at_kill < 4 * 64 * 40
    model = PPO(
        env_id="CartPole-v1",
        num_envs=4,
        n_steps=64,
        total_frames=4 * 64 * 40,
        n_epochs=2,
        batch_size=64,
        normalize_observations=True,
    )
    resumed = trainer()
    resumed.fit(model, ckpt_path=str(ckpt), weights_only=True)
    assert model.frames == 4 * 64 * 40
    # normalisation statistics carried over: every frame counted exactly once
    assert model.actor.obs_norm.count == 4 * 64 * 40
    assert model.optimizer_steps == 40 * 2 * 4  # rounds x epochs x minibatches, resumed too
    # the exported policy loads straight from the checkpoint
    policy = load_policy("tdimitation", ckpt, env=make_env("CartPole-v1"))
    assert policy.obs_norm is not None and policy.obs_norm.count == frames_at_kill
