"""After scoring: reference profiles, drift, realised performance, the action's impact, a
monitoring history and its dashboard."""

from sparkml_prod.monitoring.drift import DriftResult, DriftThresholds, measure_drift, psi
from sparkml_prod.monitoring.history import (
    alerts,
    check_alerts,
    format_summary,
    read_history,
    write_history,
)
from sparkml_prod.monitoring.impact import action_impact, assign_holdout
from sparkml_prod.monitoring.profile import ColumnProfile, ReferenceProfile, reference_profile
from sparkml_prod.monitoring.realised import realised_labels, realised_performance
from sparkml_prod.monitoring.records import STATUSES, MetricRecord, status_of

__all__ = [
    "STATUSES",
    "ColumnProfile",
    "DriftResult",
    "DriftThresholds",
    "MetricRecord",
    "ReferenceProfile",
    "action_impact",
    "alerts",
    "assign_holdout",
    "check_alerts",
    "format_summary",
    "measure_drift",
    "psi",
    "read_history",
    "realised_labels",
    "realised_performance",
    "reference_profile",
    "status_of",
    "write_history",
]
