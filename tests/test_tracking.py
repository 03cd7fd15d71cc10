import os

from mlflow import MlflowClient

from tdimitation.tracking import browse_hint, make_mlflow_logger, tracking_uri


def test_default_store_is_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    logger = make_mlflow_logger("exp", run_name="run", data_dir_path=tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.5}, step=3)
    logger.finalize("success")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert runs[0].data.params == {"lr": "0.1"} and runs[0].data.metrics == {"loss": 1.5}
    assert runs[0].info.run_name == "run"
    assert (tmp_path / "mlflow.db").is_file()
    assert uri in browse_hint(uri)


def test_env_var_overrides_at_call_time(tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking_uri(tmp_path) == other
    logger = make_mlflow_logger("exp2", data_dir_path=tmp_path)
    logger.log_metrics({"x": 1.0})
    logger.finalize("success")
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "mlflow.db").exists()


_RACE_SCRIPT = """
import sys, time
from pathlib import Path
import mlflow  # imported before the signal, so the workers connect together
from tdimitation.tracking import store_client
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
client = store_client(sys.argv[1])
client.create_experiment(sys.argv[3])
"""


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    """Two fits started together on a new data directory both get the store."""
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_SCRIPT, uri, str(go), f"exp{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(8)  # every worker has imported what it needs and waits for the signal
    go.touch()
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, "\n".join(errors)
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {f"exp{i}" for i in range(4)} <= names


def test_a_fit_leaves_the_tracking_uri_of_the_process_as_it_was(tmp_path, monkeypatch):
    """Two fits in one process with two data directories log to their own stores."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = make_mlflow_logger("exp", data_dir_path=tmp_path / "a")
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("success")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = make_mlflow_logger("exp", data_dir_path=tmp_path / "b")
    second.log_metrics({"x": 2.0}, step=0)
    second.finalize("success")
    for store, value in (("a", 1.0), ("b", 2.0)):
        client = MlflowClient(f"sqlite:///{tmp_path / store / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
        assert run.data.metrics == {"x": value}
    # A URI the user set stays set.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    third = make_mlflow_logger("exp", data_dir_path=tmp_path / "c")
    third.log_metrics({"x": 3.0}, step=0)
    third.finalize("success")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'user.db'}"
    assert (tmp_path / "user.db").exists() and not (tmp_path / "c" / "mlflow.db").exists()
