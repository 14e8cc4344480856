"""What the benchmarks share; none of the scripts beside this package imports another.

* ``broker``: the private broker a benchmark runs against (``--broker kafka|tansu``) and the
  settings that differ between the two.
* ``daemon``: ``python -m coalmine run`` as a subprocess, its configuration and profile.
* ``topics``: a run's four fresh topics.
* ``workload``: the deployments and metric messages of the latency, recovery and memory runs.
* ``soak_load``: the soak's pipelines and services, deployments opening and closing.
* ``ingest``: the ingest comparison (a bare consumer against the daemon) and its table.
* ``measure``: the daemon's ``/metrics`` read back, histogram quantiles, the JSON figures.
* ``procfs``: memory and CPU of processes and of the machine, from ``/proc``.
"""
