"""The early-warning layer: what is raised (events.py), where it is kept (the alert log on
:mod:`yujing.service.storage`), how it reaches people (the WatchAlerts stream, the
webhook sink) and the clocks that follow it (acknowledgements, escalation)."""
