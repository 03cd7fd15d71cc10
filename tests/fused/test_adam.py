"""The one Adam of the fused updates against ``torch.optim.Adam.step()``, and its refusals."""

import pytest
import torch

from tdimitation.fused import PPOGradients
from tdimitation.fused.adam import FlatAdam, adam_refusal
from tdimitation.objectives import PPOClipLoss
from tdimitation.policies import CategoricalActor
from tdimitation.policies.critics import ValueCritic


@pytest.mark.parametrize("kwargs", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_flat_adam_in_place_is_bit_identical_to_step(kwargs):
    torch.manual_seed(0)
    twins = [CategoricalActor(4, 2, (8, 8)) for _ in range(2)]
    twins[1].load_state_dict(twins[0].state_dict())
    params = [list(t.parameters()) for t in twins]
    optimizers = [torch.optim.Adam(p, lr=1e-2, **kwargs) for p in params]
    assert adam_refusal(optimizers[1], params[1]) is None
    adam = FlatAdam(optimizers[1], params[1])
    assert not adam.started  # no state yet: its first step is the optimizer's own
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params[0]]
        for p, g in zip(params[0], grads, strict=True):
            p.grad = g.clone()
        optimizers[0].step()
        with torch.no_grad():
            adam.step([g.clone() for g in grads])
    assert adam.started and adam.flat_steps == 4
    for a, b in zip(params[0], params[1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params[0], params[1], strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizers[0].state[a][key], optimizers[1].state[b][key])


def test_flat_adam_refuses_what_it_does_not_implement():
    params = list(CategoricalActor(4, 2, (8,)).parameters())
    cases = [
        (torch.optim.Adam(params, amsgrad=True), "AMSGrad"),
        (torch.optim.Adam(params, weight_decay=0.1), "weight decay"),
        (torch.optim.Adam(params, maximize=True), "maximize"),
        (torch.optim.Adam(params, differentiable=True), "differentiable"),
        (torch.optim.AdamW(params), "weight decay"),  # AdamW's default decay is 0.01
        (torch.optim.SGD(params, lr=0.1), "optimizer SGD"),
        (torch.optim.Adam(params[:-1]), "not exactly"),
        (torch.optim.Adam(params, lr=torch.tensor(0.01)), "tensor learning rate"),
        (
            torch.optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}]),
            "different hyperparameters",
        ),
    ]
    for optimizer, reason in cases:
        assert reason in adam_refusal(optimizer, params), reason
    assert adam_refusal(torch.optim.AdamW(params, weight_decay=0.0), params) is None


def test_flat_adam_on_a_flat_layout_is_bit_identical_to_the_for_loop_step():
    """PPO's flat buffers: the for-loop Adam's arithmetic, bit for bit, written back."""
    torch.manual_seed(0)
    twins = [
        PPOClipLoss(CategoricalActor(4, 3, (16, 8)), ValueCritic(4, (16, 8))) for _ in range(2)
    ]
    twins[1].load_state_dict(twins[0].state_dict())
    optimizers = [torch.optim.Adam(t.parameters(), lr=1e-2, foreach=False) for t in twins]
    layout = PPOGradients(twins[1])
    adam = None
    for _ in range(2):
        # A new FlatAdam per round, as PPO's fused update builds one.
        adam = FlatAdam(optimizers[1], layout.parameters(), layout=layout)
        for _ in range(4):
            grads = {p: torch.randn_like(p) for p in layout.parameters()}
            twin_of = dict(zip(twins[1].parameters(), twins[0].parameters(), strict=True))
            for p, g in grads.items():
                twin_of[p].grad = g.clone()
            optimizers[0].step()
            with torch.no_grad():
                layout.load(adam.grad, grads)
                adam.step()
        adam.finish()
    assert adam.flat_steps == 4
    for a, b in zip(twins[0].parameters(), twins[1].parameters(), strict=True):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizers[0].state[a][key], optimizers[1].state[b][key])
