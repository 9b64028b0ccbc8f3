"""XPlane looking at the world over the network: its own health checks of every node
(:mod:`~xplane.probes.health`) and the optional Prometheus metrics source
(:mod:`~xplane.probes.prometheus`). The rules that judge the answers are the core's
(:mod:`xplane.gtm.health_checks`, :mod:`xplane.autoscale.metrics`)."""
