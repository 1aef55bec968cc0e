"""The ARI Stasis controller: routes calls that enter Stasis() through the routing engine and drives
their channels; answered calls become mixing-bridge conferences."""

from ari_app.controller.call import LiveCall
from ari_app.controller.conference import Conference
from ari_app.controller.controller import Controller
from ari_app.controller.metrics import Metrics
from ari_app.controller.presence import Presence
from ari_app.controller.service import AriSettings, ControllerRef, run_controller

__all__ = [
    "AriSettings",
    "Conference",
    "Controller",
    "ControllerRef",
    "LiveCall",
    "Metrics",
    "Presence",
    "run_controller",
]
