"""BC's fast path: analytic gradients, raw optimizer steps inside a block, cheap logging."""

import pytest
import torch

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
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
def test_analytic_gradients_equal_autograd(
    activation, hidden, normalize, ent_weight, l2_weight, scale
):
    torch.manual_seed(0)
    actor = CategoricalActor(5, 3, hidden, activation, normalize_observations=normalize)
    if normalize:
        actor.obs_norm.update(torch.randn(100, 5) * 3 + 1)
    loss = BCLoss(actor, ent_weight=ent_weight, l2_weight=l2_weight)
    layers = loss.analytic_layers()
    assert layers is not None
    obs, act = torch.randn(32, 5), torch.randint(0, 3, (32,))
    reference = loss.loss_tensors(obs, act)
    expected = torch.autograd.grad(reference["loss"] * scale, list(actor.parameters()))
    grads, metrics = loss.analytic_gradients(obs, act, layers, scale, diagnostics=True)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert metrics.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(metrics[key], value.detach(), rtol=1e-6, atol=1e-7)
    assert loss.analytic_gradients(obs, act, layers, scale)[1] == {}


def test_analytic_path_declines_what_it_does_not_know():
    assert BCLoss(GaussianActor(3, 2)).analytic_layers() is None
    assert BCLoss(CategoricalActor(3, 2, (8,), "elu")).analytic_layers() is None
    frozen = CategoricalActor(3, 2, (8,))
    frozen.net[0].weight.requires_grad_(False)
    assert BCLoss(frozen).analytic_layers() is None

    class Tempered(CategoricalActor):
        def logits(self, observation):
            return super().logits(observation) / 2

    assert BCLoss(Tempered(3, 2, (8,))).analytic_layers() is None


@pytest.mark.parametrize("accumulate", [1, 3])
def test_fast_path_matches_lightning_path(cartpole_demos, accumulate):
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
    """The Gaussian policy takes the fast path with autograd (or the Lightning path)."""
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


@pytest.mark.parametrize("kwargs", [{"fused": True}, {"amsgrad": True}, {"foreach": False}])
def test_direct_adam_is_bit_identical_to_step(kwargs):
    from tdimitation.algorithms.bc import _DirectAdam

    torch.manual_seed(0)
    twins = [CategoricalActor(4, 2, (8, 8)) for _ in range(2)]
    twins[1].load_state_dict(twins[0].state_dict())
    params = [list(t.parameters()) for t in twins]
    optimizers = [torch.optim.Adam(p, lr=1e-2, **kwargs) for p in params]
    assert _DirectAdam.build(optimizers[1], params[1]) is None  # no state yet
    direct = None
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params[0]]
        for p, g in zip(params[0], grads, strict=True):
            p.grad = g.clone()
        optimizers[0].step()
        if direct is None:
            for p, g in zip(params[1], grads, strict=True):
                p.grad = g.clone()
            optimizers[1].step()
            direct = _DirectAdam.build(optimizers[1], params[1])
            assert direct is not None
        else:
            direct([g.clone() for g in grads])
    for a, b in zip(params[0], params[1], strict=True):
        assert torch.equal(a, b)
    # Not taken where it could differ from step(): other optimizers, other params.
    assert _DirectAdam.build(optimizers[1], params[1][:-1]) is None
    sgd = torch.optim.SGD(params[1], lr=0.1)
    assert _DirectAdam.build(sgd, params[1]) is None
