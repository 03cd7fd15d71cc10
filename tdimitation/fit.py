"""``tdimitation fit --config RECIPE``: train any algorithm from a YAML recipe.

A recipe is a LightningCLI config: ``model`` (``class_path`` + ``init_args``: every
constructor argument is a key), ``trainer`` (Lightning ``Trainer`` arguments) and ``run``
(tdimitation's options: MLflow experiment and run names, data directory, checkpoint
period, evaluation episodes). ``--print_config`` shows the resolved config; any key can be
overridden on the command line (``--model.init_args.total_frames 50000``).

A fit run logs to MLflow (local sqlite store under the data directory unless
``MLFLOW_TRACKING_URI`` is set): every parameter (model, ``data.*``, ``trainer.*``,
``run.*``), tags (recipe, git commit, version, process), per-round metrics, a deterministic
evaluation of the trained policy at the last step, the resolved config, the final
checkpoint, a short video of the policy and a learning-curve plot (docs/runs.md).
Checkpoints (``last.ckpt``, written atomically every ``run.checkpoint_every`` rounds) go to
``<data_dir>/runs/<experiment>/<run name>/``; ``--ckpt_path PATH`` (or ``last``: the
recipe's newest run) resumes a stopped run and continues its MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from tdimitation.budget import check_budget_left, check_trainer_limits
from tdimitation.callbacks import ORIGIN_KEY, PeriodicCheckpoint, module_origin
from tdimitation.distributed import check_strategy
from tdimitation.errors import CheckpointError, FitConfigError
from tdimitation.evaluation import evaluate_module
from tdimitation.fit_errors import (
    check_recipe_files,
    explain_instantiation_error,
    explain_parse_error,
    normalise_flags,
)
from tdimitation.runrecord import (
    LATEST,
    config_params,
    interrupt_on_signals,
    latest_checkpoint,
    learning_curve,
    read_run_file,
    recipe_of,
    record_policy_video,
    start_tags,
    write_run_file,
)
from tdimitation.runs import (
    TAG_ALGORITHM,
    TAG_EXPERT_RETURN,
    TAG_LAST_STEP,
    TAG_NOTE,
    TAG_RANDOM_RETURN,
    TAG_RESUMED_FROM,
    mark_stale_runs,
)
from tdimitation.tracking import (
    DATA_DIR_ENV,
    browse_hint,
    data_dir,
    make_mlflow_logger,
    tracking_uri,
)
from tdimitation.utils import configure_threads


class _FitCLI(LightningCLI):
    """LightningCLI with tdimitation's ``run`` options and ``--ckpt_path``.

    Parse and instantiation failures become one :class:`FitConfigError` line.
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except (ArgumentError, ValueError, TypeError) as err:
            raise FitConfigError(explain_parse_error(err, parser, list(args or []))) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            message = explain_instantiation_error(err, self.config)
            if message is None:
                raise
            raise FitConfigError(message) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run.experiment",
            type=str | None,
            default=None,
            help="MLflow experiment (default: the algorithm's class name)",
        )
        parser.add_argument("--run.name", type=str | None, default=None, help="run name")
        parser.add_argument(
            "--run.data_dir",
            type=str | None,
            default=None,
            help="data directory (default $TDIMITATION_DATA_DIR or ./tdimitation_data)",
        )
        parser.add_argument(
            "--run.checkpoint_every",
            type=int,
            default=5,
            help="save last.ckpt every this many rounds",
        )
        parser.add_argument(
            "--run.eval_episodes",
            type=int,
            default=20,
            help="deterministic evaluation episodes after training (0: none)",
        )
        parser.add_argument(
            "--run.video",
            type=bool,
            default=True,
            help="record a short video of the final policy as an artifact",
        )
        parser.add_argument(
            "--run.video_steps", type=int, default=100, help="env steps in that video"
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint, or 'last': the newest run of the recipe (spelt "
            "--ckpt-path too: every option of fit takes dashes for underscores)",
        )


def fit_main(argv: list[str] | None = None, callbacks: Sequence[L.Callback] = ()) -> int:
    """Run ``tdimitation fit``; returns the process exit status.

    ``callbacks`` join the Trainer's once the run's logger is attached (a sweep's trial
    tags its run and reports its progress through one).

    Raises:
        TdimitationError: bad input (recipe, option, checkpoint, trainer limits), before
            anything is written.
    """
    configure_threads()
    if argv is None:
        argv = sys.argv[1:]
    argv = normalise_flags(argv)
    check_recipe_files(argv)
    # Lightning 2.6's CLI calls APIs that jsonargparse 4.49+ deprecates; nothing a user can
    # act on. jsonargparse's own switch (the user may set it to "all" to see them).
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # Lightning 2.6 under torch 2.13 warns about its own pytree use once per fit.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # LightningCLI warns when sys.argv also holds arguments; ours are passed explicitly.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    # Lightning's set-up banners would precede a refusal's one line; they say nothing the
    # run needs (the device in use is in the logged config).
    banners = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    saved_level = banners.level
    banners.setLevel(max(saved_level, logging.WARNING))
    try:
        cli = _make_cli(argv)
    finally:
        sys.argv = saved_argv
        banners.setLevel(saved_level)
    # Refuse before the run writes anything (MLflow run, run directory).
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path == LATEST:
        run_cfg = cli.config.run
        experiment = run_cfg.experiment or type(cli.model).__name__
        root = data_dir(run_cfg.data_dir)
        ckpt_path = cli.config.ckpt_path = str(
            latest_checkpoint(root, experiment, recipe_of(cli.config))
        )
    if hasattr(cli.model, "training_budget"):
        check_strategy(cli.trainer, cli.model)
        check_trainer_limits(cli.trainer, cli.model, None if ckpt_path else 0)
    checked: set[str] = set()
    if ckpt_path:
        # Read once (a checkpoint can hold large replay buffers): _run skips checked ones.
        state = check_checkpoint(ckpt_path, cli.model)
        if hasattr(cli.model, "training_budget"):
            check_budget_left(cli.model, state)
        checked.add(ckpt_path)
    return _run(cli, checked, callbacks)


def _make_cli(argv: list[str]) -> _FitCLI:
    return _FitCLI(
        model_class=L.LightningModule,
        subclass_mode_model=True,
        # Offline algorithms take a `data:` section (e.g. DemonstrationData); online ones none.
        datamodule_class=None,  # None keeps `data` optional; subclass mode still applies
        subclass_mode_data=True,
        args=argv,
        run=False,
        save_config_callback=None,
        seed_everything_default=False,
        trainer_defaults={
            "max_epochs": 1,
            "log_every_n_steps": 1,
            # The MLflow logger is attached after instantiation (its names come from `run`).
            "logger": False,
            "enable_checkpointing": False,
            # Lightning's parameter table lists the env and loss as layers; the run's
            # parameters are in MLflow. `--trainer.enable_model_summary true` shows it.
            "enable_model_summary": False,
        },
        parser_kwargs={
            "prog": "tdimitation fit",
            "description": __doc__.splitlines()[0],
            # Errors are raised (and made one line by _FitCLI), and a misspelt key is an
            # error rather than a prefix of the key it abbreviates.
            "exit_on_error": False,
            "allow_abbrev": False,
        },
    )


def check_checkpoint(
    path: str | os.PathLike, model: L.LightningModule | None = None
) -> dict[str, Any]:
    """Fail early, with one clear line, on a missing, corrupted or foreign checkpoint.

    With ``model``, also on a checkpoint of another algorithm or env, or of networks of
    other sizes, naming both sides. Returns the checkpoint's contents.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"checkpoint {path} is corrupted or unreadable ({type(err).__name__}); resume "
            "from an earlier checkpoint or start a new run"
        ) from None
    if not isinstance(state, dict) or "tdimitation" not in state or "state_dict" not in state:
        raise CheckpointError(
            f"{path} is not a checkpoint of a tdimitation training run (no 'tdimitation' state)"
        )
    if model is not None:
        check_checkpoint_matches(path, state, model)
    return state


def check_checkpoint_matches(
    path: str | os.PathLike, state: dict[str, Any], model: L.LightningModule
) -> None:
    """Refuse a checkpoint of another algorithm, env or network size than ``model``."""
    ours = module_origin(model)
    theirs = state.get(ORIGIN_KEY)
    if theirs is None:
        # Written before checkpoints named their origin: the env from its hyperparameters.
        hparams = state.get("hyper_parameters") or {}
        theirs = {"algorithm": None, "env_id": hparams.get("env_id")}
    fix = "resume with a checkpoint of this algorithm and env, or start a new run without it"
    same_algorithm = theirs["algorithm"] in (None, ours["algorithm"])
    same_env = None in (theirs["env_id"], ours["env_id"]) or theirs["env_id"] == ours["env_id"]
    if not (same_algorithm and same_env):
        raise CheckpointError(
            f"checkpoint {path} is of {theirs['algorithm'] or 'another algorithm'} on "
            f"{theirs['env_id']}, but this run trains {ours['algorithm']} on "
            f"{ours['env_id']}; {fix}"
        )
    saved, own = state["state_dict"], model.state_dict()
    missing = sorted(own.keys() - saved.keys())
    if missing and theirs["algorithm"] is None:
        raise CheckpointError(
            f"checkpoint {path} has no {missing[0]!r}: it is not of "
            f"{ours['algorithm']} (another algorithm); {fix}"
        )
    for key in own.keys() & saved.keys():
        if tuple(own[key].shape) != tuple(saved[key].shape):
            raise CheckpointError(
                f"checkpoint {path} holds {key} of shape {tuple(saved[key].shape)}, this run's "
                f"is {tuple(own[key].shape)} (other network sizes or spaces); {fix}"
            )


def _run(cli: _FitCLI, checked: set[str], callbacks: Sequence[L.Callback] = ()) -> int:
    config = cli.config
    run_cfg = config.run
    model = cli.model
    experiment = run_cfg.experiment or type(model).__name__
    root = data_dir(run_cfg.data_dir)
    if run_cfg.data_dir:
        # Caches made during the run (collected demonstrations, DAgger buffers) follow too.
        os.environ[DATA_DIR_ENV] = str(root)
    if cli.trainer.global_rank != 0:
        return _run_other_process(cli, root)
    recipe = recipe_of(config)
    if config.ckpt_path == LATEST:  # a caller of _run that skipped fit_main's checks
        config.ckpt_path = str(latest_checkpoint(root, experiment, recipe))
    if config.ckpt_path and config.ckpt_path not in checked:
        check_checkpoint(config.ckpt_path)
    uri = tracking_uri(root)
    previous = read_run_file(Path(config.ckpt_path).parent) if config.ckpt_path else None
    logger, run_dir, last_step = _open_run(model, run_cfg.name, experiment, root, uri, previous)
    client, run_id = logger.experiment, logger.run_id
    with interrupt_on_signals() as received:
        try:
            checkpoints = _start_record(cli, logger, run_dir, recipe, experiment, previous)
            cli.trainer.callbacks.extend(callbacks)
            _fit_and_record(cli, logger, checkpoints, last_step)
        except BaseException as err:
            killed = bool(received) or isinstance(err, KeyboardInterrupt)
            with contextlib.suppress(Exception):  # keep the curves up to the stop
                logger.flush()
            client.set_terminated(run_id, "KILLED" if killed else "FAILED")
            if not received:
                raise
            name = signal.Signals(received[0]).name
            print(
                f"tdimitation fit: stopped by {name}; run {run_id} marked KILLED", file=sys.stderr
            )
            return 128 + received[0]
    logger.finalize("success")
    print(f"checkpoint: {checkpoints.path}")
    print(f"browse the run: {browse_hint(uri)}")
    return 0


def _run_other_process(cli: _FitCLI, root: Path) -> int:
    """A ``ddp`` process other than the first: it trains and records nothing.

    Lightning's ``ddp`` launcher runs the same command once per extra process; the first
    process alone keeps the MLflow run, the run directory and the final evaluation. This
    one takes part in every checkpoint (the processes save together; the first writes).
    """
    config = cli.config
    cli.trainer.callbacks.append(PeriodicCheckpoint(root, config.run.checkpoint_every))
    cli.trainer.fit(
        cli.model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path, weights_only=True
    )
    return 0


def _start_record(
    cli: _FitCLI, logger, run_dir: Path, recipe: str, experiment: str, previous
) -> PeriodicCheckpoint:
    """Tag the run, log the settings, write run.json, attach the logger and checkpoints."""
    config, model, trainer = cli.config, cli.model, cli.trainer
    run_cfg = config.run
    client, run_id = logger.experiment, logger.run_id
    from mlflow.entities import RunTag

    # This process's tags first, so the run is not judged stale below.
    tags = start_tags(model, recipe, run_dir)
    if config.ckpt_path:
        tags["tdimitation.resumed_checkpoint"] = str(Path(config.ckpt_path).resolve())
        if previous is not None:
            tags[TAG_RESUMED_FROM] = previous["run_id"]
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":  # a continued run
        client.update_run(run_id, status="RUNNING")
        if TAG_NOTE in run.data.tags:  # how its last process ended: no longer true
            client.delete_tag(run_id, TAG_NOTE)
    for stale in mark_stale_runs(client):
        print(f"marked run {stale} KILLED: its process is gone", file=sys.stderr)
    logger.log_hyperparams(config_params(config))
    write_run_file(
        run_dir,
        {
            "run_id": run_id,
            "run_name": run.info.run_name,
            "experiment": experiment if previous is None else previous["experiment"],
            "tracking_uri": client.tracking_uri,
            "recipe": recipe,
            "run_dir": str(run_dir),
            "algorithm": tags[TAG_ALGORITHM],
        },
    )
    trainer.logger = logger
    checkpoints = PeriodicCheckpoint(run_dir, run_cfg.checkpoint_every)
    trainer.callbacks.append(checkpoints)
    print(f"run directory: {run_dir}", flush=True)
    print(f"MLflow run: {run_id}", flush=True)
    return checkpoints


def _open_run(model, name: str | None, experiment: str, root: Path, uri: str, previous):
    """The logger, run directory and last logged step of the run to log to.

    A resumed run continues its MLflow run (read from ``run.json`` beside the checkpoint)
    unless another run name is asked for, or the run is no longer in the store: then a
    new run starts, tagged with the id of the one it resumes.
    """
    if previous is not None and name in (None, previous["run_name"]):
        if previous.get("tracking_uri") == uri:
            from mlflow.exceptions import MlflowException

            logger = make_mlflow_logger(
                previous["experiment"],
                run_name=previous["run_name"],
                uri=uri,
                run_id=previous["run_id"],
            )
            try:
                run = logger.experiment.get_run(previous["run_id"])
            except MlflowException:
                run = None
            if run is not None and run.info.lifecycle_stage != "deleted":
                last_step = int(run.data.tags.get(TAG_LAST_STEP, 0))
                return logger, Path(previous["run_dir"]), last_step
        print(
            f"MLflow run {previous['run_id']} is not in {uri}: the resumed run is logged as "
            "a new run linked to it",
            file=sys.stderr,
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Ids may have a namespace ("a/B-v0") or be entry points ("pkg.mod:Env"): file-safe.
    env_name = str(getattr(model, "env_id", "run")).replace("/", "-").replace(":", "-")
    run_name = name or f"{type(model).__name__}-{env_name}-{stamp}"
    logger = make_mlflow_logger(experiment, run_name=run_name, uri=uri)
    return logger, root / "runs" / experiment / run_name, 0


def _fit_and_record(cli: _FitCLI, logger, checkpoints: PeriodicCheckpoint, last_step: int) -> None:
    """Train, then log the final evaluation at the last step, the config and artifacts."""
    config, model, trainer = cli.config, cli.model, cli.trainer
    run_cfg = config.run
    config_yaml = cli.parser.dump(config, skip_none=False)
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path, weights_only=True)
    elapsed = time.perf_counter() - started

    client, run_id = logger.experiment, logger.run_id
    # The end of the curves: the last step training logged at (or the resumed run's).
    step = logger.last_step if logger.last_step is not None else last_step
    # Online algorithms logged `frames` at that step: the x-axis option covers these too.
    metrics: dict[str, Any] = {"time/fit_seconds": elapsed}
    if run_cfg.eval_episodes > 0 and hasattr(model, "export_policy"):
        stats = evaluate_module(model, run_cfg.eval_episodes)
        metrics |= {f"eval/{k}": v for k, v in stats.items()}
        print(
            f"evaluation over {int(stats['n_traj'])} episodes: return "
            f"{stats['return_mean']:.1f} ± {stats['return_std']:.1f}"
        )
    logger.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)
    logger.flush()  # the learning curve below reads them back from the store
    client.set_tag(run_id, TAG_LAST_STEP, str(step))
    _record_reference_returns(client, run_id, cli.datamodule, model)
    client.log_text(run_id, config_yaml, "config.yaml")
    if checkpoints.path.exists():
        client.log_artifact(run_id, str(checkpoints.path), "checkpoints")
    _log_artifacts(model, client, run_id, checkpoints.dirpath, run_cfg)


def _record_reference_returns(client, run_id: str, datamodule, model) -> None:
    """Tag the run with the random and expert returns its demonstrations were stored with.

    The demonstrations are the data module's, or for a module that learns from an expert
    directly (DAgger), the dataset it was given as its reference.
    """
    from tdimitation.data.reference import EXPERT_RETURN, RANDOM_RETURN

    references = getattr(datamodule, "reference_returns", None)
    references = references or getattr(model, "reference_returns", None)
    if references:
        client.set_tag(run_id, TAG_RANDOM_RETURN, repr(references[RANDOM_RETURN]))
        client.set_tag(run_id, TAG_EXPERT_RETURN, repr(references[EXPERT_RETURN]))


def _log_artifacts(model, client, run_id: str, run_dir: Path, run_cfg) -> None:
    """The video of the final policy and the learning curve; a note where one cannot be."""
    notes = []
    if run_cfg.video and run_cfg.video_steps > 0 and hasattr(model, "export_policy"):
        try:
            video = record_policy_video(model, run_dir / "final_policy.gif", run_cfg.video_steps)
            client.log_artifact(run_id, str(video), "video")
        except Exception as err:  # noqa: BLE001 - training is done; the video is an extra
            notes.append(f"no video of the final policy: {str(err).splitlines()[0]}")
    plot = learning_curve(client, run_id, run_dir / "learning_curve.png", run_dir.name)
    if plot is not None:
        client.log_artifact(run_id, str(plot), "plots")
    else:
        notes.append("no learning curve: the run logged no return or loss")
    for note in notes:
        print(f"tdimitation fit: {note}", file=sys.stderr)
    if notes:
        client.set_tag(run_id, TAG_NOTE, "; ".join(notes))


if __name__ == "__main__":
    sys.exit(fit_main())
