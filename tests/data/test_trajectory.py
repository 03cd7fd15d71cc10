import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tdimitation.data import (
    check_trajectories,
    concat_trajectories,
    discounted_returns,
    episode_lengths,
    episode_returns,
    flatten_trajectories,
    num_episodes,
    pad_trajectories,
    rollout_stats,
    split_trajectories,
)
from tdimitation.errors import TrajectoryError


def make_set(lengths, episode_ids=None, obs_dim=3, seed=0):
    """A valid flat trajectory set with the given episode lengths."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    ids = episode_ids if episode_ids is not None else list(range(len(lengths)))
    episode = torch.repeat_interleave(torch.tensor(ids), torch.tensor(lengths))
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[torch.cumsum(torch.tensor(lengths), 0) - 1] = True
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.randint(0, 2, (n,), generator=g),
            "episode": episode,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.rand(n, 1, generator=g),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def test_split_pad_flatten_round_trip():
    td = make_set([3, 1, 4], episode_ids=[7, 2, 9])
    parts = split_trajectories(td)
    assert [p.shape[0] for p in parts] == [3, 1, 4]
    padded = pad_trajectories(td)
    assert padded.shape == (3, 4)
    assert padded["mask"].sum(-1).tolist() == [3, 1, 4]
    # padding is zero
    assert (padded["observation"][1, 1:] == 0).all()
    flat = flatten_trajectories(padded)
    assert torch.equal(flat["observation"], td["observation"])
    assert flat["episode"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    flat2 = flatten_trajectories(parts)
    assert torch.equal(flat2["next", "reward"], td["next", "reward"])
    assert torch.equal(flat2["episode"], flat["episode"])


def test_returns_lengths_and_stats():
    td = make_set([2, 3])
    rewards = td["next", "reward"][:, 0].double()
    returns = episode_returns(td)
    assert torch.allclose(returns, torch.stack([rewards[:2].sum(), rewards[2:].sum()]))
    assert episode_lengths(td).tolist() == [2, 3] and num_episodes(td) == 2
    stats = rollout_stats(td)
    assert stats["n_traj"] == 2 and stats["n_transitions"] == 5
    assert stats["len_mean"] == 2.5 and stats["len_std"] == 0.5  # population std
    assert stats["return_max"] == pytest.approx(float(returns.max()))


def test_original_reward_stats_reported_when_present():
    td = make_set([2, 2])
    td["next", "original_reward"] = torch.ones(4, 1)
    stats = rollout_stats(td)
    assert stats["original_return_mean"] == 2.0


def test_discounted_returns():
    assert float(discounted_returns([1.0, 1.0, 1.0], 0.5)) == pytest.approx(1.75)
    batch = discounted_returns(np.array([[1.0, 0.0], [0.0, 2.0]]), 0.9)
    assert batch.tolist() == pytest.approx([1.0, 1.8])
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns([1.0], 1.5)


def test_concat_renumbers_episodes():
    out = concat_trajectories([make_set([2, 1]), make_set([3], seed=1)])
    assert out["episode"].tolist() == [0, 0, 1, 2, 2, 2]
    check_trajectories(out)


def test_check_accepts_valid_set():
    check_trajectories(make_set([4, 2, 5]))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda td: td[:0], "empty"),
        (lambda td: td.exclude("action"), "lacks required keys"),
        (
            lambda td: td.set(
                ("next", "reward"),
                td["next", "reward"].index_fill(0, torch.tensor([3]), float("nan")),
            ),
            "NaN/inf values in .*reward.*row 3",
        ),
        (
            lambda td: td.set(
                "observation", td["observation"].index_fill(0, torch.tensor([0]), float("inf"))
            ),
            "NaN/inf",
        ),
        (lambda td: td.set("episode", torch.tensor([0, 0, 1, 1, 0, 0])), "not contiguous"),
        (
            lambda td: td.set(("next", "done"), torch.zeros(6, 1, dtype=torch.bool)),
            "does not end with done",
        ),
        (
            lambda td: td.set(("next", "done"), torch.ones(6, 1, dtype=torch.bool)),
            "middle of an episode",
        ),
    ],
)
def test_check_rejects_bad_sets(mutate, message):
    with pytest.raises(TrajectoryError, match=message):
        check_trajectories(mutate(make_set([2, 2, 2])))


def test_check_rejects_padded_input():
    with pytest.raises(TrajectoryError, match="flat"):
        check_trajectories(pad_trajectories(make_set([2, 3])))
