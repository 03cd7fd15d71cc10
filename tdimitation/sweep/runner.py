"""The sweep's driver: Ray Tune with Optuna's sampler, MLflow's parent run, resuming.

:func:`run_sweep` checks everything it can before Ray starts (the space against the
recipe's classes, the recipe with a value of the space, the counts), prepares the
recipe's data once (so concurrent trials do not race to collect and cache it), opens (or
reopens) the sweep's MLflow run, then runs the trials on Ray Tune and writes the best
configuration as a recipe (:mod:`tdimitation.sweep.results`).

A sweep lives in ``<data_dir>/sweeps/<name>/``: Ray Tune's experiment state, ``sweep.json``
(its settings and MLflow run) and ``best.yaml``. Starting a sweep whose directory exists
resumes it: finished trials are not run again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdimitation.errors import FitConfigError, SweepClusterError, SweepError
from tdimitation.sweep.results import SWEEP_FILE
from tdimitation.sweep.space import SEED_KEY, Parameter, check_keys, load_space
from tdimitation.sweep.trial import FINAL, REPEAT_KEY, RUN_ID, TrialSettings, run_trial

#: Seconds the cluster at ``--address`` has to accept a connection, then to answer Ray.
CONNECT_TIMEOUT = 5.0
INIT_TIMEOUT = 10.0


@dataclass
class SweepOptions:
    """What ``tdimitation sweep`` was asked for (see ``tdimitation sweep --help``)."""

    recipe: str
    space: str
    trials: int = 8
    seeds: int = 1
    metric: str = "eval/return_mean"
    mode: str = "max"
    asha: bool = False
    grace_period: int = 1
    reduction_factor: int = 3
    max_rounds: int = 1000
    address: str | None = None
    cpus: int | None = None
    cpus_per_trial: float = 1.0
    reevaluate: int = 0
    name: str | None = None
    data_dir: str | None = None
    search_seed: int = 0
    resume: bool = False


def check_options(options: SweepOptions) -> None:
    """Refuse counts and choices that cannot run, naming the fix."""
    for flag, value, least in (
        ("--trials", options.trials, 1),
        ("--seeds", options.seeds, 1),
        ("--reevaluate", options.reevaluate, 0),
        ("--grace-period", options.grace_period, 1),
        ("--max-rounds", options.max_rounds, 1),
    ):
        if value < least:
            raise SweepError(f"{flag} must be at least {least}, got {value}")
    if options.reduction_factor < 2:
        raise SweepError(f"--reduction-factor must be at least 2, got {options.reduction_factor}")
    if options.mode not in ("max", "min"):
        raise SweepError(f"--mode must be max or min, got {options.mode!r}")
    if options.cpus is not None and options.cpus < 1:
        raise SweepError(f"--cpus must be at least 1, got {options.cpus}")
    if options.cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial must be positive, got {options.cpus_per_trial}")


def run_sweep(options: SweepOptions) -> dict[str, Any]:
    """Run (or resume) a sweep; returns its summary (best configuration, re-evaluation).

    Raises:
        SweepError: bad input (space, recipe, counts), before Ray starts.
        SweepClusterError: the Ray cluster at ``options.address`` does not answer.
    """
    check_options(options)
    recipe = Path(options.recipe).resolve()
    params = load_space(options.space)
    recipe_yaml = _read_recipe(recipe)
    if options.address:
        # Before torch is imported: an address that does not answer fails within seconds.
        _start_ray(options)
    try:
        check_keys(params, recipe_yaml, options.space)
        return _sweep(options, recipe, params, recipe_yaml)
    finally:
        _stop_ray()


def _sweep(options: SweepOptions, recipe: Path, params: list[Parameter], recipe_yaml: dict):
    from tdimitation.sweep import results
    from tdimitation.tracking import data_dir, tracking_uri

    cli = _check_recipe(recipe, params)
    model = cli.model
    if "seed" not in model.hparams:
        raise SweepError(
            f"{type(model).__name__} takes no seed; a sweep repeats trials by "
            f"{SEED_KEY}, which this recipe's model does not have"
        )
    base_seed = int(model.hparams.seed or 0)
    experiment = (recipe_yaml.get("run") or {}).get("experiment") or type(model).__name__
    root = data_dir(options.data_dir or (recipe_yaml.get("run") or {}).get("data_dir"))
    name = options.name or f"{recipe.stem}-{Path(options.space).stem}"
    sweep_dir = root / "sweeps" / name
    settings_record = _settings_record(options, recipe, params)
    resuming = _check_resume(sweep_dir, settings_record, options)
    if cli.datamodule is not None:
        # Once, here: concurrent trials would race to collect and cache the same data.
        from tdimitation.tracking import DATA_DIR_ENV

        os.environ[DATA_DIR_ENV] = str(root)  # the data module caches under the sweep's dir
        cli.datamodule.prepare_data()
    if not options.address:
        _start_ray(options)
    uri = tracking_uri(root)
    parent = results.open_parent_run(
        uri, experiment, name, sweep_dir, settings_record, resuming, params
    )
    common = {
        "name": name,
        "recipe": str(recipe),
        "keys": tuple(params),
        "base_seed": base_seed,
        "metric": options.metric,
        "experiment": experiment,
        "parent_run_id": parent.run_id,
        "data_dir": str(root),
        "tracking_uri": uri,
        "cwd": os.getcwd(),
    }
    summary: dict[str, Any] = {"name": name, "sweep_dir": str(sweep_dir), "run_id": parent.run_id}
    try:
        grid = _tune(
            options,
            sweep_dir,
            "search",
            TrialSettings(phase="search", seed_offset=0, **common),
            params=params,
        )
        best = results.best_configuration(grid, params, options)
        best_recipe = results.write_best_recipe(recipe_yaml, best, sweep_dir / "best.yaml", name)
        results.log_best(parent, best, best_recipe, options.metric)
        summary |= {"best": best, "best_recipe": str(best_recipe)}
        print(
            f"best of {best['configurations']} configurations: {options.metric} "
            f"{best['mean']:.4g} (mean over {options.seeds} seed{'s' * (options.seeds > 1)}) with "
            + ", ".join(f"{k}={v!r}" for k, v in best["values"].items()),
            flush=True,
        )
        print(f"best recipe: {best_recipe}", flush=True)
        if options.reevaluate:
            fixed = {p.key: best["sampled"][p.key] for p in params}
            grid = _tune(
                options,
                sweep_dir,
                "reevaluate",
                TrialSettings(phase="reevaluate", seed_offset=options.seeds, **common),
                fixed=fixed,
            )
            summary["reevaluation"] = results.reevaluation(grid, options, parent)
    except BaseException as err:
        _stop_ray()  # its workers end: their fits' runs are found stale and marked KILLED
        from tdimitation.runs import mark_stale_runs

        mark_stale_runs(parent.client)
        parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    parent.finish("FINISHED")
    return summary


# ----------------------------------------------------------------- checking
def _read_recipe(recipe: Path) -> dict[str, Any]:
    import yaml

    if not recipe.is_file():
        raise FitConfigError(f"recipe {recipe} does not exist; give a recipe file (--config)")
    try:
        mapping = yaml.safe_load(recipe.read_text())
    except yaml.YAMLError:
        raise FitConfigError(f"recipe {recipe} is not valid YAML; fix the file") from None
    if not isinstance(mapping, dict):
        raise FitConfigError(f"recipe {recipe} is not a mapping of sections (model, data, ...)")
    return mapping


def _check_recipe(recipe: Path, params: list[Parameter]):
    """Parse and build the recipe with a value of the space (nothing is written)."""
    import logging
    import warnings

    from tdimitation.fit import _make_cli
    from tdimitation.fit_errors import normalise_flags
    from tdimitation.utils import configure_threads

    configure_threads()
    argv = ["--config", str(recipe)]
    for param in params:
        example = param.example()
        argv += [f"--{param.key}", example if isinstance(example, str) else json.dumps(example)]
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    banners = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    saved_level = banners.level
    banners.setLevel(max(saved_level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            cli = _make_cli(normalise_flags(argv))
    finally:
        sys.argv = saved_argv
        banners.setLevel(saved_level)
    return cli


def _settings_record(options: SweepOptions, recipe: Path, params: list[Parameter]) -> dict:
    """What makes two sweeps the same sweep (compared when resuming)."""
    return {
        "recipe": str(recipe),
        "space": {p.key: {p.kind: list(p.values)} for p in params},
        "trials": options.trials,
        "seeds": options.seeds,
        "metric": options.metric,
        "mode": options.mode,
        "asha": options.asha,
        "search_seed": options.search_seed,
    }


def _check_resume(sweep_dir: Path, record: dict, options: SweepOptions) -> bool:
    saved_path = sweep_dir / SWEEP_FILE
    if not saved_path.is_file():
        if options.resume:
            raise SweepError(
                f"no sweep to resume in {sweep_dir}; start it without --resume (or give its --name)"
            )
        return False
    saved = json.loads(saved_path.read_text())
    changed = sorted(k for k in record if saved.get("settings", {}).get(k) != record[k])
    if changed:
        raise SweepError(
            f"sweep {sweep_dir.name} exists with other settings ({', '.join(changed)}); resume "
            "it with the same ones, or start another with --name"
        )
    return True


# --------------------------------------------------------------------- Ray
def _start_ray(options: SweepOptions) -> None:
    start_ray(options.address, options.cpus)


def choose_local_ray_authentication(address: str | None) -> None:
    """Ask for token authentication, Ray's default, when Ray will start a local cluster.

    Chosen explicitly, Ray does not warn that it chose it. Ray reads the setting once, when
    it is imported (torchrl imports it when installed), so this must run before anything
    imports Ray; afterwards it does nothing, as setting it then would leave a new cluster
    waiting for a token Ray never made.
    """
    if not address and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_ray(address: str | None = None, cpus: int | None = None) -> None:
    """Start Ray on this machine (``cpus``, default all) or connect to the cluster at ``address``.

    Raises:
        SweepClusterError: the address does not answer within 10 s, or is not a Ray cluster.
    """
    import logging

    choose_local_ray_authentication(address)
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    common = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if not address:
        ray.init(num_cpus=cpus or os.cpu_count(), **common)
        return
    if address != "auto":
        _probe(address)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(address=address, **common)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - reported below, on the main thread
            outcome.append(err)

    # ray.init can wait minutes on a port that accepts but is not Ray's.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(INIT_TIMEOUT)
    if not outcome:
        raise SweepClusterError(
            f"the Ray cluster at {address} did not answer within {INIT_TIMEOUT:.0f} s; "
            "check the address (ray status on the head node), or omit --address to use this "
            "machine"
        )
    if outcome[0] is not None:
        reason = str(outcome[0]).splitlines()[0] if str(outcome[0]) else type(outcome[0]).__name__
        raise SweepClusterError(
            f"cannot connect to the Ray cluster at {address} ({reason}); start it with "
            "ray start --head, or omit --address to use this machine"
        )


def _probe(address: str) -> None:
    """Fail fast when nothing answers at ``address`` (``[ray://]host:port``)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepClusterError(
            f"Ray address {address!r} is not host:port (or ray://host:port, or auto)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise SweepClusterError(
            f"the Ray cluster at {address} does not answer ({reason}); start it with ray start "
            "--head, check the address, or omit --address to use this machine"
        ) from None


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _tune(options, sweep_dir: Path, phase: str, settings: TrialSettings, params=None, fixed=None):
    """Run (or resume) one phase's trials on Ray Tune; returns its ResultGrid."""
    from ray import tune

    from tdimitation.sweep.progress import ENDED, SweepProgress

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings), {"cpu": options.cpus_per_trial}
    )
    path = sweep_dir / phase
    label = f"{settings.name} {phase}"
    total = options.trials * options.seeds if phase == "search" else options.reevaluate
    run_config = tune.RunConfig(
        name=phase,
        storage_path=str(sweep_dir),
        verbose=0,
        callbacks=[SweepProgress(label, total, options.metric, options.mode)],
        failure_config=tune.FailureConfig(max_failures=0),
    )
    if tune.Tuner.can_restore(str(path)):
        print(f"resuming sweep {settings.name} ({phase}) from {path}", flush=True)
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
    elif phase == "search":
        tuner = tune.Tuner(
            trainable,
            tune_config=_search_config(options, params),
            run_config=run_config,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**fixed, REPEAT_KEY: tune.grid_search(list(range(options.reevaluate)))},
            tune_config=tune.TuneConfig(
                metric=options.metric, mode=options.mode, reuse_actors=True
            ),
            run_config=run_config,
        )
    ENDED.pop(label, None)
    started = time.monotonic()
    grid = tuner.fit()
    ended = ENDED.pop(label, None)
    if ended is not None:
        interrupted = ended < total
    else:  # nothing ended in this process: a resumed phase that had finished
        unfinished = [r for r in grid if r.error is None and not r.metrics.get(FINAL)]
        interrupted = len(grid) < total or (not options.asha and bool(unfinished))
    if interrupted:
        print(
            f"sweep {settings.name} stopped after {time.monotonic() - started:.0f} s; run the "
            "same command again to resume it",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    errors = [r for r in grid if r.error is not None]
    for result in errors:
        reason = str(result.error).strip().splitlines()[-1] if str(result.error) else "error"
        print(f"trial {result.path}: failed: {reason}", file=sys.stderr)
    _close_stopped_runs(grid, settings)
    return grid


def _search_config(options: SweepOptions, params: list[Parameter]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space={p.key: p.distribution() for p in params},
        metric=options.metric,
        mode=options.mode,
        seed=options.search_seed,
    )
    if options.seeds > 1:
        # Each configuration runs on seeds base+0..K-1; Optuna learns their mean.
        searcher = Repeater(searcher, repeat=options.seeds, set_index=True)
    scheduler = None
    if options.asha:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=options.max_rounds,
            grace_period=options.grace_period,
            reduction_factor=options.reduction_factor,
        )
    return tune.TuneConfig(
        metric=options.metric,
        mode=options.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=options.trials * options.seeds,
        # A worker runs trial after trial: torch, Lightning and MLflow are imported once.
        reuse_actors=True,
    )


def _close_stopped_runs(grid, settings: TrialSettings) -> None:
    """Mark the MLflow runs of trials ASHA stopped early (their process was ended)."""
    from tdimitation.tracking import store_client

    client = store_client(settings.tracking_uri)
    for result in grid:
        run_id = (result.metrics or {}).get(RUN_ID)
        if result.error is None and run_id and not result.metrics.get(FINAL):
            client.set_tag(run_id, "tdimitation.sweep.stopped_early", "true")
            # The fit saw the stop as an error (FAILED), or its worker ended (RUNNING).
            if client.get_run(run_id).info.status != "FINISHED":
                client.set_terminated(run_id, "KILLED")
