"""Per-metric analyzers: pure functions of the two cohorts' data and a metric spec.

Each returns a ``MetricResult``; ``coalmine.judge`` alone turns results into a decision.
"""
