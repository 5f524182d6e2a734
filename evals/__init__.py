"""The A/B evaluation harness (systems, suites, metrics, paired statistics, reports).

Not built yet: it arrives with its own issue. Runtime code must never import this package.
"""
