"""The search-space file: its format, and the keys checked against the recipe's classes."""

from __future__ import annotations

import textwrap

import pytest

from tdimitation.errors import SweepError
from tdimitation.sweep.space import check_keys, load_space, parse_space

RECIPE = {
    "model": {"class_path": "tdimitation.algorithms.BC", "init_args": {"env_id": "CartPole-v1"}},
    "data": {"class_path": "tdimitation.algorithms.DemonstrationData"},
}


def test_space_file_kinds_and_values(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        textwrap.dedent(
            """
            model.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
            model.init_args.n_epochs: {int: [1, 4]}
            model.init_args.hidden_sizes: {choice: [[16, 16], [32]]}
            data.init_args.n_episodes: [4, 8]
            trainer.max_time: {choice: [null, "00:00:10:00"]}
            """
        )
    )
    params = load_space(path)
    assert [p.key for p in params] == [
        "model.init_args.learning_rate",
        "model.init_args.n_epochs",
        "model.init_args.hidden_sizes",
        "data.init_args.n_episodes",
        "trainer.max_time",
    ]
    check_keys(params, RECIPE, str(path))
    lr, epochs, sizes, episodes, max_time = params
    assert lr.distribution().log and lr.distribution().low == 1e-4
    assert (epochs.distribution().low, epochs.distribution().high) == (1, 4)
    # Lists travel through Optuna as JSON text and come back as lists.
    encoded = sizes.distribution().choices
    assert [sizes.decode(c) for c in encoded] == [[16, 16], [32]]
    assert episodes.distribution().choices == (4, 8)
    assert max_time.decode(None) is None


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "is empty"),
        (None, "is empty"),
        ({"model.init_args.learning_rate": 0.1}, "a fixed value belongs in the recipe"),
        ({"model.init_args.learning_rate": {"logunifrm": [1, 2]}}, "did you mean loguniform"),
        ({"model.init_args.learning_rate": {"uniform": [2, 1]}}, "is empty; give low < high"),
        ({"model.init_args.learning_rate": {"loguniform": [0, 1]}}, "positive low bound"),
        ({"model.init_args.n_epochs": {"int": [1, 2.5]}}, "must be integers"),
        ({"model.init_args.n_epochs": {"choice": []}}, "non-empty list"),
        ({"model.init_args.seed": [0, 1]}, "--seeds K"),
        ({"optimizer.lr": [0.1]}, "is not a recipe key"),
        ({"model.init_args.optimizer_kwargs.betas": [[0.9, 0.99]]}, "is nested"),
    ],
)
def test_bad_spaces(space, message):
    with pytest.raises(SweepError, match=message):
        parse_space(space, "space.yaml")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("model.init_args.lr", "BC has no parameter 'lr'.*did you mean learning_rate"),
        ("model.init_args.batchsize", "did you mean batch_size"),
        ("data.init_args.n_episode", "DemonstrationData has no .*did you mean n_episodes"),
        ("trainer.max_epoch", "Trainer has no .*did you mean max_epochs"),
    ],
)
def test_unknown_keys_name_the_closest(key, hint):
    params = parse_space({key: [1, 2]}, "space.yaml")
    with pytest.raises(SweepError, match=hint):
        check_keys(params, RECIPE, "space.yaml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(SweepError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model.init_args.learning_rate: {uniform: [1, 2]\nx: [")
    with pytest.raises(SweepError, match=r"not valid YAML \(line"):
        load_space(bad)
