"""DAgger checkpoints: load_from_checkpoint restores everything, and resuming repeats a run."""

import pytest
import torch

from tdimitation.algorithms.dagger import DAgger
from tdimitation.callbacks import PeriodicCheckpoint
from tests.helpers import quiet_trainer as trainer


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def _assert_same_tensordict(a, b):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert torch.equal(a[key], b[key]), key


def _assert_same_state(a, b):
    assert torch.equal(_params(a), _params(b))
    assert (a.round, a.transitions_collected, a.episodes_collected) == (
        b.round,
        b.transitions_collected,
        b.episodes_collected,
    )
    _assert_same_tensordict(a.buffer[:], b.buffer[:])
    assert torch.equal(a.rng.get_state(), b.rng.get_state())
    sa, sb = a._sampling_rngs.state, b._sampling_rngs.state
    assert torch.equal(sa["torch"], sb["torch"]) and sa["python"] == sb["python"]
    assert torch.equal(sa["numpy"]["keys"], sb["numpy"]["keys"])
    assert sa["numpy"]["pos"] == sb["numpy"]["pos"]


KWARGS = dict(
    env_id="CartPole-v1",
    expert="scripted",
    rampdown_rounds=2,  # β = 1, then 0.5: the mixture draws from the module's generator
    num_envs=2,
    bc_epochs=1,
    batch_size=32,
    min_transitions=200,
    seed=3,
)


def test_load_from_checkpoint_restores_the_module(tmp_path):
    model = DAgger(n_rounds=2, **KWARGS)
    trainer(callbacks=[PeriodicCheckpoint(tmp_path, every_n_rounds=1)]).fit(model)
    # Used to fail with "BC.__init__() got multiple values for keyword argument 'n_epochs'".
    loaded = DAgger.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.round == 2 and loaded.hparams == model.hparams
    _assert_same_state(loaded, model)
    for k in range(2):
        _assert_same_tensordict(loaded.round_trajectories(k), model.round_trajectories(k))
    # The restored generators continue the saved streams.
    assert torch.equal(torch.rand(5, generator=loaded.rng), torch.rand(5, generator=model.rng))


def test_a_beta_callable_without_import_path_is_passed_again_on_load(tmp_path):
    def schedule(round_index):
        return 0.5

    model = DAgger(n_rounds=1, **(KWARGS | {"beta_schedule": schedule}))
    trainer(callbacks=[PeriodicCheckpoint(tmp_path, every_n_rounds=1)]).fit(model)
    with pytest.raises(ValueError, match="pass beta_schedule="):
        DAgger.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    loaded = DAgger.load_from_checkpoint(
        tmp_path / "last.ckpt", weights_only=True, beta_schedule=schedule
    )
    assert loaded.beta(3) == 0.5
    _assert_same_state(loaded, model)


def _resume_matches_uninterrupted(tmp_path, kwargs):
    uninterrupted = DAgger(n_rounds=3, **kwargs)
    trainer().fit(uninterrupted)
    first = DAgger(n_rounds=2, **kwargs)
    trainer(callbacks=[PeriodicCheckpoint(tmp_path, every_n_rounds=1)]).fit(first)
    resumed = DAgger(n_rounds=3, **kwargs)
    trainer(max_epochs=2).fit(resumed, ckpt_path=str(tmp_path / "last.ckpt"), weights_only=True)
    assert resumed.round == 3
    _assert_same_state(resumed, uninterrupted)


def test_resuming_gives_the_uninterrupted_run(tmp_path):
    # Pendulum: the Gaussian learner samples from the global RNG, which DAgger swaps for
    # its own checkpointed state during collection.
    kwargs = KWARGS | dict(env_id="Pendulum-v1", rampdown_rounds=4, min_transitions=400)
    _resume_matches_uninterrupted(tmp_path, kwargs)


def test_resuming_gives_the_uninterrupted_run_with_a_categorical_learner(tmp_path):
    # learning_rate ~ 0 keeps the learner near uniform, so its sampling noise matters.
    _resume_matches_uninterrupted(tmp_path, KWARGS | dict(rampdown_rounds=4, learning_rate=1e-9))


def test_a_recipe_run_loads_from_its_checkpoint(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    from tdimitation.fit import _make_cli

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "dagger" / "cartpole_fixed.yaml"
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr(sys, "argv", ["tdimitation"])
    schedule = "tests.algorithms.test_dagger:expert_then_half"
    args = ["--config", str(recipe), "--model.init_args.beta_schedule", schedule]
    args += ["--model.init_args.n_rounds", "1", "--model.init_args.bc_epochs", "1"]
    cli = _make_cli(args)
    model = cli.model
    assert "n_epochs" not in model.hparams and "n_batches" not in model.hparams
    assert model.hparams.beta_schedule == schedule and model.beta(1) == 0.5
    fit = trainer()
    fit.fit(model)
    fit.save_checkpoint(tmp_path / "run.ckpt")
    loaded = DAgger.load_from_checkpoint(tmp_path / "run.ckpt", weights_only=True)
    assert loaded.beta(1) == 0.5 and loaded.hparams.bc_epochs == 1
    _assert_same_state(loaded, model)
