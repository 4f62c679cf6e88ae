"""deepdoctor: find out why a deep network trains badly, fix it, and prove the fix."""

from . import data, models
from .checkup import Checkup, checkup

# dd.complexity is the function; the module stays importable as deepdoctor.complexity. Python
# sets a package's attribute to a submodule only when it first loads it, which has happened by
# this line, so a later `import deepdoctor.complexity` leaves the function in place.
from .complexity import measure as complexity
from .compress import Compression, compress, search_structure
from .detectors import detect
from .diagnose import Diagnosis, diagnose, diagnose_experiment
from .experiment import Experiment
from .findings import KINDS, REMEDIES, Finding
from .probe import Probe
from .trace import Trace
from .training import History, train
from .treat import Treatment, treat
from .version import __version__

__all__ = [
    "Checkup",
    "Compression",
    "Diagnosis",
    "Experiment",
    "KINDS",
    "REMEDIES",
    "Finding",
    "History",
    "Probe",
    "Trace",
    "Treatment",
    "__version__",
    "checkup",
    "complexity",
    "compress",
    "data",
    "detect",
    "diagnose",
    "diagnose_experiment",
    "models",
    "search_structure",
    "train",
    "treat",
]
