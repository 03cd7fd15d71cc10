"""What a fit prints: the budget's bar and the algorithm's figures, nothing breaking the bar,
no Lightning banners; lean start-up."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A user's env that warns, prints and logs on its 100th step (mid-training).
NOISY_ENV = """
import logging
import warnings

import gymnasium as gym

_SPOKE = []


class NoisyCartPole(gym.Wrapper):
    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == 100 and not _SPOKE:
            _SPOKE.append(True)
            warnings.warn("noisy-env warning")
            print("noisy-env print")
            logging.getLogger("noisy_env").warning("noisy-env log")
        return super().step(action)
"""


def _env(*paths: Path) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), *map(str, paths), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, COLUMNS="120")


def _fit(recipe: str, tmp_path: Path, *overrides: str) -> str:
    """Run ``tdimitation fit`` on a recipe; its stdout and stderr, interleaved as written."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdimitation.cli",
            "fit",
            "--config",
            str(ROOT / "recipes" / recipe),
            "--run.eval_episodes",
            "0",
            "--run.video",
            "false",
            "--run.data_dir",
            str(tmp_path / "data"),
            *overrides,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    return out.stdout


def _bars(text: str, name: str) -> list[str]:
    """Every drawing of ``name``'s bar, in order (tqdm redraws a line after a \\r)."""
    segments = re.split(r"[\r\n]", text)
    return [s.rstrip() for s in segments if re.match(rf"{name}: +\d+%\|", s)]


def _counts(bar: str, unit: str) -> tuple[int, int]:
    match = re.search(rf"\| ([\d,]+)/([\d,]+) {unit} \[", bar)
    assert match, bar
    return int(match[1].replace(",", "")), int(match[2].replace(",", ""))


def _check_final(bar: str, unit: str, total: int, figures: tuple[str, ...]) -> None:
    assert _counts(bar, unit) == (total, total), bar
    assert f" {unit}/s" in bar or f" s/{unit[:-1]}" in bar, bar  # the rate, in the unit
    for label in figures:
        assert re.search(rf"[ ,]{re.escape(label)}=-?[\d.]+", bar), (label, bar)
    # No float noise (1024.0) in the counts or the figures; tqdm's rate may read 1.00 it/s.
    counts, _, timing = bar.partition(" [")
    figures_text = ", ".join(timing.split(", ")[2:])  # after the elapsed time and the rate
    assert not re.search(r"\d\.0+\b", counts + " " + figures_text), bar


def test_bc_bar_counts_batches_with_loss_and_no_lightning_banners(tmp_path):
    text = _fit(
        "bc/cartpole.yaml",
        tmp_path,
        "--data.init_args.n_episodes",
        "4",
        "--model.init_args.n_epochs",
        "1",
        "--model.init_args.eval_every_n_epochs",
        "0",
    )
    bars = _bars(text, "BC")
    assert bars, text[-2000:]
    done, total = _counts(bars[-1], "batches")
    assert done == total > 0
    _check_final(bars[-1], "batches", total, ("loss", "p(expert)", "epoch"))
    assert "epoch=1," in bars[-1] or bars[-1].endswith("epoch=1]")
    for banner in ("GPU available", "TPU available", "Tip:", "Trainable params"):
        assert banner not in text
    # A new store and experiment are the normal start of a run: no notes about them.
    for note in ("Creating initial MLflow database tables", "not found. Creating it"):
        assert note not in text


def test_ppo_bar_in_frames_output_above_it_and_resumed_from_done(tmp_path):
    (tmp_path / "noisy_env.py").write_text(NOISY_ENV)
    run = (
        "ppo/cartpole.yaml",
        tmp_path,
        "--model.init_args.env_id",
        "noisy_env:NoisyCartPole",
        "--model.init_args.n_steps",
        "64",
        "--model.init_args.n_epochs",
        "1",
        "--run.checkpoint_every",
        "1",
    )
    text = _fit(*run, "--model.init_args.total_frames", "2048")
    bars = _bars(text, "PPO")
    assert _counts(bars[0], "frames") == (0, 2048)
    _check_final(bars[-1], "frames", 2048, ("return",))
    # What the env wrote mid-training starts a line of its own, the bar drawn below it.
    lines = text.split("\n")
    for marker in ("UserWarning: noisy-env warning", "noisy-env print", "noisy-env log"):
        (line,) = [line for line in lines if marker in line]  # (text mode: \r read as \n)
        assert "%|" not in line, line
        assert _bars(text.split(marker)[1], "PPO")

    resumed = _fit(*run, "--model.init_args.total_frames", "4096", "--ckpt-path", "last")
    bars = _bars(resumed, "PPO")
    assert _counts(bars[0], "frames") == (2048, 4096)  # starts at what was done
    _check_final(bars[-1], "frames", 4096, ("return",))


def test_gail_bar_shows_learned_and_true_return(tmp_path):
    text = _fit(
        "gail/cartpole_fixed.yaml",
        tmp_path,
        "--model.init_args.total_frames",
        "2048",
        "--model.init_args.num_envs",
        "2",
        "--model.init_args.n_disc_updates_per_round",
        "1",
        "--model.init_args.demo_batch_size",
        "128",
        "--model.init_args.generator_kwargs.n_epochs",
        "1",
        "--data.init_args.n_episodes",
        "2",
    )
    bars = _bars(text, "GAIL")
    _check_final(bars[-1], "frames", 2048, ("learned return", "true return", "disc acc"))


def test_dagger_bar_counts_rounds_with_beta_and_return(tmp_path):
    text = _fit(
        "dagger/cartpole_fixed.yaml",
        tmp_path,
        "--model.init_args.bc_epochs",
        "1",
        "--model.init_args.num_envs",
        "2",
    )
    bars = _bars(text, "DAgger")
    assert _counts(bars[0], "rounds") == (0, 2)
    _check_final(bars[-1], "rounds", 2, ("beta", "return", "loss"))
    assert "beta=0.5" in bars[-1]  # the linear schedule's second round


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from tdimitation.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    assert "usage: tdimitation" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False False"


_COLLECT = """
import sys
from tdimitation.algorithms import DemonstrationData
data = DemonstrationData("CartPole-v1", expert="scripted:cartpole", n_episodes=8,
                         cache_dir=sys.argv[1])
data.prepare_data()
"""


def _stderr_in_terminal(command: list[str], env: dict[str, str]) -> str:
    """What the command writes to stderr when stderr is a terminal (a pseudo-terminal)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has none, and tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=follower) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the follower side is closed: the process has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
    os.close(leader)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_collecting_demonstrations_shows_progress_in_a_terminal(tmp_path):
    command = [sys.executable, "-c", _COLLECT, str(tmp_path / "cache")]
    shown = _stderr_in_terminal(command, _env())
    assert re.search(r"expert demonstrations: 100%.*\b8/8 \[", shown), shown[-500:]
    assert re.search(r"random policy: 100%.*\b8/8 \[", shown), shown[-500:]
    # Not in a terminal (a log file, CI): no bars.
    quiet = subprocess.run(
        command[:-1] + [str(tmp_path / "cache2")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "expert demonstrations" not in quiet.stderr and "random policy" not in quiet.stderr
