"""The A/B evaluation harness: does a plain agent with tools match a model trained to research?

    from evals import load_config, run_eval
    result = run_eval(load_config("evals/examples/plain-vs-trained.toml"))
    result.report_html, result.table()

Arms (plain, rewrite, agent, trained, imported) run the same prompts and seeds through the same
generator and tools; metrics are plugins skipped with a reason when what they need is missing;
statistics are paired over prompts; results are resumable (SQLite), reports are Markdown and a
self-contained HTML page. Runtime code must never import this package (it sits above graphs/).
"""

from __future__ import annotations

from evals.compare import Comparison, compare_runs
from evals.config import EvalConfig, load_config, parse_config
from evals.harness import EvalResult, arun_eval, run_eval
from evals.suites import Suite, SuitePrompt, builtin_suites, load_suite

__all__ = [
    "Comparison",
    "EvalConfig",
    "EvalResult",
    "Suite",
    "SuitePrompt",
    "arun_eval",
    "builtin_suites",
    "compare_runs",
    "load_config",
    "load_suite",
    "parse_config",
    "run_eval",
]
