"""SQIL: mixed minibatches, training over DQN and SAC, checkpoints, repeatability, errors."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from tdimitation.algorithms import SQIL
from tdimitation.data import episode_returns, rollout
from tdimitation.envs import make_env
from tdimitation.errors import ReplayBufferError, SpaceMismatchError, TrajectoryError
from tdimitation.evaluation import evaluate_policy
from tdimitation.policies import QValueActor, load_policy, policy_from_string
from tdimitation.rl.base import TRANSITION_KEYS
from tests.helpers import quiet_trainer

torch.set_num_threads(1)

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "sqil"

# Six rounds of 256 frames; gradient steps from the second round on (512 frames in).
DQN_SMALL = dict(
    env_id="CartPole-v1",
    agent="dqn",
    num_envs=4,
    total_frames=1536,
    seed=0,
    agent_kwargs=dict(
        frames_per_batch=256,
        learning_starts=512,
        batch_size=32,
        gradient_steps=8,
        target_update_interval=16,
        exploration_fraction=0.5,
        hidden_sizes=(16, 16),
        buffer_size=10_000,
        normalize_observations=True,
    ),
)
SAC_SMALL = dict(
    env_id="Pendulum-v1",
    agent="sac",
    num_envs=2,
    total_frames=384,
    seed=0,
    agent_kwargs=dict(
        frames_per_batch=64, learning_starts=128, batch_size=32, hidden_sizes=(16, 16)
    ),
)
MID_ROUND = 2


def _demos(env_id: str, episodes: int):
    env = make_env(env_id, num_envs=4, seed=0)
    try:
        return rollout(
            policy_from_string("scripted", env=env), env, min_episodes=episodes, deterministic=True
        )
    finally:
        env.close()


@pytest.fixture(scope="module")
def cartpole_demos():
    return _demos("CartPole-v1", 4)


@pytest.fixture(scope="module")
def pendulum_demos():
    return _demos("Pendulum-v1", 4)


class RecordingSQIL(SQIL):
    """SQIL that keeps every block of minibatches it hands to the agent."""

    def sample_mixed(self, n):
        block = super().sample_mixed(n)
        self.__dict__.setdefault("blocks", []).append(block.clone())
        return block


def _rows_in(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Which rows of ``rows`` [B, D] occur in ``table`` [N, D] (exact match)."""
    return (rows[:, None, :] == table[None, :, :]).all(-1).any(-1)


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_every_minibatch_is_half_demonstrations_half_agent(kind, cartpole_demos, pendulum_demos):
    config, demos = (DQN_SMALL, cartpole_demos) if kind == "dqn" else (SAC_SMALL, pendulum_demos)
    model = RecordingSQIL(demonstrations=demos, **config)
    quiet_trainer().fit(model)
    bs = config["agent_kwargs"]["batch_size"]
    assert model.blocks, "the agent never asked for minibatches"
    demo_obs = demos.get("observation")
    agent_rows = model.agent.buffer[:]
    for block in model.blocks:
        batches = block.reshape(-1, bs)
        reward = batches.get(("next", "reward"))[..., 0]
        from_demos = _rows_in(block.get("observation"), demo_obs).reshape(-1, bs)
        # First half: demonstrations with reward 1; second half: the agent's, reward 0.
        assert torch.all(reward[:, : bs // 2] == 1) and torch.all(reward[:, bs // 2 :] == 0)
        assert from_demos[:, : bs // 2].all()
        own = block.reshape(-1, bs)[:, bs // 2 :].reshape(-1)
        assert _rows_in(own.get("observation"), agent_rows.get("observation")).all()
    # The agent's buffer keeps the env's own rewards; only the sampled copies are zeroed.
    env_reward = agent_rows.get(("next", "reward"))
    assert (env_reward != 0).any()
    assert len(model.agent.buffer) == model.frames == config["total_frames"]
    assert len(model.demo_buffer) == demos.numel()


# ----------------------------------------------------------------- DQN agent run


class Recorder(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path, self.snapshot, self.epsilons = path, {}, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epsilons.append((pl_module.frames, float(pl_module.agent.actor.epsilon)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == MID_ROUND:
            trainer.save_checkpoint(self.path)
            self.snapshot = {
                "frames": pl_module.frames,
                "updates": pl_module.agent.num_updates,
                "agent_buffer": pl_module.agent.buffer[:].clone(),
                "demo_buffer": pl_module.demo_buffer[:].clone(),
                "rngs": [m.rng.get_state() for m in pl_module.online_modules()],
                "params": {k: v.clone() for k, v in pl_module.state_dict().items()},
            }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cartpole_demos):
    out = tmp_path_factory.mktemp("sqil")
    model = SQIL(demonstrations=cartpole_demos, **DQN_SMALL)
    rec = Recorder(out / "mid.ckpt")
    t = quiet_trainer([rec])
    t.fit(model)
    t.save_checkpoint(out / "final.ckpt")
    return {"model": model, "rec": rec, "trainer": t, "final": out / "final.ckpt"}


def test_dqn_agent_trains_to_the_budget(trained):
    model, t = trained["model"], trained["trainer"]
    assert model.frames == model.agent.frames == 1536
    # 5 rounds of 8 gradient steps (the first round ends before learning_starts).
    assert model.agent.num_updates == t.global_step == 40
    # The agent's epsilon follows its schedule over SQIL's frames (the agent is driven).
    for frames, eps in trained["rec"].epsilons:
        assert eps == pytest.approx(model.agent.exploration_rate(frames))
    assert trained["rec"].epsilons[-1][1] < 1.0


def test_checkpoint_holds_both_buffers_counters_and_rngs(trained):
    snap, path = trained["rec"].snapshot, trained["rec"].path
    raw = torch.load(path, weights_only=True)
    buffers = raw["tdimitation"]["buffers"]
    assert set(buffers) == {"agent", "demonstrations"}
    assert buffers["agent"]["content"]["observation"].shape[0] == snap["frames"]
    # Restored without any demonstrations argument: they come from the checkpoint.
    restored = SQIL.load_from_checkpoint(path, weights_only=True)
    assert restored.frames == restored.agent.frames == snap["frames"]
    assert restored.agent.num_updates == snap["updates"]
    for buffer, saved in (
        (restored.agent.buffer, "agent_buffer"),
        (restored.demo_buffer, "demo_buffer"),
    ):
        stored = buffer[:]
        for key in TRANSITION_KEYS:
            assert torch.equal(stored.get(key), snap[saved].get(key)), (saved, key)
    assert all(
        torch.equal(m.rng.get_state(), s)
        for m, s in zip(restored.online_modules(), snap["rngs"], strict=True)
    )
    state = restored.state_dict()
    assert all(torch.equal(state[k], v) for k, v in snap["params"].items())
    assert float(restored.agent.actor.epsilon) == pytest.approx(
        restored.agent.exploration_rate(snap["frames"])
    )


def test_resume_continues_without_demonstrations(trained):
    model = SQIL(**DQN_SMALL)  # no demonstrations: the checkpoint holds them
    t = quiet_trainer()
    t.fit(model, ckpt_path=trained["rec"].path, weights_only=True)
    assert model.frames == DQN_SMALL["total_frames"]
    assert model.agent.num_updates == trained["model"].agent.num_updates == t.global_step
    adam_step = float(next(iter(t.optimizers[0].state.values()))["step"])
    assert adam_step == model.agent.num_updates


def test_exported_policy_loads_greedy(trained):
    env = make_env("CartPole-v1", num_envs=2, seed=3)
    policy = load_policy("tdimitation", trained["final"], env=env)
    assert isinstance(policy, QValueActor) and float(policy.epsilon) == 0.0
    assert episode_returns(rollout(policy, env, min_episodes=2, deterministic=True)).numel() >= 2
    env.close()


def test_sac_agent_trains_on_pendulum(pendulum_demos, tmp_path):
    model = SQIL(demonstrations=pendulum_demos, **SAC_SMALL)
    t = quiet_trainer()
    t.fit(model)
    # Gradient steps from the round that reaches learning_starts (128): 5 rounds x 64.
    assert model.frames == 384 and t.global_step == 5 * 64
    t.save_checkpoint(tmp_path / "sac.ckpt")
    restored = SQIL.load_from_checkpoint(tmp_path / "sac.ckpt", weights_only=True)
    assert len(restored.demo_buffer) == pendulum_demos.numel()
    assert torch.equal(restored.agent.loss.log_alpha, model.agent.loss.log_alpha)


# ------------------------------------------------------------- repeatability


class Disturb(L.Callback):
    """Global-RNG draws and a stochastic evaluation after every round."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.rand(1000)
        np.random.rand(1000)
        random.random()
        env = pl_module.make_env(num_envs=2, seed=123)
        try:
            evaluate_policy(pl_module.export_policy(), env, 2, deterministic=False)
        finally:
            env.close()


@pytest.mark.parametrize("kind", ["dqn", "sac"])
def test_same_seed_same_result(kind, cartpole_demos, pendulum_demos):
    config, demos = (DQN_SMALL, cartpole_demos) if kind == "dqn" else (SAC_SMALL, pendulum_demos)
    states = []
    for callbacks in ([], [Disturb()]):
        torch.manual_seed(len(states) * 17 + 5)
        model = SQIL(demonstrations=demos, **config)
        quiet_trainer(callbacks).fit(model)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    first, second = states
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, differing[:5]


# --------------------------------------------------------------- bad input


def test_user_replay_buffer_is_refused():
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    for kwargs in ({"replay_buffer": buffer}, {"replay_buffer_class": "x"}, {"rb": buffer}):
        with pytest.raises(ReplayBufferError, match="SQIL owns its replay buffers"):
            SQIL("CartPole-v1", agent_kwargs=kwargs)
    # Its capacity is the agent's to set.
    assert SQIL("CartPole-v1", agent_kwargs={"buffer_size": 500}).agent.hparams.buffer_size == 500


def test_dqn_agent_refuses_continuous_actions():
    with pytest.raises(SpaceMismatchError, match="agent='sac'"):
        SQIL("Pendulum-v1", agent="dqn")


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown agent"):
        SQIL("CartPole-v1", agent="ppo")
    with pytest.raises(ValueError, match="batch_size must be even"):
        SQIL("CartPole-v1", agent_kwargs={"batch_size": 33})
    with pytest.raises(ValueError, match="may not set"):
        SQIL("CartPole-v1", agent_kwargs={"seed": 3})
    with pytest.raises(TrajectoryError, match="no demonstrations"):
        quiet_trainer().fit(SQIL(**DQN_SMALL))


def test_demonstrations_of_another_env_are_refused(pendulum_demos):
    with pytest.raises(SpaceMismatchError):
        quiet_trainer().fit(SQIL(demonstrations=pendulum_demos, **DQN_SMALL))


# ------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["cartpole", "pendulum", "lunarlander"])
def test_recipe_builds_the_module(name):
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    assert recipe["model"]["class_path"] == "tdimitation.algorithms.SQIL"
    model = SQIL(**recipe["model"]["init_args"])
    assert model.hparams.agent == {"pendulum": "sac"}.get(name, "dqn")
    assert recipe["data"]["init_args"]["expert"] == "scripted"
    # The agent records only its own hyperparameters.
    assert "agent_kwargs" not in model.agent.hparams
