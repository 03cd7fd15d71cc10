"""Fragmenters: pairs of fixed-length trajectory fragments to compare.

A fragmenter takes a flat trajectory set (TED layout, episodes contiguous, ``episode`` ids)
and returns a pair batch ``[P, 2, L]``: ``P`` pairs of two fragments of ``L`` consecutive
transitions of one episode each. Fragments are compact copies of the rows they use
(indexing copies), so a stored fragment never keeps a whole trajectory alive. A fragment is
terminal only when it ends at its episode's last step: its ``("next", "done")`` flags are
the episode's, and only an episode's last step has one set.
"""

from __future__ import annotations

import warnings

import torch
from tensordict import TensorDictBase

from tdimitation.data.trajectory import episode_runs
from tdimitation.errors import FragmentError, PreferenceError
from tdimitation.objectives.preference import PreferenceModel
from tdimitation.rng import uniform

#: The keys a fragment keeps (those present in the source).
FRAGMENT_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "done"),
)

#: Disagreement measures of :class:`ActiveSelectionFragmenter`.
UNCERTAINTY_MEASURES = ("logit", "probability", "label")


def _fragment_view(trajectories: TensorDictBase) -> TensorDictBase:
    present = set(trajectories.keys(include_nested=True))
    return trajectories.select(*[k for k in FRAGMENT_KEYS if k in present])


class Fragmenter:
    """Base class: ``fragmenter(trajectories, fragment_length, num_pairs)`` → ``[P, 2, L]``."""

    def __call__(
        self, trajectories: TensorDictBase, fragment_length: int, num_pairs: int
    ) -> TensorDictBase:
        raise NotImplementedError


class RandomFragmenter(Fragmenter):
    """Fragments drawn uniformly: episodes in proportion to their length, uniform start.

    Only episodes at least ``fragment_length`` long are used (a clear error when there is
    none). Weighting episodes by length and drawing the start uniformly samples every
    admissible window of equal-length episodes alike; the first and last steps of an
    episode fall in fewer windows than the middle ones.

    Args:
        rng: the run's generator (every draw comes from it).
        warning_threshold: warn when the usable transitions are fewer than this many times
            the transitions the fragments need (0: never warn).
    """

    def __init__(self, rng: torch.Generator | None, warning_threshold: float = 10.0) -> None:
        if warning_threshold < 0:
            raise PreferenceError(f"warning_threshold must be >= 0, got {warning_threshold}")
        self.rng = rng
        self.warning_threshold = float(warning_threshold)

    def __call__(
        self, trajectories: TensorDictBase, fragment_length: int, num_pairs: int
    ) -> TensorDictBase:
        length = int(fragment_length)
        if length < 1 or num_pairs < 1:
            raise PreferenceError(
                f"fragment_length and num_pairs must be >= 1, got {fragment_length}, {num_pairs}"
            )
        starts, lengths = episode_runs(trajectories)
        usable = lengths >= length
        if not bool(usable.any()):
            longest = int(lengths.max()) if lengths.numel() else 0
            raise FragmentError(
                f"no episode is at least fragment_length={length} transitions long (the "
                f"longest has {longest}): lower fragment_length or collect longer episodes"
            )
        n_fragments = 2 * int(num_pairs)
        available = int(lengths[usable].sum())
        needed = n_fragments * length
        if self.warning_threshold and available < self.warning_threshold * needed:
            warnings.warn(
                f"fragments need {needed} transitions but only {available} are usable "
                f"(fewer than {self.warning_threshold:g}x): fragments will overlap a lot",
                stacklevel=2,
            )
        weights = torch.where(usable, lengths, torch.zeros_like(lengths)).double()
        episodes = torch.multinomial(weights, n_fragments, replacement=True, generator=self.rng)
        # Uniform start in [0, length_e - L]: floor(u * (count of admissible starts)).
        slack = (lengths[episodes] - length + 1).double()
        offset = (uniform((n_fragments,), self.rng, dtype=torch.float64) * slack).long()
        first = starts[episodes] + offset
        rows = first.unsqueeze(1) + torch.arange(length)
        source = _fragment_view(trajectories)
        fragments = source[rows.reshape(-1).to(source.device)]  # a compact copy
        return fragments.reshape(int(num_pairs), 2, length)


class ActiveSelectionFragmenter(Fragmenter):
    """Keep the pairs an ensemble disagrees on most, out of ``factor``× as many drawn.

    Disagreement is the variance over members of the clipped return difference
    (``"logit"``), of the preference probability (``"probability"``), or of the predicted
    label, 1 when the first fragment is preferred (``"label"``).

    Args:
        preference_model: a :class:`~tdimitation.objectives.PreferenceModel` over a
            reward ensemble.
        base_fragmenter: draws the candidate pairs.
        fragment_sample_factor: candidates drawn per pair kept (>= 1).
        uncertainty_on: ``"logit"``, ``"probability"`` or ``"label"``.
    """

    def __init__(
        self,
        preference_model: PreferenceModel,
        base_fragmenter: Fragmenter,
        fragment_sample_factor: float = 2.0,
        uncertainty_on: str = "logit",
    ) -> None:
        if preference_model.ensemble is None:
            raise PreferenceError(
                "active selection needs a reward ensemble to measure disagreement: use "
                "ensemble_size >= 2 (a RewardEnsemble) or turn active selection off"
            )
        if uncertainty_on not in UNCERTAINTY_MEASURES:
            raise PreferenceError(
                f"unknown uncertainty_on {uncertainty_on!r}; choose one of {UNCERTAINTY_MEASURES}"
            )
        if fragment_sample_factor < 1:
            raise PreferenceError(
                f"fragment_sample_factor must be >= 1, got {fragment_sample_factor}"
            )
        self.preference_model = preference_model
        self.base_fragmenter = base_fragmenter
        self.fragment_sample_factor = float(fragment_sample_factor)
        self.uncertainty_on = uncertainty_on

    def disagreement(self, pairs: TensorDictBase) -> torch.Tensor:
        """Variance over members of the chosen measure, ``[P]``."""
        model = self.preference_model
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                logits = model.logits(model.rewards(pairs))  # [M, P]
            finally:
                model.train(was_training)
        if self.uncertainty_on == "probability":
            values = model.probability(logits)
        elif self.uncertainty_on == "label":
            values = (logits > 0).to(logits.dtype)
        else:
            values = logits
        return values.var(0, correction=1)

    def __call__(
        self, trajectories: TensorDictBase, fragment_length: int, num_pairs: int
    ) -> TensorDictBase:
        n_candidates = max(int(num_pairs), int(round(num_pairs * self.fragment_sample_factor)))
        candidates = self.base_fragmenter(trajectories, fragment_length, n_candidates)
        score = self.disagreement(candidates.to(_device(self.preference_model)))
        keep = torch.topk(score.cpu(), int(num_pairs), sorted=False).indices
        return candidates[keep]


def _device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def make_fragmenter(
    rng: torch.Generator | None,
    warning_threshold: float,
    active_selection_model: PreferenceModel | None = None,
    oversampling: float = 2.0,
    uncertainty_on: str = "logit",
) -> Fragmenter:
    """Random pairs, or, given the ensemble's preference model, the pairs it disagrees on
    most out of ``oversampling`` times as many random ones.
    """
    fragmenter: Fragmenter = RandomFragmenter(rng, warning_threshold)
    if active_selection_model is None:
        return fragmenter
    return ActiveSelectionFragmenter(
        active_selection_model, fragmenter, oversampling, uncertainty_on
    )


__all__ = [
    "FRAGMENT_KEYS",
    "UNCERTAINTY_MEASURES",
    "ActiveSelectionFragmenter",
    "make_fragmenter",
    "Fragmenter",
    "RandomFragmenter",
]
