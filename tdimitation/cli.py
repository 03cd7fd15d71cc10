"""The ``tdimitation`` command line.

Subcommands:

* ``rollout``: run a scripted, random, zero or saved policy and save complete episodes as
  a trajectory dataset, then print their statistics;
* ``convert``: convert ``imitation``'s trajectory files (HF dataset, legacy ``.npz`` or
  ``.pkl``) or a local Minari dataset to a tdimitation dataset, or a dataset to Minari
  (``minari:DATASET_ID``);
* ``stats``: statistics of a trajectory dataset or file;
* ``eval``: evaluate a policy (scripted, saved, checkpoint or Stable-Baselines3 zip), print
  its statistics as one JSON line, optionally record a video and log to MLflow (a new run,
  or ``--run RUN_ID``: attached to a training run);
* ``runs``: list and compare the training runs of the MLflow store (:mod:`tdimitation.runs`);
* ``analyze``: statistics of finished runs per algorithm x environment (IQM, stratified
  bootstrap intervals, normalised scores, learning curves; :mod:`tdimitation.analysis`);
* ``label``: human preferences: serve the labelling page, add labellers, show status,
  export answers (see docs/human-preferences.md);
* ``sweep --config RECIPE --space SPACE``: a hyperparameter search on Ray Tune with
  Optuna's sampler, every trial a fit nested under the sweep's MLflow run (the ``sweep``
  extra; see docs/sweeps.md);
* ``fit --config RECIPE``: train an algorithm from a YAML recipe (LightningCLI; see
  :mod:`tdimitation.fit`).

Bad input exits with status 2 and a one-line message, no traceback.

Flags of tdimitation's own are spelt with dashes (``--num-envs``, ``--data-dir``,
``--ckpt-path``); ``fit``'s recipe keys are spelt as in the YAML
(``--model.init_args.total_frames``, ``--run.data_dir``). Every command accepts either
separator in its flags (``--num_envs``, ``--ckpt_path``, ``--run.data-dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from tdimitation import runs as _runs
from tdimitation.errors import TdimitationError, TrackingError

#: The algorithms ``fit`` trains, by name: the ``model.class_path`` a recipe gives. Kept as
#: text so ``tdimitation --help`` stays fast (tests check each path imports).
ALGORITHMS: dict[str, str] = {
    "BC": "tdimitation.algorithms.BC",
    "DAgger": "tdimitation.algorithms.DAgger",
    "GAIL": "tdimitation.algorithms.GAIL",
    "AIRL": "tdimitation.algorithms.AIRL",
    "SQIL": "tdimitation.algorithms.SQIL",
    "Density": "tdimitation.algorithms.Density",
    "PreferenceComparisons": "tdimitation.algorithms.PreferenceComparisons",
    "MCEIRL": "tdimitation.algorithms.MCEIRL",
    "PPO": "tdimitation.rl.ppo.PPO",
    "SAC": "tdimitation.rl.sac.SAC",
    "DQN": "tdimitation.rl.dqn.DQN",
}
FIT_HELP = "train an algorithm from a YAML recipe: fit --config RECIPE (see fit --help)"

AddArguments = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], int]
# name -> (help text, function adding the subcommand's arguments, function running it)
COMMANDS: dict[str, tuple[str, AddArguments, Runner]] = {}


def command(name: str, help_text: str, add_arguments: AddArguments):
    """Register the decorated function as subcommand ``name``."""

    def decorate(run: Runner) -> Runner:
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return decorate


def _format_stats(stats: dict[str, float]) -> str:
    lines = []
    for key, value in stats.items():
        shown = f"{int(value)}" if key in ("n_traj", "n_transitions") else f"{value:.4g}"
        lines.append(f"  {key:<22} {shown}")
    return "\n".join(lines)


def _print_stats(stats: dict[str, float], as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats))
    else:
        print(_format_stats(stats))


# ---------------------------------------------------------------------- rollout
def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="environment id, e.g. CartPole-v1")
    p.add_argument(
        "--policy",
        default="scripted",
        help="KIND[:ARG]: scripted[:NAME] (scripted: the expert for --env), random, zero, "
        "tdimitation:PATH",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="minimum number of episodes (None: 10 unless --timesteps is given)",
    )
    p.add_argument("--timesteps", type=int, default=None, help="minimum number of transitions")
    p.add_argument("--num-envs", type=int, default=8, help="sub-envs stepped together")
    p.add_argument("--seed", type=int, default=0, help="seed of the envs and of sampled actions")
    p.add_argument("--deterministic", action="store_true", help="greedy actions")
    p.add_argument("--fixed-horizon", type=int, default=None, help="episode length H")
    p.add_argument("--out", required=True, help="directory of the dataset to write")
    p.add_argument("--json", action="store_true", help="print statistics as one JSON line")


@command("rollout", "run a policy and save complete episodes as a dataset", _rollout_args)
def run_rollout(args: argparse.Namespace) -> int:
    from tdimitation.data import rollout, rollout_stats
    from tdimitation.data.storage import save_trajectories
    from tdimitation.envs import make_env
    from tdimitation.policies import policy_from_string

    if args.episodes is None and args.timesteps is None:
        args.episodes = 10
    env = make_env(
        args.env, num_envs=args.num_envs, seed=args.seed, fixed_horizon=args.fixed_horizon
    )
    try:
        policy = policy_from_string(args.policy, env=env, **_seed_kwargs(args.policy, args.seed))
        # Sampled actions draw from a generator of --seed, so a rollout repeats.
        trajectories = rollout(
            policy,
            env,
            min_episodes=args.episodes,
            min_timesteps=args.timesteps,
            deterministic=args.deterministic,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    finally:
        env.close()
    path = save_trajectories(
        args.out,
        trajectories,
        env_id=args.env,
        metadata={
            "policy": args.policy,
            "seed": args.seed,
            "deterministic": args.deterministic,
            "fixed_horizon": args.fixed_horizon,
        },
    )
    stats = rollout_stats(trajectories)
    if not args.json:
        print(f"saved {int(stats['n_traj'])} episodes to {path}")
    _print_stats(stats, args.json)
    return 0


def _seed_kwargs(policy_spec: str, seed: int) -> dict:
    return {"seed": seed} if policy_spec.partition(":")[0] == "random" else {}


# ---------------------------------------------------------------------- convert
MINARI_PREFIX = "minari:"


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="imitation HF dataset directory, .npz or .pkl file, tdimitation dataset, Minari "
        "dataset directory, or minari:DATASET_ID (a local Minari dataset)",
    )
    p.add_argument(
        "dest",
        help="directory of the tdimitation dataset to write, or minari:DATASET_ID to write a "
        "local Minari dataset (under $MINARI_DATASETS_PATH)",
    )
    p.add_argument(
        "--env-id",
        default=None,
        help="environment id of the data (None: the one recorded in the source); a Minari "
        "destination takes its spaces from it",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow reading .pkl files (unpickling can run code: trusted files only)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing Minari dataset with the destination id",
    )


@command(
    "convert",
    "convert imitation or Minari trajectory data to a tdimitation dataset, or ours to Minari",
    _convert_args,
)
def run_convert(args: argparse.Namespace) -> int:
    from tdimitation.data import rollout_stats
    from tdimitation.data.storage import load_trajectories, save_trajectories, trajectory_metadata
    from tdimitation.errors import EnvCreationError

    if args.source.startswith(MINARI_PREFIX):
        from tdimitation.data.minari import load_minari, minari_metadata

        source_id = args.source[len(MINARI_PREFIX) :]
        source_meta = minari_metadata(source_id)
        trajectories = load_minari(source_id)
    else:
        source_meta = trajectory_metadata(args.source)
        trajectories = load_trajectories(args.source, allow_pickle=args.allow_pickle)
    source_format = source_meta["format"]
    env_id = args.env_id or source_meta.get("env_id")
    if args.dest.startswith(MINARI_PREFIX):
        from tdimitation.data.minari import save_minari

        if env_id is None:
            raise EnvCreationError(
                "a Minari dataset records the environment's spaces, and the source names no "
                "environment; pass --env-id"
            )
        path = save_minari(
            trajectories, args.dest[len(MINARI_PREFIX) :], env=env_id, overwrite=args.overwrite
        )
    else:
        metadata = {"converted_from": source_format}
        if source_format == "minari":
            metadata["minari_dataset_id"] = source_meta.get("dataset_id")
        path = save_trajectories(args.dest, trajectories, env_id=env_id, metadata=metadata)
    stats = rollout_stats(trajectories)
    print(f"converted {int(stats['n_traj'])} episodes ({source_format}) to {path}")
    return 0


# ------------------------------------------------------------------------ stats
def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="trajectory dataset directory, or imitation .npz/.pkl file")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--allow-pickle", action="store_true", help="allow reading .pkl files")


@command("stats", "print statistics of a trajectory dataset", _stats_args)
def run_stats(args: argparse.Namespace) -> int:
    from tdimitation.data import rollout_stats
    from tdimitation.data.storage import load_trajectories, trajectory_metadata

    trajectories = load_trajectories(args.path, allow_pickle=args.allow_pickle)
    stats = rollout_stats(trajectories)
    if not args.json:
        meta = trajectory_metadata(args.path)
        print(f"{args.path}: format {meta.get('format')}, env {meta.get('env_id') or 'unknown'}")
    _print_stats(stats, args.json)
    return 0


# ------------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="environment id, e.g. CartPole-v1")
    p.add_argument(
        "--policy",
        required=True,
        help="KIND[:ARG]: scripted[:NAME], random, zero, tdimitation:PATH, "
        "sb3-ppo:PATH, sb3-sac:PATH, sb3-dqn:PATH",
    )
    p.add_argument("--episodes", type=int, default=20, help="minimum number of episodes")
    p.add_argument("--num-envs", type=int, default=8, help="sub-envs stepped together")
    p.add_argument("--seed", type=int, default=0, help="seed of the envs and of sampled actions")
    p.add_argument("--stochastic", action="store_true", help="sample actions (off: greedy)")
    p.add_argument("--fixed-horizon", type=int, default=None, help="episode length H")
    p.add_argument("--video", default=None, help="also record one episode to this .gif/.mp4")
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="log params, metrics (eval/...) and the video to an MLflow run (off by default)",
    )
    p.add_argument("--experiment", default="eval", help="MLflow experiment name")
    p.add_argument(
        "--run",
        default=None,
        metavar="RUN_ID",
        help="with --mlflow: attach the results and video to this (training) run instead of "
        "starting a new one",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the local MLflow store (None: $TDIMITATION_DATA_DIR or "
        "./tdimitation_data; $MLFLOW_TRACKING_URI overrides the store)",
    )


@command("eval", "evaluate a policy: return statistics as one JSON line", _eval_args)
def run_eval(args: argparse.Namespace) -> int:

    from tdimitation.envs import make_env
    from tdimitation.evaluation import evaluate_policy, record_video, video_format
    from tdimitation.policies import policy_from_string

    if args.video:
        video_format(args.video)  # fail before evaluating, not after
    if args.mlflow:
        client = _runs.open_client(args.data_dir)
        _runs.mark_stale_runs(client)
        if args.run:
            _runs.get_run(client, args.run)  # an unknown run fails before evaluating
    elif args.run:
        raise TrackingError("--run attaches to an MLflow run: add --mlflow")
    deterministic = not args.stochastic
    env = make_env(
        args.env, num_envs=args.num_envs, seed=args.seed, fixed_horizon=args.fixed_horizon
    )
    try:
        policy = policy_from_string(args.policy, env=env, **_seed_kwargs(args.policy, args.seed))
        stats = evaluate_policy(
            policy, env, args.episodes, deterministic=deterministic, seed=args.seed
        )
    finally:
        env.close()
    video = None
    if args.video:
        video = record_video(
            policy,
            args.env,
            args.video,
            seed=args.seed,
            deterministic=deterministic,
            fixed_horizon=args.fixed_horizon,
        )
    if args.mlflow and args.run:
        settings = {k: getattr(args, k) for k in ("env", "policy", "episodes", "seed")}
        settings["deterministic"] = deterministic
        _runs.attach_evaluation(client, args.run, stats, settings, video)
        print(f"attached the evaluation to MLflow run {args.run}", file=sys.stderr)
    elif args.mlflow:
        from tdimitation.tracking import browse_hint, make_mlflow_logger, tracking_uri

        logger = make_mlflow_logger(args.experiment, data_dir_path=args.data_dir)
        params = {
            "env": args.env,
            "policy": args.policy,
            "episodes": args.episodes,
            "num_envs": args.num_envs,
            "seed": args.seed,
            "deterministic": deterministic,
            "fixed_horizon": args.fixed_horizon,
        }
        try:
            logger.log_hyperparams(params)
            logger.log_metrics({f"eval/{key}": value for key, value in stats.items()})
            if video is not None:
                logger.experiment.log_artifact(logger.run_id, str(video))
        except BaseException:
            logger.finalize("failed")  # do not leave the run marked RUNNING
            raise
        logger.finalize("success")
        print(
            f"logged MLflow run {logger.run_id} (experiment {args.experiment!r}); browse with: "
            f"{browse_hint(tracking_uri(args.data_dir))}",
            file=sys.stderr,
        )
    print(json.dumps(stats))
    return 0


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that also takes its dashed flags spelt with underscores."""

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        aliases = self.__dict__.setdefault("flag_aliases", {})
        for name in names:
            if name.startswith("--") and "-" in name[2:]:
                aliases["--" + name[2:].replace("-", "_")] = name
        return action

    def parse_known_args(self, args=None, namespace=None):
        aliases = self.__dict__.get("flag_aliases", {})
        if args is not None:
            args = [_respell(arg, aliases) for arg in args]
        return super().parse_known_args(args, namespace)


def _respell(arg: str, aliases: dict[str, str]) -> str:
    name, sep, value = arg.partition("=")
    return aliases[name] + sep + value if name in aliases else arg


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tdimitation")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown (not installed)"


# ------------------------------------------------------------------------- runs
# The command lives in tdimitation.runs (which imports MLflow only when it runs).
command("runs", "list and compare training runs of the MLflow store", _runs.add_arguments)(
    _runs.main
)


# ------------------------------------------------------------------------ label
def _label_args(p: argparse.ArgumentParser) -> None:
    from tdimitation.labelling.command import add_arguments

    add_arguments(p)


@command("label", "human preferences: serve the labelling page, add labellers, export", _label_args)
def run_label(args: argparse.Namespace) -> int:
    from tdimitation.labelling.command import run

    return run(args)


# ---------------------------------------------------------------------- analyze
def _analyze_args(p: argparse.ArgumentParser) -> None:
    from tdimitation.analysis.command import add_arguments

    add_arguments(p)


@command(
    "analyze",
    "statistics of finished runs per algorithm x env: IQM, bootstrap CIs, curves",
    _analyze_args,
)
def run_analyze(args: argparse.Namespace) -> int:
    from tdimitation.analysis.command import main as analyze_main

    return analyze_main(args)


# ------------------------------------------------------------------------ sweep
def _sweep_args(p: argparse.ArgumentParser) -> None:
    from tdimitation.sweep.command import add_arguments

    add_arguments(p)


@command("sweep", "hyperparameter search of a recipe on Ray Tune + Optuna", _sweep_args)
def run_sweep(args: argparse.Namespace) -> int:
    from tdimitation.sweep.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in ALGORITHMS)
    algorithms = "\n".join(f"  {name:<{width}}  {path}" for name, path in ALGORITHMS.items())
    parser = argparse.ArgumentParser(
        prog="tdimitation",
        description="Reward and imitation learning on torchrl.",
        epilog=(
            "Training: tdimitation fit --config RECIPE (see tdimitation fit --help); a recipe "
            "names its algorithm as model.class_path:\n"
            f"{algorithms}\n\n"
            "Flags are spelt with dashes (--num-envs, --ckpt-path); fit's recipe keys as in "
            "the YAML (--model.init_args.total_frames); either separator is accepted."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(
            subparsers.add_parser(
                name,
                help=help_text,
                description=help_text,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            )
        )
    # Listed for --help only: main() hands fit's arguments to LightningCLI before parsing.
    subparsers.add_parser("fit", help=FIT_HELP, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tdimitation`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:
        # LightningCLI owns fit's arguments (every recipe key is an option).
        from tdimitation.fit import fit_main

        try:
            return fit_main(argv[1:])
        except TdimitationError as err:
            # One line, no traceback: recipe, option, checkpoint and budget errors alike.
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"tdimitation fit: error: {message}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported here, not at the top: `--help` and usage errors need no torch.
    from tdimitation.utils import configure_threads

    configure_threads()
    run = COMMANDS[args.command][2]
    try:
        return int(run(args) or 0)
    except (TdimitationError, ValueError, OSError) as err:
        # Bad input: one line naming the problem, no traceback.
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tdimitation {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdimitation {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
