"""Preference comparisons: fragments, gatherers, the preference dataset, reward trainers,
regularisers and the :class:`PreferenceComparisons` LightningModule.
"""

from tdimitation.algorithms.preference.algorithm import PreferenceComparisons
from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.algorithms.preference.exploration import ExplorationPolicy
from tdimitation.algorithms.preference.fragments import (
    ActiveSelectionFragmenter,
    Fragmenter,
    RandomFragmenter,
)
from tdimitation.algorithms.preference.gatherers import PreferenceGatherer, SyntheticGatherer
from tdimitation.algorithms.preference.regularizers import (
    IntervalParamScaler,
    LpRegularizer,
    Regularizer,
    WeightDecayRegularizer,
    make_regularizer,
)
from tdimitation.algorithms.preference.schedule import QUERY_SCHEDULES, comparison_schedule
from tdimitation.algorithms.preference.trainers import BasicRewardTrainer, EnsembleRewardTrainer

__all__ = [
    "QUERY_SCHEDULES",
    "ActiveSelectionFragmenter",
    "BasicRewardTrainer",
    "EnsembleRewardTrainer",
    "ExplorationPolicy",
    "Fragmenter",
    "IntervalParamScaler",
    "LpRegularizer",
    "PreferenceComparisons",
    "PreferenceDataset",
    "PreferenceGatherer",
    "RandomFragmenter",
    "Regularizer",
    "SyntheticGatherer",
    "WeightDecayRegularizer",
    "comparison_schedule",
    "make_regularizer",
]
