"""Everything that talks to Temporal from outside a workflow.

Two layers share this package (tests/test_import_layers.py says which):

* adapters, which know no workflow: :mod:`~xplane.temporal.client` (connecting,
  signal-with-start), :mod:`~xplane.temporal.security` (TLS and API key from the
  environment) and :mod:`~xplane.temporal.dev` (the local dev server);
* the Temporal edge, which starts, signals and runs workflows by reference and so
  imports them: :mod:`~xplane.temporal.notifier` (the API's registrations and CI
  webhooks as signals), :mod:`~xplane.temporal.cluster` (the namespace's cluster id)
  and :mod:`~xplane.temporal.runtime` (the worker process).
"""
