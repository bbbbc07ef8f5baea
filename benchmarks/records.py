"""What a suite has recorded in MLflow: the tags its runs carry and the finished evaluations.

Every run of a suite lives in the suite's experiment and carries ``cdrl.suite``,
``cdrl.suite_version``, ``cdrl.profile`` (``full`` | ``quick``), ``cdrl.run_key``,
``cdrl.model``, ``cdrl.seed`` and ``cdrl.source`` (``trained`` or the hash of a given
checkpoint); evaluation runs also ``cdrl.steps_per_level`` and ``cdrl.guidance``. A run key
counts as done when an evaluation run with that key, suite version and profile is FINISHED.
"""

from __future__ import annotations

import pandas as pd

from cdrl.search_filter import tag_clause
from cdrl.tags import TAG_KIND, TAG_PROFILE, TAG_RUN_KEY, TAG_SUITE, TAG_SUITE_VERSION
from cdrl.store import Store



def finished_eval_runs(experiment: str, suite_name: str, version: int, profile: str,
                       tracking_uri: Store | str | None = None) -> pd.DataFrame:
    """FINISHED evaluation runs of one suite version and profile, newest first (``mlflow.search_runs`` columns).

    Empty when the store or the experiment does not exist yet.
    """
    import mlflow

    # Every value is quoted by tag_clause (a value it cannot quote is refused before searching).
    clauses = [tag_clause(TAG_KIND, "eval"), tag_clause(TAG_SUITE, suite_name),
               tag_clause(TAG_SUITE_VERSION, version), tag_clause(TAG_PROFILE, profile),
               "attributes.status = 'FINISHED'"]
    store = Store.resolve(tracking_uri)
    if not store.exists():
        return pd.DataFrame()
    mlflow.set_tracking_uri(store.uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=" AND ".join(clauses),
                              order_by=["attributes.end_time DESC"], output_format="pandas")
    return runs if len(runs) else pd.DataFrame()


def latest_per_key(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per run key, the newest (a key evaluated twice, e.g. after deleting a row, counts once)."""
    if runs.empty:
        return runs
    return runs.drop_duplicates(subset=f"tags.{TAG_RUN_KEY}", keep="first")
