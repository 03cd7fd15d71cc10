"""The run record of ``tdimitation fit`` and the ``runs`` command, on a real MLflow store.

Fits run as real subprocesses of the ``tdimitation`` command; module-scoped fixtures share
them across assertions (each costs ~10 s). The interrupted run is killed with SIGKILL, found
stale by the next ``tdimitation runs``, resumed with ``--ckpt_path last``, stopped again with
SIGTERM and resumed to its end: one MLflow run throughout.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

import tdimitation
from tdimitation.cli import main
from tdimitation.runrecord import interrupt_on_signals
from tdimitation.runs import TAG_LAST_STEP, TAG_RECIPE

ROOT = Path(__file__).resolve().parents[1]

BC_RECIPE = """
model:
  class_path: tdimitation.algorithms.BC
  init_args:
    env_id: CartPole-v1
    n_epochs: 2
    batch_size: 32
    hidden_sizes: [16]
    eval_every_n_epochs: 1
    eval_episodes: 2
data:
  class_path: tdimitation.algorithms.DemonstrationData
  init_args:
    env_id: CartPole-v1
    expert: scripted
    n_episodes: 4
trainer:
  enable_progress_bar: false
  enable_model_summary: false
run:
  experiment: bc-runs
  eval_episodes: 2
  video_steps: 15
"""

# A fast env that cannot render: the video is skipped with a note. A budget that does not
# end: the test stops the run.
PPO_RECIPE = """
model:
  class_path: tdimitation.rl.ppo.PPO
  init_args:
    env_id: tests.conftest:FixedLengthEnv
    env_kwargs: {length: 20}
    num_envs: 4
    n_steps: 64
    total_frames: 100000000
    n_epochs: 1
    batch_size: 64
    hidden_sizes: [16]
trainer:
  enable_progress_bar: false
  enable_model_summary: false
run:
  experiment: ppo-runs
  eval_episodes: 2
  checkpoint_every: 1
"""
FRAMES_PER_ROUND = 4 * 64


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TDIMITATION_DATA_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tdimitation.cli", *args]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(autouse=True)
def _store_from_data_dir(monkeypatch):
    # The tests here choose the store with --data-dir, which a MLFLOW_TRACKING_URI in the
    # environment would override.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TDIMITATION_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def data(workdir):
    return workdir / "data"


@pytest.fixture(scope="module")
def client(data):
    return MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")


def _only_run(client, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.fixture(scope="module")
def bc_fit(workdir, data, client):
    recipe = workdir / "bc.yaml"
    recipe.write_text(textwrap.dedent(BC_RECIPE))
    done = _run("fit", "--config", str(recipe), "--run.data_dir", str(data), cwd=workdir)
    return _only_run(client, "bc-runs"), recipe, done


def _checkpoint_frames(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["tdimitation"]["frames"])


def _start_until_checkpointed(args: list[str], cwd: Path, ckpt_glob: str, frames: int, log: Path):
    """Start a fit (stderr to ``log``); wait until its last.ckpt holds ``frames`` frames."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            _command(*args), cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(cwd.glob(ckpt_glob))
        if found and _checkpoint_frames(found[0]) >= frames:
            return proc, found[0]
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    raise AssertionError(
        f"the fit made no checkpoint of {frames} frames: {log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def interrupted(workdir, data, client):
    """The PPO run: SIGKILL, `runs`, resume, SIGTERM, resume to the end."""
    recipe = workdir / "ppo.yaml"
    recipe.write_text(textwrap.dedent(PPO_RECIPE))
    fit = ["fit", "--config", str(recipe), "--run.data_dir", str(data)]
    ckpts = "data/runs/ppo-runs/*/last.ckpt"
    record = {"recipe": recipe}
    proc, ckpt = _start_until_checkpointed(
        fit, workdir, ckpts, 2 * FRAMES_PER_ROUND, workdir / "killed.log"
    )
    try:
        record["status_before_kill"] = _only_run(client, "ppo-runs").info.status
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        record["status_after_kill"] = _only_run(client, "ppo-runs").info.status
        record["runs"] = _run("runs", "--data-dir", str(data), cwd=workdir)
        record["status_after_runs"] = _only_run(client, "ppo-runs").info.status
        killed_at = _checkpoint_frames(ckpt)
        log = workdir / "terminated.log"
        proc, _ = _start_until_checkpointed(
            [*fit, "--ckpt_path", "last"], workdir, ckpts, killed_at + 2 * FRAMES_PER_ROUND, log
        )
        proc.send_signal(signal.SIGTERM)
        record["sigterm_rc"] = proc.wait(timeout=120)
        record["sigterm_stderr"] = log.read_text()
        record["status_after_sigterm"] = _only_run(client, "ppo-runs").info.status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record["final_frames"] = _checkpoint_frames(ckpt) + 2 * FRAMES_PER_ROUND
    record["resume"] = _run(
        *fit,
        "--ckpt_path",
        "last",
        "--model.init_args.total_frames",
        str(record["final_frames"]),
        cwd=workdir,
    )
    record["run"] = _only_run(client, "ppo-runs")
    record["ckpt"] = ckpt
    return record


# ------------------------------------------------------------------ the record
def test_fit_logs_all_parameters_and_no_internal_ones(bc_fit):
    run, _, _ = bc_fit
    params = run.data.params
    expected = {
        "env_id": "CartPole-v1",
        "n_epochs": "2",
        "data.class_path": "tdimitation.algorithms.DemonstrationData",
        "data.expert": "scripted",
        "data.n_episodes": "4",
        "data.path": "None",
        "run.eval_episodes": "2",
        "run.video_steps": "15",
        "trainer.enable_progress_bar": "False",
    }
    assert {key: params.get(key) for key in expected} == expected
    assert not [key for key in params if key.startswith("_") or "instantiator" in key]


def test_fit_tags_recipe_version_commit_and_process(bc_fit, data):
    run, recipe, done = bc_fit
    tags = run.data.tags
    assert tags[TAG_RECIPE] == str(recipe.resolve())
    assert tags["tdimitation.version"] == tdimitation.__version__
    assert tags["tdimitation.algorithm"] == "tdimitation.algorithms.bc.BC"
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert tags["tdimitation.git_commit"] == head
    else:
        assert "tdimitation.git_commit" not in tags
    assert tags["tdimitation.pid"].isdigit() and tags["tdimitation.host"]
    assert run.info.status == "FINISHED"
    run_dir = Path(tags["tdimitation.run_dir"])
    assert run_dir.parent == data.resolve() / "runs" / "bc-runs"
    # The run directory is printed before training starts.
    out = done.stdout
    assert f"run directory: {run_dir}" in out
    assert out.index("run directory:") < out.index("evaluation over")


def test_final_evaluation_is_logged_at_the_last_step(bc_fit, client):
    run, _, _ = bc_fit
    run_id = run.info.run_id
    last = max(m.step for m in client.get_metric_history(run_id, "bc/loss"))
    assert last > 0 and int(run.data.tags[TAG_LAST_STEP]) == last
    final = client.get_metric_history(run_id, "eval/return_mean")
    assert max(m.step for m in final) == last
    assert [m.step for m in client.get_metric_history(run_id, "time/fit_seconds")] == [last]


def test_fit_artifacts_include_the_video_and_the_learning_curve(bc_fit, client):
    run, _, _ = bc_fit
    run_id = run.info.run_id
    listed = {a.path for d in ("video", "plots") for a in client.list_artifacts(run_id, d)}
    assert listed == {"video/final_policy.gif", "plots/learning_curve.png"}
    local = Path(client.download_artifacts(run_id, "video/final_policy.gif"))
    assert local.read_bytes()[:4] == b"GIF8"
    local = Path(client.download_artifacts(run_id, "plots/learning_curve.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_env_without_rendering_skips_the_video_with_a_note(interrupted, client):
    run = interrupted["run"]
    assert "no video of the final policy" in interrupted["resume"].stderr
    assert "no video" in run.data.tags["tdimitation.note"]
    assert not client.list_artifacts(run.info.run_id, "video")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/learning_curve.png"
    ]


# ------------------------------------------------------- killed and resumed runs
def test_a_sigkilled_run_is_marked_killed_by_the_next_runs_command(interrupted):
    assert interrupted["status_before_kill"] == "RUNNING"
    assert interrupted["status_after_kill"] == "RUNNING"  # nobody could tell the store
    assert interrupted["status_after_runs"] == "KILLED"
    assert "KILLED" in interrupted["runs"].stderr


def test_sigterm_marks_the_run_killed_and_exits_non_zero(interrupted):
    assert interrupted["sigterm_rc"] == 128 + signal.SIGTERM, interrupted["sigterm_stderr"][-3000:]
    assert interrupted["status_after_sigterm"] == "KILLED"
    assert "stopped by SIGTERM" in interrupted["sigterm_stderr"]


def test_resumed_runs_continue_one_mlflow_run_with_continuous_metrics(interrupted, client):
    run = interrupted["run"]  # _only_run: one run id in the experiment after two resumes
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["tdimitation.resumed_from"] == run_id
    assert run.data.tags["tdimitation.resumed.total_frames"] == str(interrupted["final_frames"])
    history = client.get_metric_history(run_id, "frames")
    frames_at: dict[int, set[float]] = {}
    for metric in history:
        frames_at.setdefault(metric.step, set()).add(metric.value)
    # Steps continue from each checkpoint: a step always means the same round, whichever
    # process logged it (rounds logged after the last checkpoint are logged again, the same).
    assert all(values == {FRAMES_PER_ROUND * (step + 1)} for step, values in frames_at.items())
    # A kill between a round's checkpoint and its logging loses at most that round's point.
    missing = set(range(max(frames_at) + 1)) - set(frames_at)
    assert len(missing) <= 2, sorted(missing)
    assert max(frames_at) == int(run.data.tags[TAG_LAST_STEP])
    assert FRAMES_PER_ROUND * (max(frames_at) + 1) == interrupted["final_frames"]
    assert _checkpoint_frames(interrupted["ckpt"]) == interrupted["final_frames"]


def test_ckpt_path_last_without_a_run_of_the_recipe_is_one_line(workdir, data, capsys):
    recipe = workdir / "never_run.yaml"
    recipe.write_text(textwrap.dedent(BC_RECIPE))
    argv = ["fit", "--config", str(recipe), "--run.data_dir", str(data), "--ckpt_path", "last"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # Lightning's start-up banners (and, in-process, logging's complaints about streams of
    # earlier tests) may come before it: the error is the last line.
    error = err.splitlines()[-1]
    assert error.startswith("tdimitation fit: error: no checkpoint of a run of")
    assert str(recipe.resolve()) in error


# --------------------------------------------------------------------- runs
def test_runs_lists_filters_and_exports_csv(bc_fit, interrupted, data, workdir, capsys):
    bc_run, bc_recipe, _ = bc_fit
    ppo_id = interrupted["run"].info.run_id
    out_csv = workdir / "runs.csv"
    assert main(["runs", "--data-dir", str(data), "--csv", str(out_csv)]) == 0
    shown = capsys.readouterr().out
    assert bc_run.info.run_id in shown and ppo_id in shown
    with out_csv.open(newline="") as lines:
        rows = {row["run_id"]: row for row in csv.DictReader(lines)}
    assert set(rows) == {bc_run.info.run_id, ppo_id}
    bc_row = rows[bc_run.info.run_id]
    assert (bc_row["algorithm"], bc_row["env"], bc_row["seed"], bc_row["status"]) == (
        "BC",
        "CartPole-v1",
        "0",
        "FINISHED",
    )
    assert float(bc_row["return"]) == pytest.approx(
        bc_run.data.metrics["eval/return_mean"], abs=0.01
    )
    assert int(rows[ppo_id]["frames"]) == interrupted["final_frames"]

    for filters, expected in [
        (["--experiment", "bc-runs"], bc_run.info.run_id),
        (["--recipe", str(interrupted["recipe"])], ppo_id),
        (["--recipe", bc_recipe.name], bc_run.info.run_id),
        (["--tag", "tdimitation.algorithm=tdimitation.rl.ppo.PPO"], ppo_id),
    ]:
        assert main(["runs", "--data-dir", str(data), *filters]) == 0
        table = capsys.readouterr().out.splitlines()
        assert len(table) == 2 and table[1].startswith(expected), filters


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tag", "no-equals-sign"], "KEY=VALUE"),
        (["--experiment", "missing"], "no MLflow experiment 'missing'"),
    ],
)
def test_runs_bad_filters_are_one_line(bc_fit, data, capsys, argv, message):
    assert main(["runs", "--data-dir", str(data), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_attaches_results_and_video_to_a_training_run(bc_fit, data, client, tmp_path):
    run, _, _ = bc_fit
    run_id = run.info.run_id
    video = tmp_path / "eval.gif"
    argv = ["eval", "--env", "CartPole-v1", "--policy", "scripted", "--episodes", "2"]
    argv += ["--num-envs", "2", "--video", str(video), "--mlflow", "--data-dir", str(data)]
    assert main([*argv, "--run", run_id]) == 0
    history = client.get_metric_history(run_id, "eval_cli/return_mean")
    assert [(m.step, m.value) for m in history] == [(int(run.data.tags[TAG_LAST_STEP]), 500.0)]
    assert [a.path for a in client.list_artifacts(run_id, "eval_cli")] == ["eval_cli/eval.gif"]
    assert client.get_run(run_id).data.tags["eval_cli.policy"] == "scripted"
    # No new run was started for the evaluation.
    assert client.get_experiment_by_name("eval") is None


def test_eval_refuses_an_unknown_run_before_evaluating(data, capsys):
    argv = ["eval", "--env", "CartPole-v1", "--policy", "scripted", "--mlflow"]
    assert main([*argv, "--data-dir", str(data), "--run", "0123abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no MLflow run '0123abc'" in err and len(err.splitlines()) == 1


def test_a_signal_during_a_store_write_stops_the_fit_after_the_write(tmp_path):
    """SIGTERM sent as an MLflow write commits: the write completes, then the interrupt.

    Raised inside the commit, the interrupt would leave the sqlite database locked, and
    marking the run KILLED would fail ("database is locked") and end the fit with status 1.
    """
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("signals")).info.run_id
    armed = [True]

    def terminate_at_commit(*args) -> None:
        if armed:
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(Engine, "commit", terminate_at_commit)
    try:
        with interrupt_on_signals() as received, pytest.raises(KeyboardInterrupt):
            client.log_metric(run_id, "loss", 0.5, step=3)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        event.remove(Engine, "commit", terminate_at_commit)
    assert not armed and received == [signal.SIGTERM]
    client.set_terminated(run_id, "KILLED")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"loss": 0.5}


def test_a_second_signal_during_the_cleanup_does_not_break_it_off():
    """A repeated stop (a second Ctrl-C, a supervisor's retry) while the caller marks the
    run KILLED is recorded, not raised: a raise there would end the fit with status 1."""
    before = signal.getsignal(signal.SIGTERM)
    with interrupt_on_signals() as received:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once; the sleep is not finished
        try:  # the caller's cleanup
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # both handlers have run by now
        except KeyboardInterrupt:
            pytest.fail("a second signal broke off the cleanup")
    assert received == [signal.SIGTERM, signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
