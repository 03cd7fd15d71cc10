"""What a fit prints: BC's figures on the bar, no Lightning banners; lean start-up."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, COLUMNS="120")


def test_fit_shows_bc_figures_and_no_lightning_banners(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdimitation.cli",
            "fit",
            "--config",
            str(ROOT / "recipes" / "bc" / "cartpole.yaml"),
            "--data.init_args.n_episodes",
            "4",
            "--model.init_args.n_epochs",
            "1",
            "--model.init_args.eval_every_n_epochs",
            "0",
            "--run.eval_episodes",
            "2",
            "--run.data_dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "bc/loss" in text and "bc/prob_true_act" in text  # BC's figures on the bar
    for banner in ("GPU available", "TPU available", "Tip:"):
        assert banner not in text


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
