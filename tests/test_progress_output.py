"""What a fit prints: a progress bar with a total, no Lightning banners; lean start-up."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdimitation.algorithms.bc import _IndexBlocks
from tdimitation.rl.base import RoundIndices

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, COLUMNS="120")


@pytest.mark.parametrize(
    ("n_rows", "batch", "accumulate", "block", "n_batches", "skip"),
    [(100, 8, 1, 4, 30, 0), (100, 8, 2, 3, 17, 5), (64, 16, 1, 5, 12, 12), (50, 7, 1, 1, 9, 2)],
)
def test_index_blocks_length_is_the_number_of_blocks_yielded(
    n_rows, batch, accumulate, block, n_batches, skip
):
    blocks = _IndexBlocks(n_rows, batch, accumulate, block, n_batches, seed=0, skip=skip)
    assert len(blocks) == len(list(blocks))


@pytest.mark.parametrize(("first", "last"), [(0, 5), (3, 7), (4, 4)])
def test_round_indices_length_is_the_number_of_rounds(first, last):
    rounds = RoundIndices(first, last)
    assert len(rounds) == len(list(rounds))


def test_fit_shows_a_total_and_no_lightning_banners(tmp_path):
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
    # The bar ends at "done/total" (a bar without a total shows "done/--").
    totals = re.findall(r"━\s*(\d+)/(\d+|--)", text)
    assert totals and totals[-1][0] == totals[-1][1] and int(totals[-1][1]) > 0


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


def test_index_blocks_resume_where_a_run_stopped_and_cover_each_epoch_once():
    whole = _IndexBlocks(100, 8, 1, 3, 30, seed=0, skip=0)
    batches = torch.cat(list(whole))  # [30, 1, 8]: 12 batches per epoch, 2.5 epochs
    first_epoch = batches[:12].flatten()
    assert len(set(first_epoch.tolist())) == 96  # one epoch: 96 distinct rows of 100
    assert not torch.equal(batches[:12], batches[12:24])  # a fresh permutation per epoch
    resumed = torch.cat(list(_IndexBlocks(100, 8, 1, 3, 30, seed=0, skip=7)))
    assert torch.equal(resumed, batches[7:])
