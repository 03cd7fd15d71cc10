"""Reward trainers (basic, ensemble with bootstrap) and the regularisers."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.algorithms.preference.regularizers import (
    IntervalParamScaler,
    LpRegularizer,
    WeightDecayRegularizer,
    make_regularizer,
)
from tdimitation.algorithms.preference.trainers import BasicRewardTrainer, EnsembleRewardTrainer
from tdimitation.errors import PreferenceError
from tdimitation.objectives import PreferenceLoss, PreferenceModel
from tdimitation.rewards import MLPRewardNet, RewardEnsemble


def labelled_dataset(n: int, length: int = 4, seed: int = 0) -> PreferenceDataset:
    """Pairs whose true reward is the first observation feature; labels prefer the higher."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 2, length, 3, generator=g)
    reward = obs[..., 0:1]
    pairs = TensorDict(
        {
            "observation": obs,
            "action": torch.zeros(n, 2, length, dtype=torch.int64),
            "next": {
                "observation": obs,
                "reward": reward,
                "done": torch.zeros(n, 2, length, 1, dtype=torch.bool),
            },
        },
        [n, 2, length],
    )
    returns = reward[..., 0].sum(-1)
    labels = (returns[:, 0] > returns[:, 1]).float()
    dataset = PreferenceDataset()
    dataset.push(pairs, labels)
    return dataset


def net(seed: int) -> MLPRewardNet:
    torch.manual_seed(seed)
    return MLPRewardNet((3,), 2, True, use_action=False, hidden_sizes=(16,))


def test_basic_trainer_learns_the_reward_and_repeats_per_seed():
    dataset = labelled_dataset(256)
    results = []
    for _ in range(2):
        model = PreferenceModel(net(0))
        trainer = BasicRewardTrainer(
            PreferenceLoss(model), torch.Generator().manual_seed(1), 32, 16, epochs=2, lr=1e-2
        )
        before = trainer.evaluate(*dataset[torch.arange(256)])["accuracy"]
        metrics = trainer.train(dataset, epoch_multiplier=5.0)
        assert metrics["epochs"] == 10.0
        results.append([p.detach().clone() for p in model.parameters()])
    after = trainer.evaluate(*dataset[torch.arange(256)])
    assert after["accuracy"] > 0.9 > before + 0.2
    assert after["loss"] < 0.35
    pairs, labels = dataset[torch.arange(256)]
    true = pairs["next", "reward"][..., 0].sum(-1)
    gt = torch.nn.functional.binary_cross_entropy_with_logits(true[:, 0] - true[:, 1], labels)
    assert after["gt_reward_loss"] == pytest.approx(float(gt), rel=1e-5)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_ensemble_trainer_bootstraps_each_member():
    dataset = labelled_dataset(64)
    model = PreferenceModel(RewardEnsemble([net(0), net(0)]))  # identical initial members
    trainer = EnsembleRewardTrainer(PreferenceLoss(model), torch.Generator().manual_seed(0))
    rows = trainer._members_indices(torch.arange(64))
    assert len(rows) == 2 and not torch.equal(rows[0], rows[1])
    assert len(set(rows[0].tolist())) < 64  # drawn with replacement
    trainer.train(dataset, epoch_multiplier=3)
    m0, m1 = model.ensemble.members
    assert not torch.equal(m0.mlp[0].weight, m1.mlp[0].weight)  # different resamples
    with pytest.raises(PreferenceError, match="needs a preference model over a RewardEnsemble"):
        EnsembleRewardTrainer(PreferenceLoss(PreferenceModel(net(0))), None)


def test_trainer_bad_input():
    loss = PreferenceLoss(PreferenceModel(net(0)))
    with pytest.raises(PreferenceError, match="minibatch_size \\(24\\) must divide batch_size"):
        BasicRewardTrainer(loss, None, batch_size=32, minibatch_size=24)
    with pytest.raises(PreferenceError, match="empty preference dataset"):
        BasicRewardTrainer(loss, None).train(PreferenceDataset())


def test_lp_and_weight_decay_regularisers():
    model = PreferenceModel(net(0))
    params = list(model.parameters())
    lp = LpRegularizer(0.5, p=1.0).bind(params, torch.optim.SGD(params, lr=0.1))
    expected = 0.5 * sum(p.abs().sum() for p in params)
    torch.testing.assert_close(lp.penalty(), expected)
    wd = WeightDecayRegularizer(0.2).bind(params, torch.optim.SGD(params, lr=0.5))
    before = [p.detach().clone() for p in params]
    wd.after_backward()
    for b, p in zip(before, params, strict=True):
        torch.testing.assert_close(p.detach(), b * 0.9)


def test_interval_scaler_and_regulariser_validation():
    scaler = IntervalParamScaler(0.5, (0.9, 1.1))
    assert scaler(2.0, train_loss=1.0, val_loss=1.5) == 3.0  # overfitting: stronger
    assert scaler(2.0, train_loss=1.0, val_loss=0.5) == 1.0  # underfitting: weaker
    assert scaler(2.0, train_loss=1.0, val_loss=1.0) == 2.0
    with pytest.raises(PreferenceError, match="scaling_factor"):
        IntervalParamScaler(1.5, (0.9, 1.1))
    with pytest.raises(PreferenceError, match="0 <= low < high"):
        IntervalParamScaler(0.5, (1.1, 0.9))
    with pytest.raises(PreferenceError, match="does nothing"):
        LpRegularizer(0.0)
    with pytest.raises(PreferenceError, match="needs val_split"):
        LpRegularizer(0.1, lambda_updater=scaler)
    with pytest.raises(PreferenceError, match="unknown regularizer"):
        make_regularizer("l3", 0.1)


def test_adaptive_regulariser_drives_lambda_from_validation_split():
    dataset = labelled_dataset(40)
    model = PreferenceModel(net(0))
    reg = make_regularizer(
        "lp", 1e-3, val_split=0.25, scaling_factor=0.5, tolerable_interval=(0.99, 1.01), p=2
    )
    trainer = BasicRewardTrainer(
        PreferenceLoss(model), torch.Generator().manual_seed(0), 8, epochs=4, regularizer=reg
    )
    metrics = trainer.train(dataset)
    assert "val/loss" in metrics
    # Four epochs with a narrow interval: λ moved by factors of 1.5 or 0.5.
    assert metrics["regularizer_lambda"] != 1e-3
    ratio = torch.tensor(metrics["regularizer_lambda"] / 1e-3).log()
    steps = [
        (a * torch.tensor(1.5).log() + b * torch.tensor(0.5).log())
        for a in range(5)
        for b in range(5)
    ]
    assert any(abs(float(ratio - s)) < 1e-6 for s in steps)
