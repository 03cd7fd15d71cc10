import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.algorithms.dagger import DAgger, MixturePolicy, exponential_beta, linear_beta
from tdimitation.callbacks import PeriodicCheckpoint
from tdimitation.data.storage import load_trajectories, trajectory_metadata
from tdimitation.data.trajectory import (
    ACTION,
    DONE,
    NEXT_OBS,
    OBS,
    REWARD,
    TERMINATED,
    TRUNCATED,
    check_matches_env,
    check_trajectories,
    episode_runs,
)
from tdimitation.policies import ZeroPolicy
from tdimitation.policies.base import CallablePolicy

SAVED_KEYS = (OBS, ACTION, NEXT_OBS, REWARD, TERMINATED, TRUNCATED, DONE)


def expert_then_half(round_index: int) -> float:
    """A β schedule with an import path (tests.algorithms.test_dagger:expert_then_half)."""
    return 1.0 if round_index == 0 else 0.5


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


def _replay_cartpole(observation, action):
    """CartPole's next observation from ``observation`` under ``action``."""
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = observation.double().numpy()
    return torch.as_tensor(env.step(int(action))[0])


def test_rounds_are_trajectory_sets_saved_per_round(tmp_path):
    demos = tmp_path / "demos"
    model = DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=2,
        beta_schedule=expert_then_half,
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        min_transitions=300,
        save_rounds_dir=str(demos),
        seed=0,
    )
    trainer().fit(model)
    assert model.hparams.beta_schedule == "tests.algorithms.test_dagger:expert_then_half"
    rounds = [model.round_trajectories(k) for k in range(2)]
    for k, data in enumerate(rounds):
        check_trajectories(data, f"round {k}")
        check_matches_env(data, model.env, f"round {k}")
        # imitation's convention: the stored action is the expert's label.
        assert torch.equal(data[ACTION], data["expert_action"])
        # The round was written once, atomically, and reads back identical.
        saved = load_trajectories(demos / f"round-{k:03d}")
        for key in SAVED_KEYS:
            assert torch.equal(saved[key], data[key]), key
        meta = trajectory_metadata(demos / f"round-{k:03d}")
        assert meta["env_id"] == "CartPole-v1"
        expected = {"round": k, "beta": [1.0, 0.5][k], "expert": "scripted"}
        assert meta["metadata"].items() >= expected.items()
    assert sorted(p.name for p in demos.iterdir()) == ["round-000", "round-001"]
    # β = 1: the expert executed every action; β = 0.5: the learner executed some.
    assert torch.equal(rounds[0]["executed_action"], rounds[0][ACTION])
    differ = (rounds[1]["executed_action"] != rounds[1][ACTION]).nonzero().reshape(-1)
    assert 0 < differ.numel() < rounds[1].shape[0]
    # executed_action is what the env received: replaying it gives the next observation,
    # replaying the label does not.
    for row in differ[:20].tolist():
        obs, nxt = rounds[1][OBS][row], rounds[1][NEXT_OBS][row]
        executed, label = rounds[1]["executed_action"][row], rounds[1][ACTION][row]
        assert torch.allclose(_replay_cartpole(obs, executed).float(), nxt, atol=1e-5)
        assert not torch.allclose(_replay_cartpole(obs, label).float(), nxt, atol=1e-5)
    # Episode ids continue across rounds; everything aggregated is the two rounds in order.
    ids = [set(data["episode"].tolist()) for data in rounds]
    assert ids[0].isdisjoint(ids[1])
    everything = model.trajectories()
    assert everything.shape[0] == model.transitions_collected == len(model.buffer)
    assert len(set(everything["episode"].tolist())) == model.episodes_collected
    for key in SAVED_KEYS + ("episode", "executed_action"):
        assert torch.equal(everything[key], torch.cat([r[key] for r in rounds])), key
    with pytest.raises(ValueError, match="round 2 has not been collected: rounds 0..1 exist"):
        model.round_trajectories(2)


def test_buffer_is_bounded_and_keeps_complete_episodes(tmp_path):
    capacity = 800
    model = DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=3,
        rampdown_rounds=2,
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        buffer_capacity=capacity,
        seed=0,
        min_transitions=250,
        save_rounds_dir=str(tmp_path),
    )
    trainer().fit(model)
    assert model.transitions_collected > capacity and len(model.buffer) == capacity
    # The buffer holds the last 600 transitions; of those, the complete episodes.
    saved = [load_trajectories(tmp_path / f"round-{k:03d}") for k in range(3)]
    observations = torch.cat([s[OBS] for s in saved])
    starts = torch.cat(
        [episode_runs(s)[0] + sum(x.shape[0] for x in saved[:k]) for k, s in enumerate(saved)]
    )
    first = int(starts[starts >= observations.shape[0] - capacity][0])
    kept = model.trajectories()
    check_trajectories(kept)
    assert torch.equal(kept[OBS], observations[first:])
    bounds = np.cumsum([0] + [s.shape[0] for s in saved])
    outcomes = []
    for k in range(3):
        if bounds[k + 1] <= first:
            with pytest.raises(ValueError, match=f"round {k} is no longer in the buffer"):
                model.round_trajectories(k)
            outcomes.append("gone")
        else:
            part = model.round_trajectories(k)
            check_trajectories(part)
            assert torch.equal(part[OBS], observations[max(first, bounds[k]) : bounds[k + 1]])
            outcomes.append("partial" if first > bounds[k] else "whole")
    assert outcomes[0] == "gone" and outcomes[-1] == "whole"
    # The oldest rows left belonged to an episode whose start was overwritten: dropped.
    assert first > observations.shape[0] - capacity


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
        ({"n_epochs": 3}, "n_epochs is not a DAgger argument.*bc_epochs"),
        ({"beta_schedule": "no_such_module_xyz:f"}, "cannot be imported"),
        ({"beta_schedule": "tdimitation.algorithms:DAgger.nope"}, "cannot be imported"),
        ({"beta_schedule": "tdimitation.algorithms.dagger:_NEXT_KEYS"}, "tuple, not a callable"),
        ({"beta_schedule": 3}, "beta_schedule must be"),
        ({"beta_schedule": None}, "pass beta_schedule="),
        ({"beta_schedule": lambda r: 1.5}, r"β=1.5 for round 0.*\[0, 1\]"),
        ({"beta_schedule": lambda r: float("nan")}, "β=nan for round 0"),
        ({"beta_schedule": lambda r: "high"}, "returned 'high' for round 0"),
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


def test_beta_schedule_can_be_any_callable_or_import_path(tmp_path):
    def schedule(round_index):
        return [1.0, 0.25, 2.0][round_index]

    model = DAgger(
        "CartPole-v1",
        n_rounds=3,
        beta_schedule=schedule,
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        min_transitions=100,
    )
    assert [model.beta(r) for r in range(2)] == [1.0, 0.25]
    assert model.hparams.beta_schedule is None  # a closure has no import path
    # A β outside [0, 1] stops the run at the round that returns it, before collecting.
    with pytest.raises(ValueError, match=r"β=2.0 for round 2"):
        trainer().fit(model)
    assert model.round == 2 and len(model._round_starts) == 2
    by_path = DAgger("CartPole-v1", beta_schedule="tests.algorithms.test_dagger:expert_then_half")
    assert [by_path.beta(r) for r in range(3)] == [1.0, 0.5, 0.5]
    assert DAgger("CartPole-v1", beta_schedule="exponential", decay=0.5).beta(2) == 0.25
