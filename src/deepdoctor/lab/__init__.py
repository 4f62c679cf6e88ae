"""The lab: experiments that reproduce the classic results about why deep nets are hard to train.

Each experiment is a module here defining ``LAB`` (a ``Lab``: the claim, the sweep, one run,
the conclusion). ``run_lab(name)`` runs the sweep, appending each finished configuration's
row to ``OUT/NAME.csv`` at once, skips the rows already there (so an interrupted sweep
resumes), and writes ``report.html`` and ``results.json`` beside it.

>>> from deepdoctor.lab import LABS
>>> sorted(LABS)[:3]
['activations', 'capacity', 'clipping']
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import check_int
from ..progress import progress_bar
from ._base import Conclusion, Lab, Row, Settings, SweepLog
from .report import write_lab_report

MODULES = (
    "layer_speed",
    "depth",
    "initialization",
    "edge_of_chaos",
    "activations",
    "clipping",
    "optimizers",
    "regularization",
    "capacity",
    "transformer_depth",
    "mnist1d_baselines",
    "growth",
    "compression",
)


def _registry() -> dict[str, Lab]:
    import importlib

    labs = [importlib.import_module(f"{__name__}.{m}").LAB for m in MODULES]
    return {lab.name: lab for lab in labs}


LABS: dict[str, Lab] = _registry()


@dataclass
class LabRun:
    """What ``run_lab`` did: the conclusion, the rows, and where it wrote them."""

    lab: Lab
    settings: Settings
    conclusion: Conclusion
    rows: list[Row]
    ran: int  # configurations run now
    resumed: int  # configurations read back from the CSV
    out: Path
    seconds: float

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    @property
    def csv(self) -> Path:
        return self.out / f"{self.lab.name}.csv"


def get_lab(name: str) -> Lab:
    if name not in LABS:
        raise ValueError(
            f"unknown lab experiment {name!r}; available: {', '.join(LABS)} "
            "(see `deepdoctor lab list`)"
        )
    return LABS[name]


def default_out(name: str, quick: bool) -> Path:
    return Path("lab-results") / (f"{name}-quick" if quick else name)


def run_lab(
    name: str | Lab,
    quick: bool = False,
    out: str | Path | None = None,
    seed: int = 0,
    data_root: str | None = None,
    progress: bool = True,
) -> LabRun:
    """Run (or resume) one experiment's sweep and write its report into ``out``.

    quick: the seconds-long variant the tests run; otherwise the full one (minutes).
    out: directory for ``NAME.csv``, ``report.html`` and ``results.json`` (default
        ``lab-results/NAME`` or ``lab-results/NAME-quick``). Rows already in its CSV for the
        same variant and seed are not run again.
    data_root: a directory with local MNIST files, for the experiments that can use it.
    """
    lab = name if isinstance(name, Lab) else get_lab(name)
    seed = check_int("seed", seed, minimum=0)
    if data_root is not None and not Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root} is not a directory")
    settings = Settings(quick=quick, seed=seed, data_root=data_root)
    out = Path(out) if out is not None else default_out(lab.name, quick)
    out.mkdir(parents=True, exist_ok=True)
    log = SweepLog(out / f"{lab.name}.csv")
    configs = [{"variant": settings.variant, "seed": seed, **c} for c in lab.configs(settings)]
    todo = [c for c in configs if not log.done(c)]
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # The lab's nets are tiny: per-op overhead dominates and a second intra-op thread only
    # adds synchronisation, which on a shared 2-core machine made runs ten times slower.
    torch.set_num_threads(1)
    try:
        with progress_bar(len(configs), lab.name, enabled=progress) as bar:
            bar.advance(len(configs) - len(todo))
            for config in todo:
                row = lab.run_one(dict(config), settings)
                log.append({**config, **row})
                bar.advance()
    finally:
        torch.set_num_threads(threads)
    rows = [r for c in configs if (r := log.find(c)) is not None]
    conclusion = lab.conclude(rows, settings)
    ran, resumed = len(todo), len(configs) - len(todo)
    write_lab_report(out, lab, settings, conclusion, rows, ran, resumed)
    return LabRun(lab, settings, conclusion, rows, ran, resumed, out, time.perf_counter() - start)


__all__ = ["LABS", "Conclusion", "Lab", "LabRun", "Settings", "get_lab", "run_lab"]
