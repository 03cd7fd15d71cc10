"""``tdimitation sweep``: hyperparameter searches on Ray Tune with Optuna's sampler.

Every trial is a ``tdimitation fit`` of a recipe with sampled values, one MLflow run nested
under the sweep's run; see ``docs/sweeps.md``. Needs the ``sweep`` extra
(``pip install 'tdimitation[sweep]'``); importing this package imports neither Ray nor
Optuna.
"""
