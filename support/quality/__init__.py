"""Decision-quality harness: simulated canaries judged by coalmine and two reference judges.

``simulator`` makes the traffic, ``baselines`` holds the Kayenta-style and Flagger-style
judges, ``runner`` drives one run through all three, ``report`` aggregates and prints.
The command line is ``benchmarks/decision_quality.py``.
"""
