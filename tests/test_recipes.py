"""Every shipped recipe parses with `tdimitation fit` and builds its module (no training)."""

import sys
from pathlib import Path

import pytest

from tdimitation.fit import _make_cli

MUJOCO_TASKS = ("ant", "halfcheetah", "hopper", "swimmer", "walker2d")
# The MuJoCo benchmark's DAgger recipes load the benchmark's trained expert when built:
# tests/test_mujoco_recipes.py builds and runs them with a stand-in expert.
RECIPES = sorted(
    path
    for path in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
    if not (path.parent.name == "dagger" and path.stem.removesuffix("_fixed") in MUJOCO_TASKS)
)


def test_recipes_exist():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_builds(recipe, monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr(sys, "argv", ["tdimitation"])  # as fit_main does
    cli = _make_cli(["--config", str(recipe)])
    assert cli.model is not None and cli.trainer.max_epochs == 1
    assert hasattr(cli.model, "export_policy")
    if "data" in cli.config and cli.config.data is not None:
        assert cli.datamodule is not None
    if hasattr(cli.model, "generator"):
        # The generator records its own hyperparameters, not the CLI's for the outer module.
        assert "env_id" in cli.model.generator.hparams
        assert "demo_batch_size" not in cli.model.generator.hparams
        cli.model.configure_optimizers()
