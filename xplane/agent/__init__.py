"""``xplane agent``: the process on every node that registers it and sends heartbeats.

Pure pieces (no I/O): :mod:`backoff` (retry schedule), :mod:`cpu` (``/proc/stat`` deltas),
:mod:`prom` (Prometheus text -> counter rates), :mod:`probes` (``summarise_rtt``),
:func:`health.respond`. I/O: :mod:`client` (control plane API), :mod:`local_metrics`,
:mod:`state` (``--state-file``), :class:`health.HealthServer`, and :mod:`runner`, the loop.
"""
