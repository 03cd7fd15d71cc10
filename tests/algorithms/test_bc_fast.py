"""BC's fused path: closed-form gradients, direct Adam steps inside a block, cheap logging."""

import pytest
import torch

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.fused import BCGradients
from tdimitation.objectives import BCLoss
from tdimitation.policies import CategoricalActor, GaussianActor, policy_from_string
from tests.helpers import quiet_trainer as trainer


@pytest.fixture(scope="module")
def cartpole_demos():
    env = make_env("CartPole-v1", 8, seed=0)
    return rollout(policy_from_string("scripted", env=env), env, min_episodes=8, deterministic=True)


@pytest.fixture(scope="module")
def pendulum_demos():
    env = make_env("Pendulum-v1", 4, seed=0)
    return rollout(policy_from_string("scripted", env=env), env, min_episodes=4, deterministic=True)


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


@pytest.mark.parametrize(
    "activation, hidden, normalize, ent_weight, l2_weight, scale",
    [
        ("tanh", (32, 32), False, 1e-3, 0.0, 1.0),
        ("relu", (16,), True, 0.1, 0.01, 0.25),
        ("tanh", (), False, 0.0, 0.0, 1.0),
    ],
)
def test_closed_form_gradients_equal_autograd(
    activation, hidden, normalize, ent_weight, l2_weight, scale
):
    torch.manual_seed(0)
    actor = CategoricalActor(5, 3, hidden, activation, normalize_observations=normalize)
    if normalize:
        actor.obs_norm.update(torch.randn(100, 5) * 3 + 1)
    loss = BCLoss(actor, ent_weight=ent_weight, l2_weight=l2_weight)
    gradients = BCGradients(loss)
    obs, act = torch.randn(32, 5), torch.randint(0, 3, (32,))
    reference = loss.loss_tensors(obs, act)
    expected = torch.autograd.grad(reference["loss"] * scale, list(actor.parameters()))
    grads, metrics = gradients(obs, act, scale, diagnostics=True)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert metrics.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(metrics[key], value.detach(), rtol=1e-6, atol=1e-7)
    assert gradients(obs, act, scale)[1] == {}


def test_closed_form_declines_what_it_does_not_know():
    assert "GaussianActor" in BCGradients.unsupported_reason(BCLoss(GaussianActor(3, 2)))
    elu = BCLoss(CategoricalActor(3, 2, (8,), "elu"))
    assert "tanh or ReLU" in BCGradients.unsupported_reason(elu)
    frozen = CategoricalActor(3, 2, (8,))
    frozen.net[0].weight.requires_grad_(False)
    assert BCGradients.unsupported_reason(BCLoss(frozen)) == "some parameters are frozen"

    class Tempered(CategoricalActor):
        def logits(self, observation):
            return super().logits(observation) / 2

    assert "Tempered" in BCGradients.unsupported_reason(BCLoss(Tempered(3, 2, (8,))))


@pytest.mark.parametrize("accumulate", [1, 3])
def test_fused_path_matches_lightning_path(cartpole_demos, accumulate):
    """Same updates through Lightning's wrapper with autograd, and same step count."""
    runs = {}
    for fast in (True, False):
        torch.manual_seed(1)
        model = BC(
            "CartPole-v1",
            n_batches=50,
            batch_size=32 // accumulate,
            grad_accumulation=accumulate,
            steps_per_call=16,
            seed=3,
            l2_weight=1e-4,
            fast_updates=fast,
        )
        fit = trainer()
        fit.fit(model, datamodule=DemonstrationData("CartPole-v1", trajectories=cartpole_demos))
        assert model.batches_done == 50  # optimizer steps, on both paths
        # The fused path steps the torch optimizer itself; Lightning counts only its own.
        assert fit.global_step == (0 if fast else 50)
        assert model.update_path == ("fused" if fast else "autograd: fast_updates=False")
        runs[fast] = _params(model)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_continuous_policy_fused_steps_are_exact(pendulum_demos, fast):
    """The Gaussian policy takes the autograd loop, on the torch optimizer or Lightning's."""
    runs = {}
    for k in (1, 16):
        torch.manual_seed(1)
        model = BC("Pendulum-v1", n_batches=24, steps_per_call=k, seed=3, fast_updates=fast)
        trainer().fit(
            model, datamodule=DemonstrationData("Pendulum-v1", trajectories=pendulum_demos)
        )
        runs[k] = _params(model)
    assert torch.equal(runs[1], runs[16])


def test_metrics_are_logged_when_the_logger_records(cartpole_demos):
    model = BC("CartPole-v1", n_batches=40, steps_per_call=8, seed=0)
    fit = trainer(log_every_n_steps=1)
    fit.fit(model, datamodule=DemonstrationData("CartPole-v1", trajectories=cartpole_demos))
    logged = fit.callback_metrics
    for key in ("loss", "neglogp", "entropy", "ent_loss", "prob_true_act", "l2_norm", "l2_loss"):
        assert torch.isfinite(logged[f"bc/{key}"]), key
    assert logged["bc/entropy"] > 0 and 0 < logged["bc/prob_true_act"] < 1
    assert model.batches_done == 40
