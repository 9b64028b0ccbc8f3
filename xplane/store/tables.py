"""Imports every table module so ``Base.metadata`` knows the whole schema.

Alembic's env and the test fixtures import this one module.
"""

from xplane.store import config_store, events, gate, nodes, pools  # noqa: F401
from xplane.webhooks import deliveries  # noqa: F401
