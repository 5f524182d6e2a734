"""Serving a tuned policy (`groundwork tune policy --serve`): the same launcher the eval's
`tuned-policy` arm uses (evals/arms_tuned_policy.py, where it lives because evals must not import
tuning), so what is served by hand is what the harness measured."""

from __future__ import annotations

from evals.arms_tuned_policy import (
    SERVERS,
    ServedPolicy,
    ServeError,
    Tuned,
    read_tuned,
    serve_command,
    text_profile,
)

__all__ = [
    "SERVERS",
    "ServeError",
    "ServedPolicy",
    "Tuned",
    "read_tuned",
    "serve_command",
    "text_profile",
]
