"""Preference comparisons' parts: fragments, gatherers, model and loss, dataset."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.algorithms.preference.fragments import (
    ActiveSelectionFragmenter,
    RandomFragmenter,
)
from tdimitation.algorithms.preference.gatherers import SyntheticGatherer
from tdimitation.errors import FragmentError, PreferenceError, TrajectoryFileError
from tdimitation.objectives import PreferenceLoss, PreferenceModel
from tdimitation.rewards import MLPRewardNet, RewardEnsemble


def trajectory_set(lengths: list[int], obs_dim: int = 3, seed: int = 0) -> TensorDict:
    """A flat trajectory set whose observation[0] is the row index and reward = row index."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    episode = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[torch.tensor(lengths).cumsum(0) - 1] = True
    obs = torch.randn(n, obs_dim, generator=g)
    obs[:, 0] = torch.arange(n).float()
    return TensorDict(
        {
            "observation": obs,
            "action": torch.randint(2, (n,), generator=g),
            "episode": episode,
            "next": {
                "observation": obs + 1,
                "reward": torch.arange(n).float().unsqueeze(-1),
                "done": done,
                "terminated": done.clone(),
            },
        },
        [n],
    )


def pairs_with_rewards(rewards: list[list[list[float]]]) -> TensorDict:
    r = torch.tensor(rewards, dtype=torch.float32)  # [P, 2, L]
    p, _, length = r.shape
    return TensorDict(
        {
            "observation": torch.zeros(p, 2, length, 3),
            "action": torch.zeros(p, 2, length, dtype=torch.int64),
            "next": {
                "observation": torch.zeros(p, 2, length, 3),
                "reward": r.unsqueeze(-1),
                "done": torch.zeros(p, 2, length, 1, dtype=torch.bool),
            },
        },
        [p, 2, length],
    )


def small_net(seed: int = 0) -> MLPRewardNet:
    torch.manual_seed(seed)
    return MLPRewardNet((3,), 2, True, hidden_sizes=(8,))


# ---------------------------------------------------------------- fragments
def test_random_fragments_are_contiguous_windows_of_long_enough_episodes():
    traj = trajectory_set([3, 20, 4, 30])
    rng = torch.Generator().manual_seed(0)
    pairs = RandomFragmenter(rng, warning_threshold=0)(traj, 5, 200)
    assert pairs.shape == torch.Size([200, 2, 5])
    rows = pairs["observation"][..., 0].long()  # the source row of every step
    assert bool((rows[..., 1:] - rows[..., :-1] == 1).all())  # consecutive rows
    episode = traj["episode"][rows]
    assert bool((episode == episode[..., :1]).all())  # one episode per fragment
    used = set(episode[..., 0].unique().tolist())
    assert used == {1, 3}  # the 3- and 4-step episodes are never used
    # Chosen in proportion to length: 30 / 50 of the fragments from episode 3.
    share = float((episode[..., 0] == 3).float().mean())
    assert 0.52 < share < 0.68
    # A fragment is terminal only when it ends at its episode's end.
    done = pairs["next", "done"][..., 0]
    assert not bool(done[..., :-1].any())
    ends_at_episode_end = traj["next", "done"][rows[..., -1], 0]
    assert torch.equal(done[..., -1], ends_at_episode_end)
    assert bool(ends_at_episode_end.any())
    # A compact copy: no storage shared with the source.
    assert pairs["observation"].untyped_storage().data_ptr() != (
        traj["observation"].untyped_storage().data_ptr()
    )


def test_random_fragments_repeat_per_seed_and_errors():
    traj = trajectory_set([10, 12])
    a = RandomFragmenter(torch.Generator().manual_seed(3), 0)(traj, 4, 6)
    b = RandomFragmenter(torch.Generator().manual_seed(3), 0)(traj, 4, 6)
    assert torch.equal(a["observation"], b["observation"])
    with pytest.raises(FragmentError, match="no episode is at least fragment_length=13"):
        RandomFragmenter(torch.Generator(), 0)(traj, 13, 2)
    with pytest.warns(UserWarning, match="only 22 are usable"):
        RandomFragmenter(torch.Generator(), 10)(traj, 4, 2)


def test_active_selection_keeps_the_most_disputed_pairs():
    traj = trajectory_set([40, 40])
    members = [small_net(s) for s in range(3)]
    model = PreferenceModel(RewardEnsemble(members))
    base = RandomFragmenter(torch.Generator().manual_seed(0), 0)
    active = ActiveSelectionFragmenter(model, base, fragment_sample_factor=4)
    kept = active(traj, 5, 10)
    assert kept.shape == torch.Size([10, 2, 5])
    candidates = RandomFragmenter(torch.Generator().manual_seed(0), 0)(traj, 5, 40)
    score = active.disagreement(candidates)
    top = set(torch.topk(score, 10).indices.tolist())
    rows = {tuple(r) for r in candidates["observation"][..., 0, 0].tolist()}
    kept_rows = {tuple(r) for r in kept["observation"][..., 0, 0].tolist()}
    assert kept_rows <= rows
    top_rows = {tuple(candidates["observation"][i, :, 0, 0].tolist()) for i in top}
    assert kept_rows == top_rows
    for measure in ("probability", "label"):
        assert ActiveSelectionFragmenter(model, base, 2, measure)(traj, 5, 3).shape[0] == 3
    with pytest.raises(PreferenceError, match="needs a reward ensemble"):
        ActiveSelectionFragmenter(PreferenceModel(small_net()), base)
    with pytest.raises(PreferenceError, match="unknown uncertainty_on"):
        ActiveSelectionFragmenter(model, base, 2, "entropy")


# ---------------------------------------------------------------- gatherers
def test_synthetic_gatherer_example_probabilities():
    pairs = pairs_with_rewards([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [1, 2]]])
    gatherer = SyntheticGatherer(temperature=1.0, sample=False)
    gatherer.submit(pairs, torch.tensor([7, 8, 9]))
    ids, labels = gatherer.poll()
    assert ids.tolist() == [7, 8, 9]
    assert labels.dtype == torch.float32
    torch.testing.assert_close(labels, torch.tensor([0.8807971, 0.5, 0.0474259]))
    assert gatherer.poll()[0].numel() == 0  # answered once
    assert gatherer.metrics["entropy"] > 0


def test_synthetic_gatherer_temperature_zero_discount_threshold_and_sampling():
    pairs = pairs_with_rewards([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [1, 2]]])
    det = SyntheticGatherer(temperature=0.0, sample=True, seed=0).labels(pairs)
    assert det.tolist() == [1.0, 0.5, 0.0]
    # Discounting: [0, 2] vs [1, 0] with γ = 0.5 → 1 - 1 = 0 → a tie.
    tie = pairs_with_rewards([[[0, 2], [1, 0]]])
    assert SyntheticGatherer(sample=False, discount_factor=0.5).labels(tie).item() == 0.5
    big = pairs_with_rewards([[[1000, 0], [0, 0]]])
    clipped = SyntheticGatherer(sample=False, threshold=2.0).labels(big)
    torch.testing.assert_close(clipped, torch.sigmoid(torch.tensor([2.0])))
    many = pairs_with_rewards([[[1, 0], [0, 0]]] * 4000)
    a = SyntheticGatherer(seed=1).labels(many)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(float(a.mean()) - 0.7310586) < 0.03
    assert torch.equal(a, SyntheticGatherer(seed=1).labels(many))
    with pytest.raises(PreferenceError, match="needs a seed"):
        SyntheticGatherer(sample=True)


# ------------------------------------------------------------- model and loss
def test_preference_model_probability_noise_and_loss():
    net = small_net()
    pairs = pairs_with_rewards([[[1, 1], [0, 0]], [[0, 0], [1, 2]]])
    pairs["observation"] = torch.randn(2, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    model = PreferenceModel(net, noise_prob=0.2, discount_factor=0.9)
    probs, true = model(pairs)
    r = net.reward(pairs["observation"], pairs["action"], None, None)
    ret = r[..., 0] + 0.9 * r[..., 1]
    expected = 0.1 + 0.8 * torch.sigmoid(ret[:, 0] - ret[:, 1])
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(true, 0.1 + 0.8 * torch.sigmoid(torch.tensor([1.9, -2.8])))
    loss = PreferenceLoss(model)(pairs, torch.tensor([1.0, 0.0]))
    want = -(torch.log(expected[0]) + torch.log(1 - expected[1])) / 2
    torch.testing.assert_close(loss["loss"], want)
    assert set(loss.keys()) == {"loss", "accuracy", "gt_reward_loss"}
    loss["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())
    ensemble = PreferenceModel(RewardEnsemble([small_net(0), small_net(1)]))
    assert ensemble(pairs)[0].shape == torch.Size([2, 2])
    assert ensemble(pairs, member=1)[0].shape == torch.Size([2])


def test_preference_loss_without_noise_is_exact_on_saturated_logits():
    net = small_net()
    with torch.no_grad():
        net.mlp[-1].bias.fill_(0.0)
        for p in net.parameters():
            p.zero_()
        net.mlp[-1].bias.fill_(100.0)
    pairs = pairs_with_rewards([[[1], [0]]])
    pairs["observation"][:, 1] = 1.0  # only the reward of fragment 2's input differs
    out = PreferenceLoss(PreferenceModel(net))(pairs, torch.tensor([0.0]))
    assert torch.isfinite(out["loss"])


# ------------------------------------------------------------------- dataset
def test_dataset_bounded_fifo_validated_and_compact():
    dataset = PreferenceDataset(max_size=5)
    for start in range(0, 12, 3):
        pairs = pairs_with_rewards([[[start + i], [0]] for i in range(3)])
        dataset.push(pairs, torch.full((3,), start / 100, dtype=torch.float32))
    assert len(dataset) == 5
    firsts = dataset.pairs()["next", "reward"][:, 0, 0, 0].tolist()
    assert firsts == [7.0, 8.0, 9.0, 10.0, 11.0]  # oldest evicted first
    assert dataset.labels().tolist() == pytest.approx([0.06, 0.06, 0.09, 0.09, 0.09])
    pairs = pairs_with_rewards([[[1], [0]]])
    with pytest.raises(PreferenceError, match="float32"):
        dataset.push(pairs, torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(PreferenceError, match="one label per pair"):
        dataset.push(pairs, torch.tensor([1.0, 0.0]))
    with pytest.raises(PreferenceError, match="in \\[0, 1\\]"):
        dataset.push(pairs, torch.tensor([2.0]))


def test_dataset_unbounded_grows_and_memmap_save_load(tmp_path):
    grow = PreferenceDataset()
    for i in range(40):
        grow.push(pairs_with_rewards([[[i], [0]]]), torch.tensor([0.5]))
    assert len(grow) == 40
    assert grow.pairs()["next", "reward"][:, 0, 0, 0].tolist() == [float(i) for i in range(40)]

    mm = PreferenceDataset(max_size=4, memmap_dir=str(tmp_path / "store"))
    for i in range(6):
        mm.push(pairs_with_rewards([[[i], [0]]]), torch.tensor([i / 10], dtype=torch.float32))
    assert mm._pairs.is_memmap()
    mm.save(tmp_path / "saved")
    assert not list((tmp_path / "saved").rglob("*.pkl"))
    loaded = PreferenceDataset.load(tmp_path / "saved")
    assert loaded.max_size == 4 and len(loaded) == 4
    assert loaded.pairs()["next", "reward"][:, 0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    torch.testing.assert_close(loaded.labels(), torch.tensor([0.2, 0.3, 0.4, 0.5]))
    state = PreferenceDataset(4)
    state.load_state_dict(mm.state_dict())
    assert torch.equal(state.labels(), mm.labels())
    with pytest.raises(TrajectoryFileError, match="not a saved preference dataset"):
        PreferenceDataset.load(tmp_path / "nothing")
    with pytest.raises(PreferenceError, match="needs max_size"):
        PreferenceDataset(memmap_dir=str(tmp_path / "x"))
