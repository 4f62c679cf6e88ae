"""deepdoctor: find out why a deep network trains badly, fix it, and prove the fix."""

from . import data, models
from .findings import KINDS, REMEDIES, Finding
from .probe import Probe
from .trace import Trace
from .training import History, train
from .treat import Treatment, treat

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "REMEDIES",
    "Finding",
    "History",
    "Probe",
    "Trace",
    "Treatment",
    "__version__",
    "data",
    "models",
    "train",
    "treat",
]
