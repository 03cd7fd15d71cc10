import lightning as L
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.algorithms.dagger import DAgger, MixturePolicy, exponential_beta, linear_beta
from tdimitation.callbacks import PeriodicCheckpoint
from tdimitation.policies import ZeroPolicy
from tdimitation.policies.base import CallablePolicy


def trainer(**kwargs):
    kwargs.setdefault("max_epochs", 1)
    return L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def test_beta_schedules():
    assert [linear_beta(r, 4) for r in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert [exponential_beta(r, 0.5) for r in range(3)] == [1.0, 0.5, 0.25]
    assert exponential_beta(5, 1.0) == 1.0
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            exponential_beta(0, bad)
    with pytest.raises(ValueError, match="rampdown_rounds"):
        linear_beta(0, 0)


def test_mixture_mixes_per_sub_env_and_always_records_the_expert():
    expert = CallablePolicy(lambda obs: np.ones(len(obs), np.int64), torch.int64)
    learner = CallablePolicy(lambda obs: np.zeros(len(obs), np.int64), torch.int64)
    mixture = MixturePolicy(expert, learner, beta=0.3)
    torch.manual_seed(0)
    out = mixture(TensorDict({"observation": torch.zeros(20_000, 4)}, batch_size=[20_000]))
    assert out["expert_action"].eq(1).all()
    assert out["action"].float().mean().item() == pytest.approx(0.3, abs=0.02)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        greedy = mixture(TensorDict({"observation": torch.zeros(100, 4)}, batch_size=[100]))
    assert greedy["action"].eq(0).all()  # evaluation: the learner alone


def test_dagger_reaches_expert_level_with_4000_transitions():
    model = DAgger(
        "tdimitation/CartPoleFixed-v1",
        expert="scripted",
        n_rounds=2,
        rampdown_rounds=2,
        num_envs=4,
        bc_epochs=8,
        batch_size=32,
        seed=0,
    )
    trainer().fit(model)
    assert model.round == 2 and model.transitions_collected == 4000 and len(model.buffer) == 4000
    assert model.evaluate(20)["return_mean"] >= 475


def test_rounds_collect_whole_episodes_and_at_least_one_batch():
    model = DAgger(
        "CartPole-v1",
        expert="zero",
        n_rounds=1,
        num_envs=2,
        min_episodes=3,
        min_transitions=50,
        bc_epochs=1,
        batch_size=64,
        seed=1,
    )
    episodes = model.collect_round()
    assert episodes.shape[0] >= 64  # never fewer transitions than one batch
    assert int(episodes["next", "done"].sum()) >= 3
    assert "expert_action" in episodes.keys()


def test_buffer_is_bounded():
    model = DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=3,
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        buffer_capacity=600,
        seed=0,
        min_transitions=500,
    )
    trainer().fit(model)
    assert model.transitions_collected > 600 and len(model.buffer) == 600


def test_resume_continues_at_the_same_round(tmp_path):
    kwargs = dict(
        env_id="CartPole-v1",
        expert="scripted",
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        min_transitions=200,
        seed=0,
    )
    first = DAgger(n_rounds=2, **kwargs)
    trainer(callbacks=[PeriodicCheckpoint(tmp_path, every_n_rounds=1)]).fit(first)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["tdimitation"]["round"] == 2
    resumed = DAgger(n_rounds=3, **kwargs)
    resumed_trainer = trainer(max_epochs=2)
    resumed_trainer.fit(resumed, ckpt_path=str(tmp_path / "last.ckpt"), weights_only=True)
    assert resumed.round == 3
    assert resumed.transitions_collected > first.transitions_collected
    assert len(resumed.buffer) == resumed.transitions_collected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"beta_schedule": "exponential", "decay": 1.5}, r"\(0, 1\]"),
        ({"n_rounds": 0}, "n_rounds"),
        ({"expert": None}, "give an expert"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DAgger("CartPole-v1", **kwargs)


def test_any_policy_object_can_be_the_expert():
    from tdimitation.envs import make_env

    model = DAgger(
        "CartPole-v1",
        expert=None,
        expert_policy=ZeroPolicy(make_env("CartPole-v1")),
        n_rounds=1,
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
    )
    episodes = model.collect_round()
    assert episodes["expert_action"].eq(0).all()
