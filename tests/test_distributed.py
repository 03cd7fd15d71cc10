"""Multi-process training: BC and PPO under ``ddp`` on 2 CPU processes, refusals elsewhere.

Lightning's ``ddp`` launcher runs the script again for each extra process, which cannot
happen inside pytest: the fits run in a real subprocess (``tests/ddp_runs.py``) that
writes each process's parameters, compared here with one-process fits built by the same
code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms import DemonstrationData
from tdimitation.distributed import StrategyCheck, rank_seed
from tdimitation.errors import StrategyError
from tdimitation.fit import _make_cli, fit_main
from tests import ddp_runs

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _run_ddp(algorithm: str, out: Path, *args: str) -> list[dict]:
    """Run ``tests/ddp_runs.py`` on 2 processes; each process's record, by rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_runs.py"), algorithm, "2", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _assert_same(a: dict, b: dict, atol: float, skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in skip:
            continue
        assert torch.allclose(a[key].double(), b[key].double(), rtol=0, atol=atol), key


def test_bc_on_two_processes_equals_one_process_with_twice_the_batch(tmp_path):
    per_process = 8
    ranks = _run_ddp("bc", tmp_path, str(per_process))
    demos = ddp_runs.bc_demonstrations()

    def one_process(batch_size: int) -> dict:
        model = ddp_runs.bc_model(batch_size)
        data = DemonstrationData(ddp_runs.BC_ENV, trajectories=demos)
        ddp_runs.trainer(1).fit(model, datamodule=data)
        return model.state_dict()

    single = one_process(2 * per_process)
    assert ranks[0]["update_path"].startswith("autograd: strategy DDPStrategy")
    assert [r["batches_done"] for r in ranks] == [ddp_runs.BC_STEPS] * 2
    _assert_same(ranks[0]["state"], ranks[1]["state"], atol=0)
    # Same parameters as one process with batch 2B (fused there, autograd here).
    _assert_same(ranks[0]["state"], single, atol=1e-6)
    # ...and not those of one process with batch B: the comparison can tell them apart.
    half = one_process(per_process)
    assert not torch.allclose(half["policy.net.0.weight"], single["policy.net.0.weight"], atol=1e-4)
    # The checkpoint is written once, complete, by the first process.
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    _assert_same(saved["state_dict"], single, atol=1e-6)
    assert saved["tdimitation"]["batches_done"] == ddp_runs.BC_STEPS
    assert not list(tmp_path.glob(".last.ckpt.*"))


def test_bc_evaluates_in_the_first_process_only(tmp_path):
    ranks = _run_ddp("bc-eval", tmp_path)
    # Each epoch ends with an evaluation, run by the first process alone...
    epochs = ranks[0]["epochs"]
    assert epochs >= 1 and [r["evaluations"] for r in ranks] == [epochs, 0]
    # ...which leaves the processes' training in step.
    _assert_same(ranks[0]["state"], ranks[1]["state"], atol=0)


def test_ppo_on_two_processes_collects_on_both_and_averages_gradients(tmp_path):
    ranks = _run_ddp("ppo", tmp_path)
    frames = 2 * ddp_runs.NUM_ENVS * ddp_runs.N_STEPS
    assert [r["frames"] for r in ranks] == [frames, frames]  # total_frames counts both
    assert ranks[0]["update_path"].startswith("autograd: strategy DDPStrategy")
    _assert_same(ranks[0]["state"], ranks[1]["state"], atol=0)
    batches = [TensorDict.from_dict(r["batch"], batch_dims=2) for r in ranks]
    # Each process collected its own episodes (seeded from the run seed and its rank).
    assert not torch.equal(batches[0]["observation"], batches[1]["observation"])

    # The update is one Adam step on the mean of the two processes' gradients, taken at
    # the initial parameters (one epoch, one minibatch per process).
    model = ddp_runs.ppo_model(2)
    params = list(model.actor.parameters()) + list(model.critic.parameters())
    gradients = []
    for batch in batches:
        advantage, value_target = model.advantages(batch)
        round_td = model._round_tensordict(batch, advantage, value_target)
        out = model.loss_module(round_td)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        gradients.append(torch.autograd.grad(loss, params))

    def adam_step(grads) -> dict:
        stepped = ddp_runs.ppo_model(2)
        stepped_params = list(stepped.actor.parameters()) + list(stepped.critic.parameters())
        optimizer = torch.optim.Adam(stepped_params, lr=1e-2, eps=1e-5)
        for p, g in zip(stepped_params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        return {k: v for k, v in stepped.state_dict().items() if "obs_norm" not in k}

    averaged = adam_step([(a + b) / 2 for a, b in zip(*gradients, strict=True)])
    trained = {k: v for k, v in ranks[0]["state"].items() if "obs_norm" not in k}
    _assert_same(trained, averaged, atol=1e-6)
    first_only = adam_step(gradients[0])
    assert not torch.allclose(
        first_only["actor.net.0.weight"], trained["actor.net.0.weight"], atol=1e-4
    )
    # The observation statistics fold in both processes' frames, the same in each.
    seen = torch.cat([b["observation"].reshape(-1, 4) for b in batches]).double()
    state = ranks[1]["state"]
    assert state["actor.obs_norm.count"] == frames
    assert torch.allclose(state["actor.obs_norm.mean"], seen.mean(0))


@pytest.mark.slow
def test_ppo_statistics_and_early_stop_agree_across_processes_and_resume(tmp_path):
    round_frames = 2 * ddp_runs.NUM_ENVS * ddp_runs.N_STEPS
    first = _run_ddp("ppo-statistics", tmp_path, str(2 * round_frames))
    checkpoint = tmp_path / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["tdimitation"]["frames"] == 2 * round_frames
    resumed = _run_ddp("ppo-statistics", tmp_path, str(3 * round_frames), str(checkpoint))
    for ranks, frames in ((first, 2 * round_frames), (resumed, 3 * round_frames)):
        assert [r["frames"] for r in ranks] == [frames, frames]
        # The KL stop was taken, together: fewer than 4 epochs of 4 minibatches a round.
        updates = [r["updates"] for r in ranks]
        assert updates[0] == updates[1] < 16 * frames // round_frames
        # Normalisers fold in both processes' data: identical, and so are the parameters;
        # each process keeps the running returns of its own envs.
        _assert_same(ranks[0]["state"], ranks[1]["state"], atol=0, skip=("_return_carry",))
        assert ranks[0]["state"]["return_norm.count"] == frames
        assert ranks[0]["state"]["actor.obs_norm.count"] == frames
        carries = [r["state"]["_return_carry"] for r in ranks]
        assert not torch.equal(*carries)


REFUSING = [
    "dagger/cartpole_fixed",
    "gail/cartpole_fixed",
    "airl/cartpole_fixed",
    "sqil/cartpole",
    "density/cartpole_fixed",
    "preference/cartpole_fixed",
    "mce_irl/cliffworld",
    "sac/pendulum",
    "dqn/cartpole",
]
DDP_FLAGS = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def _build(recipe: str, monkeypatch, *flags: str):
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr(sys, "argv", ["tdimitation"])  # as fit_main does
    return _make_cli(["--config", str(RECIPES / f"{recipe}.yaml"), *flags])


@pytest.mark.parametrize("recipe", REFUSING)
def test_other_algorithms_refuse_ddp_naming_the_supported_strategies(recipe, monkeypatch):
    cli = _build(recipe, monkeypatch, *DDP_FLAGS)
    checks = [c for c in cli.model.configure_callbacks() if isinstance(c, StrategyCheck)]
    assert len(checks) == 1  # every fit runs the check, from Python too
    with pytest.raises(StrategyError) as err:
        checks[0].setup(cli.trainer, cli.model, "fit")
    message = str(err.value)
    assert "\n" not in message
    assert type(cli.model).__name__ in message and "DDPStrategy" in message
    assert "single-device" in message and "ddp" in message and "BC and PPO" in message


@pytest.mark.parametrize("recipe", ["bc/cartpole", "ppo/cartpole"])
def test_bc_and_ppo_accept_ddp_and_one_device(recipe, monkeypatch):
    for flags in (DDP_FLAGS, []):
        cli = _build(recipe, monkeypatch, *flags)
        StrategyCheck().setup(cli.trainer, cli.model, "fit")


def test_fit_refuses_ddp_before_writing_anything(tmp_path):
    argv = ["--config", str(RECIPES / "dqn" / "cartpole.yaml"), "--run.data_dir", str(tmp_path)]
    with pytest.raises(StrategyError, match="supported strategies are"):
        fit_main([*argv, *DDP_FLAGS])
    assert list(tmp_path.iterdir()) == []


def test_rank_seeds_keep_rank_zero_and_differ_per_rank():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, r) for r in range(1, 5)} | {rank_seed(8, 1)}
    assert len(seeds) == 5 and 7 not in seeds
    assert rank_seed(7, 1) == rank_seed(7, 1)


@pytest.mark.slow
def test_fit_command_trains_bc_on_two_processes_and_records_one_run(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    recipe = RECIPES / "bc" / "cartpole.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "tdimitation.cli", "fit", "--config", str(recipe)]
        + ["--model.init_args.n_epochs", "1", "--run.data_dir", str(tmp_path)]
        + ["--run.video", "false", "--run.eval_episodes", "2", *DDP_FLAGS],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dirs = list((tmp_path / "runs" / "bc").iterdir())
    assert len(run_dirs) == 1  # the second process opened no run of its own
    saved = torch.load(run_dirs[0] / "last.ckpt", weights_only=True)
    assert saved["tdimitation"]["batches_done"] > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bc")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert "eval/return_mean" in runs[0].data.metrics
