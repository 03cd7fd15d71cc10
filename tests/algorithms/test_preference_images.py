"""Preference comparisons on image observations: CNN reward, CNN agent, compact dataset."""

import pytest
import torch

from tdimitation.algorithms import PreferenceComparisons
from tdimitation.errors import PreferenceError
from tdimitation.rewards import CNNRewardNet, MLPRewardNet
from tests.helpers import quiet_trainer as trainer

CUE_ENV = "tests.rl.image_envs:CueImageEnv"
SMALL_CNN = {"hidden_channels": [8, 8], "kernel_sizes": [3, 3], "strides": [1, 1]}


def cue_module(**kwargs) -> PreferenceComparisons:
    options = dict(
        agent_kwargs=dict(
            n_steps=16, batch_size=32, n_epochs=1, hidden_sizes=[], cnn=SMALL_CNN | {"features": 32}
        ),
        num_envs=2,
        total_frames=32 * 4,
        num_iterations=2,
        total_comparisons=12,
        fragment_length=4,
        comparison_queue_size=8,
        reward_kwargs=SMALL_CNN | {"hidden_sizes": [16]},
        reward_epochs=1,
        initial_epoch_multiplier=1,
    )
    return PreferenceComparisons(CUE_ENV, **(options | kwargs))


def test_images_get_a_cnn_reward_and_a_bounded_dataset_of_reward_inputs():
    module = cue_module()
    assert isinstance(module.reward_net, CNNRewardNet)
    assert module.agent.actor.encoder is not None
    trainer().fit(module)
    assert module.comparisons == 12 and len(module.dataset) == 8  # the oldest 4 evicted
    pairs = module.dataset.pairs()
    # What the reward reads (frames, actions) and the true reward; no next frames.
    assert set(pairs.keys(True, True)) == {"observation", "action", ("next", "reward")}
    assert pairs["observation"].dtype == torch.uint8
    assert pairs["observation"].shape == (8, 2, 4, 1, 10, 10)
    metrics = module.last_query_metrics
    assert 0.0 <= metrics["reward/accuracy"] <= 1.0


def test_reward_type_chooses_the_net_and_rejects_unknown_kinds():
    assert isinstance(cue_module(reward_type="mlp", reward_kwargs={}).reward_net, MLPRewardNet)
    vector = PreferenceComparisons(
        "tdimitation/CartPoleFixed-v1",
        agent_kwargs=dict(n_steps=16, batch_size=32),
        num_envs=2,
        total_frames=32 * 5,
    )
    assert isinstance(vector.reward_net, MLPRewardNet)
    with pytest.raises(PreferenceError, match="reward_type"):
        cue_module(reward_type="transformer")
