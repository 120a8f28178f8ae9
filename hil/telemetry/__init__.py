"""Link telemetry: the event log (``events``), metrics for Prometheus (``metrics``) and the
shipped alert rules (``rules/``).

``hil.telemetry.events.emit`` is the one call other modules use to record an event; it does
nothing until a run opens an event log.
"""

from .events import emit

__all__ = ["emit"]
