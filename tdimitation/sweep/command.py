"""The ``tdimitation sweep`` subcommand: arguments, the extra's check, the summary."""

from __future__ import annotations

import argparse
import importlib.util
import json

from tdimitation.errors import SweepError

#: The modules the ``sweep`` extra installs, by the package that provides them.
EXTRA_MODULES = {"ray[tune]": "ray.tune", "optuna": "optuna"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tdimitation sweep``."""
    p.add_argument("--config", required=True, help="the recipe to tune (a fit recipe YAML)")
    p.add_argument(
        "--space",
        required=True,
        help="search space YAML: recipe keys to ranges, e.g. "
        "model.init_args.learning_rate: {loguniform: [1.0e-4, 1.0e-2]} (docs/sweeps.md)",
    )
    p.add_argument("--trials", type=int, default=8, help="configurations to try")
    p.add_argument("--seeds", type=int, default=1, help="seeds each configuration runs on")
    p.add_argument(
        "--metric", default="eval/return_mean", help="the metric to optimise (a fit's metric)"
    )
    p.add_argument("--mode", default="max", choices=("max", "min"), help="maximise or minimise")
    p.add_argument(
        "--asha",
        action="store_true",
        help="stop poor trials early (ASHA) on the metric reported each round",
    )
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: rounds before a stop")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: reduction factor")
    p.add_argument("--max-rounds", type=int, default=1000, help="ASHA: rounds of a full trial")
    p.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (host:port, ray://host:port or auto); default: start "
        "Ray on this machine",
    )
    p.add_argument(
        "--cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)"
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial reserves")
    p.add_argument(
        "--reevaluate",
        type=int,
        default=0,
        help="re-run the best configuration on this many fresh seeds (mean and 95%% CI)",
    )
    p.add_argument(
        "--name", default=None, help="the sweep's name (default: RECIPE-SPACE file names)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: the recipe's run.data_dir, $TDIMITATION_DATA_DIR or "
        "./tdimitation_data)",
    )
    p.add_argument("--search-seed", type=int, default=0, help="seed of Optuna's sampler")
    p.add_argument(
        "--resume",
        action="store_true",
        help="require an existing sweep of this name to continue (a sweep whose directory "
        "exists is resumed anyway)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the summary as one JSON line at the end"
    )


def check_extra() -> None:
    """Refuse, naming the install command, when the ``sweep`` extra is missing."""
    for package, module in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package itself is missing
            found = False
        if not found:
            raise SweepError(
                f"tdimitation sweep needs Ray Tune and Optuna ({package} is not installed); "
                "install them with: pip install 'tdimitation[sweep]'"
            )


def run(args: argparse.Namespace) -> int:
    """Run ``tdimitation sweep``."""
    from tdimitation.sweep.runner import (
        SweepOptions,
        check_options,
        choose_local_ray_authentication,
        run_sweep,
    )

    choose_local_ray_authentication(args.address)  # before the recipe's imports load Ray
    options = SweepOptions(
        recipe=args.config,
        space=args.space,
        trials=args.trials,
        seeds=args.seeds,
        metric=args.metric,
        mode=args.mode,
        asha=args.asha,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        max_rounds=args.max_rounds,
        address=args.address,
        cpus=args.cpus,
        cpus_per_trial=args.cpus_per_trial,
        reevaluate=args.reevaluate,
        name=args.name,
        data_dir=args.data_dir,
        search_seed=args.search_seed,
        resume=args.resume,
    )
    check_options(options)
    check_extra()
    summary = run_sweep(options)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0
