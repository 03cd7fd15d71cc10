"""PreferenceComparisons: schedules, the loop's budgets, modes, guards and checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms import PreferenceComparisons
from tdimitation.algorithms.preference import (
    ExplorationPolicy,
    PreferenceGatherer,
    SyntheticGatherer,
    comparison_schedule,
)
from tdimitation.algorithms.preference.schedule import agent_rounds
from tdimitation.data.rollout import rollout
from tdimitation.envs import make_env
from tdimitation.errors import FragmentError, HorizonError, PreferenceError, TrajectoryError
from tdimitation.policies.base import RandomPolicy, ZeroPolicy
from tdimitation.rewards import load_reward
from tests.helpers import quiet_trainer as trainer

CARTPOLE_FIXED = "tdimitation/CartPoleFixed-v1"


def small(env_id: str = CARTPOLE_FIXED, **kwargs) -> PreferenceComparisons:
    """PPO on fixed-horizon CartPole, 2 x 16-step rounds, 7 rounds, 3 iterations."""
    options = dict(
        agent_kwargs=dict(n_steps=16, batch_size=32, n_epochs=1),
        num_envs=2,
        total_frames=32 * 7,
        num_iterations=3,
        total_comparisons=20,
        fragment_length=10,
        reward_epochs=1,
        initial_epoch_multiplier=3,
    )
    return PreferenceComparisons(env_id, **(options | kwargs))


@pytest.fixture(scope="module")
def pendulum_random():
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    try:
        return rollout(RandomPolicy(env, seed=0), env, min_episodes=2)
    finally:
        env.close()


# ---------------------------------------------------------------- schedules
def test_query_schedules_apportion_with_sum_preserving_rounding():
    assert comparison_schedule(100, 5, 0.1, "hyperbolic") == [10, 25, 20, 17, 15, 13]
    assert comparison_schedule(200, 5, 0.1, "hyperbolic") == [20, 51, 41, 34, 29, 25]
    assert comparison_schedule(15, 2, 0.1, "hyperbolic") == [1, 9, 5]
    assert comparison_schedule(100, 4, 0.0, "constant") == [0, 25, 25, 25, 25]
    quad = comparison_schedule(101, 3, 0.0, "inverse_quadratic")
    assert sum(quad) == 101 and quad[1] > quad[2] > quad[3]
    assert comparison_schedule(10, 2, 0.0, lambda t: 1 + 0 * t) == [0, 5, 5]
    with pytest.raises(PreferenceError, match="unknown query_schedule 'linear'"):
        comparison_schedule(100, 5, 0.1, "linear")
    with pytest.raises(PreferenceError, match="leaves nothing after the initial batch"):
        comparison_schedule(0, 2, 0.1, "constant")
    with pytest.raises(PreferenceError, match="initial_comparison_frac must be in"):
        comparison_schedule(10, 2, 1.0, "constant")
    assert agent_rounds(7, 3) == [2, 2, 3]
    with pytest.raises(PreferenceError, match="fewer than num_iterations"):
        agent_rounds(2, 3)


# ------------------------------------------------------------------- the loop
def test_loop_spends_exact_budgets_and_reuses_agent_rounds():
    module = small(exploration_frac=0.5)
    assert module.schedule == [2, 8, 6, 4] and module.rounds == [2, 2, 3]
    trainer().fit(module)
    assert module.frames == 224  # agent frames: exactly the budget
    assert module.next_query == 4 and module.comparisons == 20 == len(module.dataset)
    # Fresh samples only for what agent rounds could not supply: queries need
    # 40, 160, 120, 80 transitions; every round has 32.
    assert 0 < module._sample_frames < 2 * 20 * 10 + 4 * 32
    assert module.dataset.fragment_length == 10
    assert set(module.last_query_metrics) >= {"reward/accuracy", "preferences/dataset_size"}


def test_loop_repeats_per_seed():
    params = []
    for _ in range(2):
        module = small(ensemble_size=2, active_selection=True)
        trainer().fit(module)
        params.append(
            [p.detach().clone() for p in module.reward_net.parameters()]
            + [p.detach().clone() for p in module.agent.parameters()]
            + [module.dataset.labels()]
        )
    for a, b in zip(*params, strict=True):
        assert torch.equal(a, b)


def test_variable_horizon_guard_and_bad_input():
    with pytest.raises(HorizonError, match="episodes of different lengths"):
        trainer().fit(
            PreferenceComparisons(
                "CartPole-v1",
                agent_kwargs=dict(n_steps=64, batch_size=64, n_epochs=1),
                num_envs=2,
                total_frames=128 * 3,
                num_iterations=3,
                total_comparisons=10,
                fragment_length=5,
            )
        )
    with pytest.raises(PreferenceError, match="at least 2 members"):
        small(ensemble_size=1)
    with pytest.raises(PreferenceError, match="needs a reward ensemble"):
        small(active_selection=True)
    with pytest.raises(PreferenceError, match="must be a multiple of the agent's round"):
        small(total_frames=32 * 7 + 2)
    with pytest.raises(PreferenceError, match="minibatch_size \\(5\\) must divide"):
        small(reward_minibatch_size=5)
    with pytest.raises(PreferenceError, match="unknown query_schedule"):
        small(query_schedule="sometimes")
    with pytest.raises(TrajectoryError, match="has no trajectories"):
        trainer().fit(small(agent=None))


def test_exploration_policy_switches_between_agent_and_random_actions():
    env = make_env("Pendulum-v1", num_envs=4, seed=0)
    spec = RandomPolicy(env).spec
    env.close()
    wrapper = ExplorationPolicy(ZeroPolicy(spec), spec, switch_prob=1.0, random_prob=1.0)
    wrapper.rng = torch.Generator().manual_seed(0)

    def td():
        return TensorDict({"observation": torch.zeros(4, 3)}, [4])

    assert torch.equal(wrapper(td())["action"], torch.zeros(4, 1))  # not exploring: the agent
    wrapper.explore = True
    action = wrapper(td())["action"]
    assert bool((action != 0).all()) and bool((action.abs() <= 2).all())
    wrapper.random_prob = 0.0
    assert torch.equal(wrapper(td())["action"], torch.zeros(4, 1))
    wrapper.random_prob, wrapper.switch_prob = 0.5, 0.0  # no switching: modes persist
    first = wrapper(td())["action"] != 0
    assert torch.equal(wrapper(td())["action"] != 0, first)


# ------------------------------------------------------------ fixed dataset
class HalfNowHalfLater(PreferenceGatherer):
    """Answers half of each submission at once and the rest at the next poll."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = SyntheticGatherer(sample=False)
        self.later: list = []

    def submit(self, pairs, ids):
        labels = self.inner.labels(pairs)
        half = ids.numel() // 2
        self.now = (ids[:half], labels[:half])
        self.later.append((ids[half:], labels[half:]))

    def poll(self):
        ids, labels = self.now
        if len(self.later) > 1:
            old_ids, old_labels = self.later.pop(0)
            ids, labels = torch.cat([ids, old_ids]), torch.cat([labels, old_labels])
        self.now = (ids[:0], labels[:0])
        return ids, labels


def test_fixed_dataset_mode_learns_a_reward_from_saved_trajectories(pendulum_random):
    module = PreferenceComparisons(
        "Pendulum-v1",
        agent=None,
        trajectories=pendulum_random,
        num_iterations=3,
        total_comparisons=200,
        fragment_length=10,
        reward_epochs=3,
        initial_epoch_multiplier=10,
        reward_kwargs={"use_action": False},
        sample_labels=False,
    )
    trainer().fit(module)
    assert module.next_query == 4 and len(module.dataset) == 200
    fresh = pendulum_random[100:300]
    learned = module.reward_net.predict_processed(fresh["observation"], None, None, None)
    corr = torch.corrcoef(torch.stack([learned, fresh["next", "reward"][:, 0]]))[0, 1]
    assert corr > 0.5


def test_asynchronous_gatherer_keeps_unanswered_pairs_pending(pendulum_random):
    module = PreferenceComparisons(
        "Pendulum-v1",
        agent=None,
        trajectories=pendulum_random,
        num_iterations=2,
        total_comparisons=40,
        initial_comparison_frac=0.2,
        query_schedule="constant",
        fragment_length=10,
        reward_epochs=1,
        initial_epoch_multiplier=1,
    )
    module.set_gatherer(HalfNowHalfLater())
    assert module.schedule == [8, 16, 16]
    trainer().fit(module)
    # Answered: 4 of query 0; 8 of query 1 + the 4 left from 0; 8 of query 2 + 8 from 1.
    assert module.comparisons == len(module.dataset) == 32
    assert module.pending.ids.tolist() == list(range(32, 40))
    assert module.pending.pairs.shape[0] == 8


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_restores_everything(tmp_path):
    module = small(ensemble_size=2, comparison_queue_size=12, exploration_frac=0.5)

    class SaveAtRound(L.Callback):
        def on_train_batch_end(self, trainer_, pl_module, outputs, batch, batch_idx):
            if batch_idx == 3:
                trainer_.save_checkpoint(tmp_path / "mid.ckpt")
                pl_module.saved = {
                    "labels": pl_module.dataset.labels(),
                    "reward": [p.detach().clone() for p in pl_module.reward_net.parameters()],
                    "rng": pl_module.rng.get_state(),
                    "gatherer_rng": pl_module.gatherer.rng.get_state(),
                    "next_query": pl_module.next_query,
                    "adam": pl_module.reward_trainer.optimizer.state_dict()["state"][0][
                        "exp_avg"
                    ].clone(),
                }

    trainer(callbacks=[SaveAtRound()]).fit(module)
    saved = module.saved
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    restored = small(ensemble_size=2, comparison_queue_size=12, exploration_frac=0.5)
    restored.load_state_dict(checkpoint["state_dict"])
    restored.on_load_checkpoint(checkpoint)
    restored.reward_trainer.optimizer.load_state_dict(checkpoint["optimizer_states"][1])
    assert restored.next_query == saved["next_query"] == 3
    assert len(restored.dataset) == 12  # bounded
    assert torch.equal(restored.dataset.labels(), saved["labels"])
    for a, b in zip(restored.reward_net.parameters(), saved["reward"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(restored.rng.get_state(), saved["rng"])
    assert torch.equal(restored.gatherer.rng.get_state(), saved["gatherer_rng"])
    exp_avg = restored.reward_trainer.optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, saved["adam"])
    # The reward model loads by kind from the checkpoint, and a resumed fit finishes.
    assert load_reward("tdimitation", str(tmp_path / "mid.ckpt")).num_members == 2
    resumed = small(ensemble_size=2, comparison_queue_size=12, exploration_frac=0.5)
    trainer().fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.frames == 224 and resumed.next_query == 4 and resumed.comparisons == 20


class WrongLabels(PreferenceGatherer):
    """Answers every pair at once with labels built by ``make(n_pairs)``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make
        self.answered = (torch.zeros(0, dtype=torch.int64), torch.zeros(0))

    def submit(self, pairs, ids):
        self.answered = (ids, self.make(ids.numel()))

    def poll(self):
        ids, labels = self.answered
        self.answered = (ids[:0], labels[:0])
        return ids, labels


def one_line_error(error_type, match, action):
    """``action()`` raises ``error_type`` (a ValueError) with a one-line message."""
    with pytest.raises(error_type, match=match) as info:
        action()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_every_listed_bad_input_gets_a_one_line_error(pendulum_random):
    def fixed(**kwargs):
        options = dict(
            agent=None,
            trajectories=pendulum_random,
            num_iterations=1,
            total_comparisons=8,
            fragment_length=10,
            reward_epochs=1,
            initial_epoch_multiplier=1,
        )
        return PreferenceComparisons("Pendulum-v1", **(options | kwargs))

    def fit_with(gatherer):
        module = fixed()
        module.set_gatherer(gatherer)
        trainer().fit(module)

    one_line_error(PreferenceError, "unknown query_schedule", lambda: fixed(query_schedule="x"))
    one_line_error(
        PreferenceError, "float32", lambda: fit_with(WrongLabels(lambda n: torch.ones(n).double()))
    )
    one_line_error(
        PreferenceError,
        "one label per pair",
        lambda: fit_with(WrongLabels(lambda n: torch.ones(n, 1))),
    )
    one_line_error(
        FragmentError,
        "no episode is at least fragment_length=201",
        lambda: trainer().fit(fixed(fragment_length=201)),
    )
    one_line_error(PreferenceError, "needs a reward ensemble", lambda: fixed(active_selection=True))
    one_line_error(PreferenceError, "at least 2 members", lambda: fixed(ensemble_size=1))
    one_line_error(
        PreferenceError,
        "must divide batch_size",
        lambda: fixed(reward_batch_size=32, reward_minibatch_size=12),
    )
    one_line_error(
        PreferenceError,
        "leaves nothing after the initial batch",
        lambda: fixed(total_comparisons=0, initial_comparison_frac=0.5),
    )
    one_line_error(
        HorizonError,
        "episodes of different lengths",
        lambda: trainer().fit(small("CartPole-v1", fragment_length=5)),
    )
