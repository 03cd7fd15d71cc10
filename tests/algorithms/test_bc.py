import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.errors import SpaceMismatchError, TrajectoryError
from tdimitation.objectives import BCLoss
from tdimitation.policies import CategoricalActor, GaussianActor, policy_from_string
from tests.helpers import quiet_trainer as trainer


@pytest.fixture(scope="module")
def cartpole_demos():
    env = make_env("CartPole-v1", 8, seed=0)
    return rollout(policy_from_string("scripted", env=env), env, min_episodes=8, deterministic=True)


def test_bc_loss_matches_reference_numbers():
    actor = CategoricalActor(3, 2, ())
    with torch.no_grad():
        actor.net[0].weight.zero_()
        actor.net[0].bias.copy_(torch.log(torch.tensor([0.25, 0.75])))
    batch = TensorDict(
        {"observation": torch.randn(4, 3), "action": torch.tensor([1, 1, 0, 1])}, batch_size=[4]
    )
    out = BCLoss(actor, ent_weight=1e-3, l2_weight=0.0)(batch)
    assert out["neglogp"].item() == pytest.approx(0.5623351, abs=1e-6)
    assert out["entropy"].item() == pytest.approx(0.5623351, abs=1e-6)
    assert out["prob_true_act"].item() == pytest.approx(0.625, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.5617728, abs=1e-6)
    assert out["ent_loss"].item() == pytest.approx(-0.0005623351, abs=1e-9)


def test_bc_loss_l2_term_and_gaussian_policy():
    actor = GaussianActor(3, 2, hidden_sizes=(4,))
    batch = TensorDict(
        {"observation": torch.randn(8, 3), "action": torch.randn(8, 2)}, batch_size=[8]
    )
    out = BCLoss(actor, ent_weight=0.0, l2_weight=0.5)(batch)
    l2 = sum(p.pow(2).sum() for p in actor.parameters()) / 2
    assert out["l2_norm"].item() == pytest.approx(l2.item(), rel=1e-6)
    assert out["l2_loss"].item() == pytest.approx(0.5 * l2.item(), rel=1e-6)
    expected_nll = -actor.get_dist(batch).log_prob(batch["action"]).mean()
    assert out["neglogp"].item() == pytest.approx(expected_nll.item(), rel=1e-5)


def test_bc_loss_deterministic_policy_is_regression():
    policy = torch.nn.Linear(3, 2)
    from tensordict.nn import TensorDictModule

    module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    batch = TensorDict(
        {"observation": torch.randn(8, 3), "action": torch.randn(8, 2)}, batch_size=[8]
    )
    out = BCLoss(module, ent_weight=0.0)(batch)
    mse = (policy(batch["observation"]) - batch["action"]).pow(2).sum(-1).mean()
    assert out["neglogp"].item() == pytest.approx(mse.item(), rel=1e-6)


def test_bc_reaches_expert_level_on_cartpole(tmp_path):
    data = DemonstrationData(
        "CartPole-v1", expert="scripted", n_episodes=50, cache_dir=str(tmp_path)
    )
    model = BC("CartPole-v1", n_epochs=4, batch_size=32, seed=0)
    trainer().fit(model, datamodule=data)
    assert model.evaluate(20)["return_mean"] >= 475
    # demonstrations were cached as a dataset and are reused
    assert len(list(tmp_path.iterdir())) == 1


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def test_fused_steps_and_accumulation_are_exact(cartpole_demos):
    torch.manual_seed(0)
    runs = {}
    for name, kwargs in {
        "k1": {"steps_per_call": 1, "batch_size": 64},
        "k64": {"steps_per_call": 64, "batch_size": 64},
        "accumulate": {"steps_per_call": 8, "batch_size": 16, "grad_accumulation": 4},
    }.items():
        torch.manual_seed(1)
        model = BC("CartPole-v1", n_batches=40, seed=3, ent_weight=1e-3, **kwargs)
        trainer().fit(
            model, datamodule=DemonstrationData("CartPole-v1", trajectories=cartpole_demos)
        )
        runs[name] = _params(model)
    assert torch.equal(runs["k1"], runs["k64"])
    assert torch.allclose(runs["k1"], runs["accumulate"], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of n_epochs and n_batches"),
        ({"n_epochs": 1, "n_batches": 5}, "exactly one of n_epochs and n_batches"),
        ({"n_epochs": 1, "optimizer_kwargs": {"weight_decay": 0.1}}, "l2_weight"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BC("CartPole-v1", **kwargs)


def test_bad_demonstrations(cartpole_demos):
    pendulum = rollout(
        policy_from_string("zero", env=make_env("Pendulum-v1")),
        make_env("Pendulum-v1"),
        min_episodes=1,
    )
    with pytest.raises(SpaceMismatchError, match="expects"):
        trainer().fit(
            BC("CartPole-v1", n_epochs=1),
            datamodule=DemonstrationData("CartPole-v1", trajectories=pendulum),
        )
    with pytest.raises(TrajectoryError, match="empty"):
        trainer().fit(
            BC("CartPole-v1", n_epochs=1),
            datamodule=DemonstrationData("CartPole-v1", trajectories=cartpole_demos[:0]),
        )
    with pytest.raises(TrajectoryError, match="fewer than one batch"):
        trainer().fit(
            BC("CartPole-v1", n_epochs=1, batch_size=10_000),
            datamodule=DemonstrationData("CartPole-v1", trajectories=cartpole_demos),
        )
    with pytest.raises(ValueError, match="exactly one source"):
        DemonstrationData("CartPole-v1")


def test_demonstration_cache_separates_env_options(tmp_path):
    plain = DemonstrationData("LunarLander-v3", expert="scripted", cache_dir=str(tmp_path))
    continuous = DemonstrationData(
        "LunarLander-v3",
        expert="scripted",
        cache_dir=str(tmp_path),
        env_kwargs={"continuous": True},
    )
    fixed = DemonstrationData(
        "LunarLander-v3", expert="scripted", cache_dir=str(tmp_path), fixed_horizon=300
    )
    paths = {plain._cache_path(), continuous._cache_path(), fixed._cache_path()}
    assert len(paths) == 3
