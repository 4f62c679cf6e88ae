"""Right-size a network: fewer connections, with the accuracy cost measured.

``dd.compress(experiment, methods=(...))`` trains the experiment once (the baseline and
teacher), then makes compressed copies by each method over a sweep of strengths, fine-tunes
them in the project's one training loop where the method needs it, and measures every one the
same way (``deepdoctor.compress.measure``). ``dd.search_structure`` searches depth, width and
sparsity for the same trade-off with Optuna's NSGA-II.

>>> import deepdoctor as dd                                            # doctest: +SKIP
>>> split = dd.data.load("digits")                                     # doctest: +SKIP
>>> exp = dd.Experiment(lambda: dd.models.mlp(64, 10, depth=2, width=256),
...                     split.train, split.val, steps=300)             # doctest: +SKIP
>>> result = dd.compress(exp, methods=("prune", "quantize"))           # doctest: +SKIP
>>> result.chosen.connections / result.baseline.connections            # doctest: +SKIP
"""

from __future__ import annotations

from .compress import DEFAULT_STRENGTHS, METHODS, compress
from .points import Compression, Point, Skipped
from .search import StructureSearch, search_structure

__all__ = [
    "DEFAULT_STRENGTHS",
    "METHODS",
    "Compression",
    "Point",
    "Skipped",
    "StructureSearch",
    "compress",
    "search_structure",
]
