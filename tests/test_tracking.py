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
