"""Data sets for examples, tests and benchmarks."""

from sparkml_prod.datasets.synthetic import (
    EVENT_TYPES,
    EVENTS_SCHEMA,
    PLANS,
    USER_ATTRIBUTES_SCHEMA,
    USERS_SCHEMA,
    SyntheticSpec,
    generate_events,
    generate_user_attributes,
    generate_users,
)

__all__ = [
    "EVENTS_SCHEMA",
    "EVENT_TYPES",
    "PLANS",
    "SyntheticSpec",
    "USERS_SCHEMA",
    "USER_ATTRIBUTES_SCHEMA",
    "generate_events",
    "generate_user_attributes",
    "generate_users",
]
