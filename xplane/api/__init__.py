"""The XPlane HTTP API (node registration, heartbeats, operator reads)."""

from xplane.api.app import create_app
from xplane.api.context import NodeNotifier
from xplane.api.settings import ApiSettings

__all__ = ["ApiSettings", "NodeNotifier", "create_app"]
