"""Per-metric analyzers: both cohorts' data and a metric spec in, one ``MetricResult`` out.

``base`` is the interface every kind of metric's analyzer implements (``Analyzer``, fed
``CohortData`` and a ``Look``); ``registry`` says which analyzer judges which kind
(``burn_rate.RatioAnalyzer``, ``distribution.DistributionAnalyzer``). ``coalmine.judge``
alone turns the results into a decision.
"""
