"""``tdimitation fit --config RECIPE``: train any algorithm from a YAML recipe.

A recipe is a LightningCLI config: ``model`` (``class_path`` + ``init_args``: every
constructor argument is a key), ``trainer`` (Lightning ``Trainer`` arguments) and ``run``
(tdimitation's options: MLflow experiment and run names, data directory, checkpoint
period, evaluation episodes). ``--print_config`` shows the resolved config; any key can be
overridden on the command line (``--model.init_args.total_frames 50000``).

A fit run logs to MLflow (local sqlite store under the data directory unless
``MLFLOW_TRACKING_URI`` is set): hyperparameters, per-round metrics, the resolved config,
the final checkpoint, and a deterministic evaluation of the trained policy at the end.
Checkpoints (``last.ckpt``, written atomically every ``run.checkpoint_every`` rounds) go to
``<data_dir>/runs/<experiment>/<run name>/``; pass ``--ckpt_path`` to resume a killed run.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from tdimitation.callbacks import PeriodicCheckpoint
from tdimitation.errors import CheckpointError
from tdimitation.evaluation import evaluate_module
from tdimitation.tracking import (
    DATA_DIR_ENV,
    browse_hint,
    data_dir,
    make_mlflow_logger,
    tracking_uri,
)
from tdimitation.utils import configure_threads


class _FitCLI(LightningCLI):
    """LightningCLI with tdimitation's ``run`` options and ``--ckpt_path``."""

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
            "--ckpt_path", type=str | None, default=None, help="resume from this checkpoint"
        )


def fit_main(argv: list[str] | None = None) -> int:
    """Run ``tdimitation fit``; returns the process exit status."""
    configure_threads()
    if argv is None:
        argv = sys.argv[1:]
    # Lightning 2.6's CLI calls APIs that jsonargparse 4.49+ deprecates; nothing a user can
    # act on. jsonargparse's own switch (the user may set it to "all" to see them).
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # Lightning 2.6 under torch 2.13 warns about its own pytree use once per fit.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Check a checkpoint to resume before building anything; _run checks one given inside
    # a config file instead (each file is read once: it can hold large replay buffers).
    checked: set[str] = set()
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--ckpt_path" and i + 1 < len(argv) else None
        if arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
        if path is not None:
            check_checkpoint(path)
            checked.add(path)
    # LightningCLI warns when sys.argv also holds arguments; ours are passed explicitly.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = _make_cli(argv)
    finally:
        sys.argv = saved_argv
    return _run(cli, checked)


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
        },
        parser_kwargs={"prog": "tdimitation fit", "description": __doc__.splitlines()[0]},
    )


def check_checkpoint(path: str | os.PathLike) -> None:
    """Fail early, with one clear line, on a missing, corrupted or foreign checkpoint."""
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


def _run(cli: _FitCLI, checked: set[str]) -> int:
    config = cli.config
    if config.ckpt_path and config.ckpt_path not in checked:
        check_checkpoint(config.ckpt_path)
    run_cfg = config.run
    model, trainer = cli.model, cli.trainer
    experiment = run_cfg.experiment or type(model).__name__
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Ids may have a namespace ("a/B-v0") or be entry points ("pkg.mod:Env"): file-safe.
    env_name = str(getattr(model, "env_id", "run")).replace("/", "-").replace(":", "-")
    run_name = run_cfg.name or f"{type(model).__name__}-{env_name}-{stamp}"
    root = data_dir(run_cfg.data_dir)
    if run_cfg.data_dir:
        # Caches made during the run (collected demonstrations, DAgger buffers) follow too.
        os.environ[DATA_DIR_ENV] = str(root)
    uri = tracking_uri(root)
    logger = make_mlflow_logger(experiment, run_name=run_name, uri=uri)
    trainer.logger = logger
    checkpoints = PeriodicCheckpoint(
        root / "runs" / experiment / run_name, run_cfg.checkpoint_every
    )
    trainer.callbacks.append(checkpoints)

    config_yaml = cli.parser.dump(config, skip_none=False)
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=config.ckpt_path, weights_only=True)
    elapsed = time.perf_counter() - started

    experiment_client, run_id = logger.experiment, logger.run_id
    metrics: dict[str, Any] = {"time/fit_seconds": elapsed}
    if run_cfg.eval_episodes > 0 and hasattr(model, "export_policy"):
        stats = evaluate_module(model, run_cfg.eval_episodes)
        metrics |= {f"eval/{k}": v for k, v in stats.items()}
        print(
            f"evaluation over {int(stats['n_traj'])} episodes: return "
            f"{stats['return_mean']:.1f} ± {stats['return_std']:.1f}"
        )
    for key, value in metrics.items():
        experiment_client.log_metric(run_id, key, float(value))
    experiment_client.log_text(run_id, config_yaml, "config.yaml")
    if checkpoints.path.exists():
        experiment_client.log_artifact(run_id, str(checkpoints.path), "checkpoints")
    logger.finalize("success")
    print(f"checkpoint: {checkpoints.path}")
    print(f"browse the run: {browse_hint(uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(fit_main())
