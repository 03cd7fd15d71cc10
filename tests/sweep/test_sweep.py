"""``tdimitation sweep`` end to end: a real local Ray instance, real fits, a real MLflow store.

One sweep (4 configurations x 2 seeds of BC on CartPole) runs once as a subprocess of the
``tdimitation`` command; the tests read what it left. The slow tests interrupt and resume
a sweep (then re-evaluate its best configuration on fresh seeds) and stop trials with ASHA.
The bad-input tests stop before Ray starts, except the ones about the cluster address.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from mlflow import MlflowClient  # noqa: E402

from tdimitation.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METRIC = "eval/return_mean"

RECIPE = """
model:
  class_path: tdimitation.algorithms.BC
  init_args:
    env_id: CartPole-v1
    n_epochs: 1
    batch_size: 32
    hidden_sizes: [16, 16]
    eval_every_n_epochs: 1
    eval_episodes: 2
    seed: 0
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
  experiment: bc-sweep
  eval_episodes: 2
  video: false
"""
SPACE = """
model.init_args.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
model.init_args.n_epochs: {int: [1, 2]}
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TDIMITATION_DATA_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env | extra


def _sweep_command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tdimitation.cli",
        "sweep",
        "--config",
        str(workdir / "bc.yaml"),
        "--space",
        str(workdir / "space.yaml"),
        "--cpus",
        "2",
        *args,
    ]


@pytest.fixture(autouse=True)
def _store_from_data_dir(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TDIMITATION_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep")
    (path / "bc.yaml").write_text(textwrap.dedent(RECIPE))
    (path / "space.yaml").write_text(textwrap.dedent(SPACE))
    return path


@pytest.fixture(scope="module")
def sweep(workdir):
    data = workdir / "data"
    command = _sweep_command(workdir, "--trials", "4", "--seeds", "2", "--data-dir", str(data))
    done = subprocess.run(
        command, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{data}/mlflow.db")
    experiment = client.get_experiment_by_name("bc-sweep").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.info.run_name == "sweep-bc-space"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {
        "done": done,
        "data": data,
        "client": client,
        "parent": parent,
        "search": children,
        "others": [r for r in runs if r not in children and r is not parent],
        "sweep_dir": data / "sweeps" / "bc-space",
    }


def _configuration(run) -> tuple[str, str]:
    return run.data.params["learning_rate"], run.data.params["n_epochs"]


def test_every_trial_is_a_nested_fit_run(sweep):
    search, client = sweep["search"], sweep["client"]
    assert len(search) == 8 and not sweep["others"]
    by_configuration = defaultdict(set)
    for run in search:
        assert run.info.status == "FINISHED"
        tags, params = run.data.tags, run.data.params
        assert tags["tdimitation.sweep.phase"] == "search"
        assert tags["tdimitation.sweep"] == "bc-space"
        # What any fit records: recipe and algorithm tags, every parameter, the evaluation.
        assert tags["tdimitation.recipe"].endswith("bc.yaml")
        assert tags["tdimitation.algorithm"] == "tdimitation.algorithms.bc.BC"
        assert params["data.n_episodes"] == "4" and params["seed"] == tags["tdimitation.sweep.seed"]
        assert METRIC in run.data.metrics
        assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
        assert 1e-4 <= float(params["learning_rate"]) <= 1e-2
        assert params["n_epochs"] in ("1", "2")
        by_configuration[_configuration(run)].add(params["seed"])
    # 4 configurations, each on the seeds 0 and 1.
    assert len(by_configuration) == 4
    assert all(seeds == {"0", "1"} for seeds in by_configuration.values())


def test_the_local_ray_cluster_starts_without_warnings(sweep):
    # Ray warns when it picks token authentication for a new local cluster by itself.
    stderr = sweep["done"].stderr
    assert "Token authentication" not in stderr, stderr[-3000:]
    assert " WARNING " not in stderr, stderr[-3000:]


def test_best_configuration_is_the_best_mean_and_written_as_a_recipe(sweep):
    values = defaultdict(list)
    for run in sweep["search"]:
        values[_configuration(run)].append(run.data.metrics[METRIC])
    means = {key: statistics.fmean(v) for key, v in values.items()}
    best_mean = max(means.values())
    parent = sweep["parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[f"best/{METRIC}"] == pytest.approx(best_mean)
    recipe = yaml.safe_load((sweep["sweep_dir"] / "best.yaml").read_text())
    init_args = recipe["model"]["init_args"]
    chosen = (repr(init_args["learning_rate"]), str(init_args["n_epochs"]))
    assert means[chosen] == pytest.approx(best_mean)
    assert parent.data.params["best.model.init_args.learning_rate"] == chosen[0]
    # The rest of the recipe is kept as it was.
    assert init_args["hidden_sizes"] == [16, 16] and recipe["run"]["experiment"] == "bc-sweep"


def test_best_recipe_runs(sweep, workdir):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdimitation.cli",
            "fit",
            "--config",
            str(sweep["sweep_dir"] / "best.yaml"),
            "--run.data_dir",
            str(workdir / "best-data"),
        ],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluation over 2 episodes" in done.stdout


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("space", "args", "message"),
    [
        (
            "model.init_args.lr: {loguniform: [1.0e-4, 1.0e-2]}\n",
            [],
            "BC has no parameter 'lr' (model.init_args.lr); did you mean learning_rate?",
        ),
        ("# nothing to search\n", [], "is empty: give at least one key to search"),
        (SPACE, ["--seeds", "0"], "--seeds must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_line(tmp_path, workdir, capsys, space, args, message):
    (tmp_path / "space.yaml").write_text(space)
    status = main(
        [
            "sweep",
            "--config",
            str(workdir / "bc.yaml"),
            "--space",
            str(tmp_path / "space.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tdimitation sweep: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "data").exists()  # refused before anything was written


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "tdimitation sweep: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def test_ray_address_that_refuses(workdir, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        _sweep_command(workdir, "--address", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = _one_error_line(done)
    assert f"the Ray cluster at 127.0.0.1:{port} does not answer" in line
    assert "omit --address" in line


def test_ray_address_that_never_answers_fails_within_30_s(workdir, tmp_path):
    # A port that accepts connections and then says nothing.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        done = subprocess.run(
            _sweep_command(workdir, "--address", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert f"the Ray cluster at 127.0.0.1:{port} did not answer" in _one_error_line(done)


def test_without_the_extra_the_command_says_how_to_install_it(workdir, tmp_path):
    # A `ray` package without Ray Tune shadows the installed one.
    (tmp_path / "shadow" / "ray").mkdir(parents=True)
    (tmp_path / "shadow" / "ray" / "__init__.py").write_text("")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), env["PYTHONPATH"]])
    done = subprocess.run(
        _sweep_command(workdir, "--data-dir", str(tmp_path / "data")),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "pip install 'tdimitation[sweep]'" in _one_error_line(done)


# ---------------------------------------------------------------------- resume
@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(workdir, tmp_path):
    data = tmp_path / "data"
    command = _sweep_command(
        workdir, "--trials", "4", "--seeds", "2", "--reevaluate", "2", "--data-dir", str(data)
    )
    db = data / "mlflow.db"
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = []
    try:
        for line in process.stderr:  # one progress line per finished trial
            lines.append(line)
            if sum("trials done" in seen for seen in lines) >= 3:
                break
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, rest = process.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume it" in stderr
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("bc-sweep").experiment_id
    stopped = client.search_runs([experiment])
    assert not [r for r in stopped if r.info.status == "RUNNING"]
    assert client.get_run(_parent_id(stopped)).info.status == "KILLED"
    finished_before = _finished_trials(db)
    assert 3 <= len(finished_before) < 8

    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming sweep bc-space (search)" in done.stdout
    runs = client.search_runs([experiment])
    assert client.get_run(_parent_id(runs)).info.status == "FINISHED"
    search = [r for r in runs if r.data.tags.get("tdimitation.sweep.phase") == "search"]
    # The finished runs are kept as they were; the rest ran once each.
    assert finished_before <= {r.info.run_id for r in search}
    assert len(search) == 8 and all(r.info.status == "FINISHED" for r in search)
    seeds = defaultdict(list)
    for run in search:
        seeds[_configuration(run)].append(run.data.params["seed"])
    assert sorted(map(sorted, seeds.values())) == [["0", "1"]] * 4

    # The best configuration re-run on two seeds the search did not use.
    again = [r for r in runs if r.data.tags.get("tdimitation.sweep.phase") == "reevaluate"]
    assert sorted(r.data.params["seed"] for r in again) == ["2", "3"]
    best = yaml.safe_load((data / "sweeps" / "bc-space" / "best.yaml").read_text())
    best = best["model"]["init_args"]
    assert {_configuration(r) for r in again} == {
        (repr(best["learning_rate"]), str(best["n_epochs"]))
    }
    metrics = client.get_run(_parent_id(runs)).data.metrics
    returns = [r.data.metrics[METRIC] for r in again]
    assert metrics["reevaluate/mean"] == pytest.approx(statistics.fmean(returns))
    assert min(returns) <= metrics["reevaluate/ci_low"] <= metrics["reevaluate/mean"]
    assert metrics["reevaluate/mean"] <= metrics["reevaluate/ci_high"] <= max(returns)
    assert "95% CI" in done.stdout


def _parent_id(runs) -> str:
    (parent,) = [r for r in runs if r.info.run_name == "sweep-bc-space"]
    return parent.info.run_id


def _finished_trials(db: Path) -> set[str]:
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("bc-sweep")
    return {
        r.info.run_id
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("tdimitation.sweep.phase") == "search" and r.info.status == "FINISHED"
    }


@pytest.mark.slow
def test_asha_stops_trials_and_only_finished_ones_can_be_best(workdir, tmp_path):
    recipe = tmp_path / "bc.yaml"
    # Four epochs of small blocks: ~50 rounds, each reported; stops come after 10.
    recipe.write_text(
        textwrap.dedent(RECIPE)
        .replace("n_epochs: 1", "n_epochs: 4\n    steps_per_call: 16")
        .replace("experiment: bc-sweep", "experiment: bc-asha")
    )
    (tmp_path / "lr.yaml").write_text(
        "model.init_args.learning_rate: {loguniform: [1.0e-5, 1.0e-2]}\n"
    )
    data = tmp_path / "data"
    command = [
        sys.executable, "-m", "tdimitation.cli", "sweep", "--config", str(recipe),
        "--space", str(tmp_path / "lr.yaml"), "--trials", "6", "--asha", "--grace-period", "10",
        "--max-rounds", "100", "--cpus", "2", "--data-dir", str(data),
    ]  # fmt: skip
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{data}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("bc-asha").experiment_id])
    trials = [r for r in runs if r.data.tags.get("tdimitation.sweep.phase") == "search"]
    assert len(trials) == 6
    finished = [r for r in trials if r.info.status == "FINISHED"]
    stopped = [r for r in trials if r.data.tags.get("tdimitation.sweep.stopped_early")]
    # Every trial either ran its whole budget or was stopped early and marked so.
    assert len(finished) + len(stopped) == 6 and finished
    assert all(r.info.status == "KILLED" and r.data.metrics["bc/epoch"] < 4 for r in stopped)
    assert all(r.data.metrics["bc/epoch"] == 4 for r in finished)
    best = yaml.safe_load((data / "sweeps" / "bc-lr" / "best.yaml").read_text())
    best_lr = repr(best["model"]["init_args"]["learning_rate"])
    assert best_lr in {r.data.params["learning_rate"] for r in finished}
    assert max(r.data.metrics[METRIC] for r in finished) == pytest.approx(
        next(r for r in runs if r.info.run_name == "sweep-bc-lr").data.metrics[f"best/{METRIC}"]
    )
