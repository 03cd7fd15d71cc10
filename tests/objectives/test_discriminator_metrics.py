"""DiscriminatorLoss metrics against an independent computation with a real reward net."""

import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.errors import LossError
from tdimitation.objectives import DiscriminatorLoss
from tdimitation.rewards import MLPRewardNet


@pytest.fixture(scope="module")
def batches():
    env = make_env("CartPole-v1", num_envs=2, seed=0)
    expert = env.rollout(20, break_when_any_done=False).reshape(-1)
    generator = env.rollout(20, break_when_any_done=False).reshape(-1)
    return env, expert, generator


def _logits(net, td):
    with torch.no_grad():
        return net.reward(td["observation"], td["action"], None, None)


def test_proportions_and_accuracies_match_an_independent_computation(batches):
    env, expert, generator = batches
    torch.manual_seed(0)
    net = MLPRewardNet.from_env(env)
    # Centre the logits on their median so that the discriminator calls some samples
    # expert and some not: the predicted proportion is then neither 0 nor 1.
    joined = torch.cat([_logits(net, expert), _logits(net, generator)])
    with torch.no_grad():
        net.mlp[-1].bias -= joined.median() + 1e-3
    out = DiscriminatorLoss(net)(expert, generator)
    logit_e, logit_g = _logits(net, expert), _logits(net, generator)
    n = len(logit_e)
    called_expert = int((logit_e > 0).sum()) + int((logit_g > 0).sum())
    assert 0 < called_expert < 2 * n
    assert out["proportion_expert_pred"].item() == pytest.approx(called_expert / (2 * n))
    assert out["proportion_expert_true"].item() == 0.5  # equal batch sizes, expert label 1
    assert out["accuracy_expert"].item() == pytest.approx(float((logit_e > 0).float().mean()))
    assert out["accuracy_generator"].item() == pytest.approx(float((logit_g <= 0).float().mean()))
    assert out["n_expert"].item() == n and out["n_generator"].item() == n


def test_batch_errors_are_value_errors(batches):
    env, expert, generator = batches
    loss = DiscriminatorLoss(MLPRewardNet.from_env(env))
    with pytest.raises(LossError, match="batches of the same size"):
        loss(expert, generator[:5])
    with pytest.raises(LossError, match="gradient_penalty must be >= 0"):
        DiscriminatorLoss(MLPRewardNet.from_env(env), gradient_penalty=-1.0)
    with pytest.raises(LossError, match="has no reward"):
        DiscriminatorLoss(torch.nn.Linear(4, 1))
    assert issubclass(LossError, ValueError)
