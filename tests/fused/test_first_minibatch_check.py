"""The first-minibatch check: fused gradients against autograd's, once per fit.

A fused update whose gradients are wrong (here deliberately: 1% too large on one tensor)
must be caught before it trains, and the fit must then train exactly as the autograd
update does.
"""

import pytest
import torch
from tensordict import TensorDict

import tdimitation.fused as fused
from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.data import VecCollector, rollout
from tdimitation.envs import make_env
from tdimitation.fused import (
    BCGradients,
    FusedOptions,
    FusedUpdateWarning,
    PPOGradients,
    fused_update_for,
    gradient_disagreement,
)
from tdimitation.objectives import PPOClipLoss
from tdimitation.policies import CategoricalActor, policy_from_string
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl import PPO
from tests.helpers import quiet_trainer

DISAGREE = "autograd: fused gradients disagree with autograd on the first minibatch"


@pytest.fixture(scope="module")
def demos():
    env = make_env("CartPole-v1", 4, seed=0)
    trajectories = rollout(
        policy_from_string("scripted", env=env), env, min_episodes=4, deterministic=True
    )
    env.close()
    return trajectories


def _perturb_ppo(monkeypatch):
    step = PPOGradients.step

    def wrong_step(self, weights, grads, *args, **kwargs):
        out = step(self, weights, grads, *args, **kwargs)
        grads.actor_weight.mul_(1.01)
        return out

    monkeypatch.setattr(PPOGradients, "step", wrong_step)


def _perturb_bc(monkeypatch):
    call = BCGradients.__call__

    def wrong_call(self, *args, **kwargs):
        grads, metrics = call(self, *args, **kwargs)
        grads[0].mul_(1.01)
        return grads, metrics

    monkeypatch.setattr(BCGradients, "__call__", wrong_call)


def _ppo(**kwargs) -> PPO:
    return PPO(
        "CartPole-v1", num_envs=2, n_steps=64, batch_size=32, n_epochs=2, total_frames=384, **kwargs
    )


def _count_checks(monkeypatch) -> list:
    calls = []

    def counted(update, minibatch):
        calls.append(minibatch.numel())
        return gradient_disagreement(update, minibatch)

    monkeypatch.setattr(fused, "gradient_disagreement", counted)
    return calls


def test_ppo_falls_back_to_autograd_when_the_fused_gradients_disagree(monkeypatch):
    reference = _ppo(fast_update=False)
    quiet_trainer().fit(reference)
    _perturb_ppo(monkeypatch)
    model = _ppo()
    with pytest.warns(FusedUpdateWarning, match="this fit uses the autograd update"):
        quiet_trainer().fit(model)
    assert model.update_path.startswith(DISAGREE)
    assert model.optimizer_steps == reference.optimizer_steps == 3 * 2 * 4
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bc_falls_back_to_autograd_when_the_fused_gradients_disagree(monkeypatch, demos):
    def fit(**kwargs):
        model = BC("CartPole-v1", n_batches=40, steps_per_call=16, seed=1, l2_weight=1e-4, **kwargs)
        quiet_trainer().fit(model, datamodule=DemonstrationData("CartPole-v1", trajectories=demos))
        return model

    reference = fit(fast_updates=False)
    _perturb_bc(monkeypatch)
    with pytest.warns(FusedUpdateWarning, match="disagree"):
        model = fit()
    assert model.update_path.startswith(DISAGREE)
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_check_runs_once_per_fit(monkeypatch, demos):
    calls = _count_checks(monkeypatch)
    model = _ppo()
    quiet_trainer().fit(model)
    assert model.update_path == "fused" and calls == [32]  # one check in 3 rounds
    bc = BC("CartPole-v1", n_batches=64, steps_per_call=16, seed=1)
    quiet_trainer().fit(bc, datamodule=DemonstrationData("CartPole-v1", trajectories=demos))
    assert bc.update_path == "fused" and calls == [32, 32]  # one check in 4 blocks

    # Outside a Trainer: each new optimizer is a new fit.
    env = model.make_env()
    collector = VecCollector(env, model.actor, frames_per_batch=128, total_frames=128)
    batch = collector.rollout()
    collector.shutdown()
    first, second = model.configure_optimizers(), model.configure_optimizers()
    model.update(batch, first)
    model.update(batch, first)
    assert len(calls) == 3
    model.update(batch, second)
    assert len(calls) == 4 and model.update_path == "fused"


def test_the_check_moves_no_parameter_gradient_or_random_state():
    torch.manual_seed(0)
    actor = CategoricalActor(4, 3, (16, 16))
    loss = PPOClipLoss(actor, ValueCritic(4, (16, 16)), ent_coef=0.01)
    update = fused_update_for(loss, torch.optim.Adam(loss.parameters()), FusedOptions())
    obs, action = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with torch.no_grad():
        old_log_prob = actor.log_prob(obs, action) + 0.2 * torch.randn(32)
    minibatch = TensorDict(
        {
            "observation": obs,
            "action": action,
            "action_log_prob": old_log_prob,
            "advantage": torch.randn(32),
            "value_target": torch.randn(32),
        },
        [32],
    )
    before = [p.detach().clone() for p in loss.parameters()]
    rng_state = torch.get_rng_state()
    assert gradient_disagreement(update, minibatch) is None
    assert torch.equal(torch.get_rng_state(), rng_state)
    for p, q in zip(loss.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None
