"""The Lightning callback inside a trial's fit: nesting its run, reporting to Ray Tune."""

from __future__ import annotations

import lightning as L

from tdimitation.sweep.trial import FINAL, RUN_ID, TAG_PARENT


class TrialReport(L.Callback):
    """Nests the fit's MLflow run under the sweep's and reports the metric every round.

    Args:
        parent_run_id: the sweep's MLflow run.
        tags: further tags of the trial's run.
        metric: the metric reported, read from the fit's logged metrics.
        report: called with each report (Ray Tune's ``tune.report``).
    """

    def __init__(self, parent_run_id: str, tags: dict[str, str], metric: str, report) -> None:
        self.parent_run_id, self.tags, self.metric, self.report = (
            parent_run_id,
            tags,
            metric,
            report,
        )
        self.run_id: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        self.run_id = logger.run_id
        for key, value in {TAG_PARENT: self.parent_run_id, **self.tags}.items():
            logger.experiment.set_tag(self.run_id, key, value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # One report per round once the metric exists (ASHA needs it in every report): its
        # latest value, so trials are compared at equal numbers of rounds.
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.report({self.metric: float(value), FINAL: 0, RUN_ID: self.run_id})
