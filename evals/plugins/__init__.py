"""Metric plugins: each module here defines one metric class decorated with
`evals.metrics.register_metric`; `evals.metrics` imports them all, so adding a metric is one
file in this folder (it is then valid in `[metrics] enabled`, scored, analysed and reported)."""
