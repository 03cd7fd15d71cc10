"""fused_update_for: a fused update for exactly what it implements, else the reason."""

import pytest
import torch

from tdimitation.fused import (
    BCFusedUpdate,
    FusedOptions,
    PPOFusedUpdate,
    fused_update_for,
)
from tdimitation.objectives import BCLoss, PPOClipLoss, QLearningLoss
from tdimitation.policies import CategoricalActor
from tdimitation.policies.actors import GaussianActor, QValueActor
from tdimitation.policies.critics import ValueCritic


def _ppo_loss(**options) -> PPOClipLoss:
    actor = CategoricalActor(4, 2, (16, 16))
    return PPOClipLoss(actor, ValueCritic(4, (16, 16)), **options)


def _adam(loss) -> torch.optim.Adam:
    return torch.optim.Adam(loss.parameters(), lr=1e-3, fused=True)


def test_the_losses_it_implements_get_their_update():
    loss = _ppo_loss(ent_coef=0.01)
    assert isinstance(fused_update_for(loss, _adam(loss), FusedOptions()), PPOFusedUpdate)
    bc = BCLoss(CategoricalActor(4, 2), l2_weight=1e-3)
    assert isinstance(fused_update_for(bc, _adam(bc), FusedOptions()), BCFusedUpdate)


def test_subclasses_and_other_losses_are_refused():
    class Scaled(PPOClipLoss):
        def forward(self, tensordict):
            return super().forward(tensordict) * 2

    class ScaledBC(BCLoss):
        pass

    loss = Scaled(CategoricalActor(4, 2), ValueCritic(4))
    assert fused_update_for(loss, _adam(loss), FusedOptions()) == "subclass Scaled of PPOClipLoss"
    bc = ScaledBC(CategoricalActor(4, 2))
    assert fused_update_for(bc, _adam(bc), FusedOptions()) == "subclass ScaledBC of BCLoss"
    q = QLearningLoss(QValueActor(4, 2))
    assert fused_update_for(q, _adam(q), FusedOptions()) == "no fused update for QLearningLoss"


def test_an_option_the_update_does_not_read_is_refused(monkeypatch):
    # As if PPOClipLoss had an option the fused update did not implement: set away from
    # its default it refuses the update, left at its default it does not.
    monkeypatch.setattr(PPOFusedUpdate, "options", ("clip_epsilon", "vf_coef"))
    loss = _ppo_loss(ent_coef=0.01)
    reason = fused_update_for(loss, _adam(loss), FusedOptions())
    assert reason == "PPOClipLoss option ent_coef=0.01 (not implemented by the fused update)"
    loss = _ppo_loss()
    assert isinstance(fused_update_for(loss, _adam(loss), FusedOptions()), PPOFusedUpdate)


def test_networks_dtypes_and_optimizers_it_does_not_implement_are_refused():
    loss = _ppo_loss()
    loss.double()
    assert "not float32" in fused_update_for(loss, _adam(loss), FusedOptions())

    loss = PPOClipLoss(CategoricalActor(4, 2, (8,), "elu"), ValueCritic(4, (8,), "elu"))
    assert "tanh or ReLU" in fused_update_for(loss, _adam(loss), FusedOptions())
    loss = PPOClipLoss(GaussianActor(4, 2, hidden_sizes=(8,)), ValueCritic(4, (16,)))
    assert "hidden sizes" in fused_update_for(loss, _adam(loss), FusedOptions())

    loss = _ppo_loss()
    adam = torch.optim.Adam(loss.parameters(), amsgrad=True)
    assert fused_update_for(loss, adam, FusedOptions()) == "Adam with AMSGrad"
    sgd = torch.optim.SGD(loss.parameters(), lr=0.1)
    assert "optimizer SGD" in fused_update_for(loss, sgd, FusedOptions())
    with torch.autocast("cpu"):
        assert fused_update_for(loss, _adam(loss), FusedOptions()) == "autocast is enabled"


def test_a_backward_that_is_not_plain_is_refused():
    loss = _ppo_loss()

    def backward(value):
        value.backward()

    options = FusedOptions(backward=backward)
    assert fused_update_for(loss, _adam(loss), options) == "a custom backward function"


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_ppo_update_reads_the_options(max_grad_norm):
    loss = _ppo_loss()
    update = fused_update_for(loss, _adam(loss), FusedOptions(max_grad_norm=max_grad_norm))
    assert update.max_grad_norm == max_grad_norm and not update.compile
