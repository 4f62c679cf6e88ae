"""Where treat's trials run, and the disk cache that lets an interrupted treat resume.

A trial is a pure function, ``run_trial(TrialSpec) -> TrialResult``: the experiment, the
remedies to apply to it (with the context they read), a seed and a number of steps in, the
treated run out (its history and metrics; its diagnosis when probed). Nothing else is read:
the same spec gives the same numbers in this process, in a worker process or on a Ray node
(the spec carries this process's torch thread count, so reductions run the same way).

``TrialEngine`` decides where: in-process by default; ``workers=N`` local processes
(``concurrent.futures.ProcessPoolExecutor`` with the forkserver context, spawn where there
is none; they receive each spec by pickling, so the experiment's builder, optimizer factory
and loss must pickle, and a script must call treat under ``if __name__ == "__main__":``);
``ray``: a Ray cluster. The search stays sequential and decides exactly as in-process: it may hand
the engine specs it will ask for soon (``submit``), and asks for each result in its own
order (``result``), so the workers only run ahead.

The cache (``cache=DIR``) stores each finished trial under a SHA-256 key of everything it
depends on (``trial_key``): the deepdoctor and torch versions; the experiment's training
settings (steps, batch size, seed, clipping, schedule and warmup, early stopping,
evaluation interval, class count, name, the augmentation's name); its data (the bytes of
the training and validation tensors; for a DataLoader its dataset's type, its length and
its first batch); the freshly built model (architecture as printed, and its initial weights
under the seed); the optimizer it builds (class and settings); the loss (as printed, and
its tensors); the changes remedies made before (their code lines); the remedies, the
context they read, the seed, the steps, whether the run is probed and when a screen gives
up. It does not see code that none of these show (a forward() edited without any change to
the module's printout or weights): clear the cache after such an edit. A run that was
interrupted is never cached. Entries are pickles, as trusted as the user's own files.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import pickle
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .batch import Inputs
from .experiment import Experiment
from .pretrained import pretrained_layers
from .remedies import Context, Prescription, apply_remedies
from .scoring import Scoring, metrics_of
from .training import History, is_loader, loader_tensors
from .version import __version__

RAY_CONNECT_SECONDS = 3.0  # a Ray address that does not answer within this is unreachable
SLACK = 1e-9  # sums of step fractions carry float rounding (as search.SLACK)

TrialStatus = Literal["ran", "prescription", "error", "too_long"]
NO_PROGRESS = 0.01  # a training loss that fell by less than this share of its start has not
STUCK_STOP = "no_progress"  # History.stopped of a screen that GiveUpWhenStuck stopped


@dataclass(frozen=True)
class GiveUpWhenStuck:
    """Stops a short screen at its first evaluation from step ``at`` on (before its ``end``)
    when the run has shown no learning at all: its validation score is no better than the
    trivial predictor's (by the minimum gain, ``Scoring.beats_trivial`` for a screen) and its
    training loss has not come down (the median of the last quarter of its steps is not
    ``NO_PROGRESS`` below the median of the first quarter).

    A screen asks whether a remedy makes the model learn; one that half way has learned
    neither a lower loss nor a better score than the class frequencies has answered, and its
    second half would spend what another named remedy's screen needs (the 1,000-layer sigmoid
    MLP's He-init and ReLU screens sat at ln 10 = 2.30 and 10% for all their 60 steps). Both
    signs are required: a run learning slowly shows one of them (the stalled transformer's
    raise_lr screen scored 0.349 against a trivial 0.27 half way, its loss still near ln 4),
    and a loss-only rule stopped it. Remedies that slow the start by design (lower_lr,
    lr_warmup) are never given up on (``search``)."""

    at: int
    end: int  # the screen's length: its last evaluation is its result, not a reason to stop
    scoring: Scoring

    def on_eval(self, state: Any, metrics: dict[str, float]) -> None:
        if not self.at <= metrics["step"] < self.end or self.scoring.beats_trivial(
            self.scoring.of(metrics), screen=True
        ):
            return
        losses = np.asarray(state.history.loss, dtype=float)
        quarter = max(1, len(losses) // 4)
        first, last = float(np.median(losses[:quarter])), float(np.median(losses[-quarter:]))
        if math.isfinite(first) and math.isfinite(last) and last > first - NO_PROGRESS * abs(first):
            state.stop = STUCK_STOP


@dataclass
class TrialSpec:
    """One trial: apply ``remedies`` (reading ``context``) to ``experiment``, train from
    ``seed`` for ``steps`` (None: the treated experiment's own), probed when ``probed``.

    ``allowance`` (runs left, one run's steps, runs to keep in reserve) lets the trial refuse
    to train once the remedies have set its length and spent their own steps; ``progress``
    and ``catch`` change only how it is shown and whether errors propagate: none of the three
    is in the cache key.
    """

    experiment: Experiment
    remedies: tuple[str, ...] = ()
    context: Context | None = None
    seed: int | None = None
    steps: int | None = None
    probed: bool = False
    threads: int = field(default_factory=torch.get_num_threads)
    allowance: tuple[float, int, float] | None = None
    progress: bool | str = False
    catch: bool = True  # record an error of the remedies or the run instead of raising it
    give_up: GiveUpWhenStuck | None = None  # a short screen that may stop half way


@dataclass
class TrialResult:
    """What a trial produced. ``candidate`` is the treated experiment (absent when the
    result came from the cache); ``remedy_steps`` the steps the remedies spent while being
    applied (a range test); ``steps`` the run's length once the remedies set it."""

    status: TrialStatus
    history: History | None = None
    diagnosis: Any = None  # a Diagnosis when probed
    candidate: Experiment | None = None
    remedy_steps: int = 0
    steps: int = 0
    error: str | None = None
    # the range tests among remedy_steps, by sweep key: steps (a search charges each once)
    sweeps: dict[str, int] = field(default_factory=dict)
    prescription: str | None = None
    cached: bool = False

    @property
    def metrics(self) -> dict[str, float]:
        return metrics_of(self.history) if self.history is not None else {}


def run_trial(spec: TrialSpec) -> TrialResult:
    """The trial itself: the same spec gives the same result wherever it runs."""
    torch.set_num_threads(spec.threads)
    try:
        candidate = (
            apply_remedies(spec.experiment, spec.remedies, spec.context or _no_context(spec))
            if spec.remedies
            else spec.experiment
        )
    except Prescription as p:
        return TrialResult("prescription", prescription=p.instructions)
    except Exception as exc:  # a remedy that throws is recorded, and the search goes on
        if not spec.catch:
            raise
        return TrialResult("error", error=f"{type(exc).__name__}: {exc}")
    remedy_steps = _remedy_steps(spec.experiment, candidate)
    sweeps = _sweeps(spec.experiment, candidate)
    steps = spec.steps or candidate.steps
    # Refused only when it would not fit even with its range tests already paid for: the
    # search knows which are (``Search.remedy_charge``) and judges the rest itself, so that
    # a trial run ahead in a worker is decided as one run here.
    shared = sum(sweeps.values())
    if spec.allowance is not None and not _fits(spec.allowance, remedy_steps - shared + steps):
        return TrialResult(
            "too_long", candidate=candidate, remedy_steps=remedy_steps, steps=steps, sweeps=sweeps
        )
    try:
        diagnosis, history = _train(candidate, spec, steps)
    except Exception as exc:
        if not spec.catch:
            raise
        error = f"{type(exc).__name__}: {exc}"
        return TrialResult(
            "error", None, None, candidate, remedy_steps, steps, error=error, sweeps=sweeps
        )
    return TrialResult("ran", history, diagnosis, candidate, remedy_steps, steps, sweeps=sweeps)


def _train(candidate: Experiment, spec: TrialSpec, steps: int) -> tuple[Any, History]:
    if spec.probed:
        from .diagnose import diagnose_experiment

        progress = spec.progress
        run = diagnose_experiment(candidate, steps=spec.steps, seed=spec.seed, progress=progress)
        return run, run.history
    give_up = [spec.give_up] if spec.give_up is not None else []
    history = candidate.run(steps=steps, seed=spec.seed, progress=spec.progress, callbacks=give_up)
    return None, history


def _fits(allowance: tuple[float, int, float], steps: int) -> bool:
    left, run_steps, reserve = allowance
    return steps / run_steps + reserve <= left + SLACK


def _new_changes(base: Experiment, candidate: Experiment) -> list[dict[str, Any]]:
    return list(candidate.meta.get("changes", [])[len(base.meta.get("changes", [])) :])


def _remedy_steps(base: Experiment, candidate: Experiment) -> int:
    """Optimizer steps the remedies spent while being applied (each change records its own,
    e.g. a learning-rate range test), beyond the base experiment's changes; a range test
    that two of them read (lower_lr + lr_warmup) counts once."""
    changes = _new_changes(base, candidate)
    own = sum(int(c.get("steps", 0)) for c in changes if not c.get("range_test"))
    return own + sum(_sweeps(base, candidate).values())


def _sweeps(base: Experiment, candidate: Experiment) -> dict[str, int]:
    """The range tests among the remedies' steps, by sweep key (``lr_range.sweep_key``)."""
    changes = _new_changes(base, candidate)
    return {c["range_test"]: int(c.get("steps", 0)) for c in changes if c.get("range_test")}


def _no_context(spec: TrialSpec) -> Context:
    X, _ = loader_tensors(spec.experiment.train, 8)
    return Context(example=X)


# -- the cache key ----------------------------------------------------------------------------


def trial_key(spec: TrialSpec) -> str:
    """SHA-256 of everything the trial depends on (the module docstring lists it)."""
    h = hashlib.sha256()
    for part in _identity(spec):
        h.update(part if isinstance(part, bytes) else repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _identity(spec: TrialSpec) -> Iterator[Any]:
    exp = spec.experiment
    yield ("deepdoctor", __version__, "torch", torch.__version__)
    yield (exp.name, exp.steps, exp.batch_size, exp.seed, exp.clip_grad)
    yield (exp.schedule, exp.warmup_steps)
    yield (exp.early_stopping, exp.eval_every, exp.n_classes, _name(exp.augment))
    yield from _data_identity(exp.train)
    yield from _data_identity(exp.val)
    model = exp.build()
    yield str(model)
    yield pretrained_layers(model, exp.pretrained)
    for key, tensor in model.state_dict().items():
        yield key
        yield _tensor_bytes(tensor)
    yield from _optimizer_identity(exp, model)
    yield repr(exp.loss_fn)
    if isinstance(exp.loss_fn, torch.nn.Module):
        yield from (_tensor_bytes(t) for t in exp.loss_fn.state_dict().values())
    yield [(c.get("remedy"), c.get("code"), c.get("steps")) for c in exp.meta.get("changes", [])]
    yield (tuple(spec.remedies), spec.seed, spec.steps, spec.probed, spec.give_up)
    yield from _context_identity(spec.context)


def _data_identity(data: Any) -> Iterator[Any]:
    if data is None:
        yield None
    elif is_loader(data):
        dataset = getattr(data, "dataset", None)
        size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        yield (type(dataset).__qualname__, size)
        yield from _value_identity(loader_tensors(data, 1))
    else:
        yield from _value_identity(data)


def _optimizer_identity(exp: Experiment, model: torch.nn.Module) -> Iterator[Any]:
    if exp.optimizer is None:
        yield None
        return
    factory: Any = exp.optimizer  # a factory: Experiment refuses an optimizer instance
    opt = factory(model.parameters())
    yield type(opt).__qualname__
    yield [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _context_identity(ctx: Context | None) -> Iterator[Any]:
    if ctx is None:
        yield None
        return
    yield from _value_identity(ctx.example)
    yield (ctx.base_lr, ctx.update_ratio, sorted(ctx.kinds), ctx.class_counts)
    yield ctx.grad_norms.tobytes()


def _value_identity(value: Any) -> Iterator[Any]:
    """Tensors as their bytes, through tuples, lists, dicts and a batch's ``Inputs``."""
    if isinstance(value, torch.Tensor):
        yield _tensor_bytes(value)
    elif isinstance(value, Inputs):
        yield from _value_identity((value.args, value.kwargs))
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _value_identity(v)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            yield k
            yield from _value_identity(value[k])
    else:
        yield repr(value)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return repr((t.dtype, tuple(t.shape))).encode() + t.view(-1).view(torch.uint8).numpy().tobytes()


def _name(fn: Any) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


# -- the cache --------------------------------------------------------------------------------


class TrialCache:
    """Finished trials on disk, one pickle per key, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pkl"

    def get(self, key: str) -> TrialResult | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            result = pickle.loads(path.read_bytes())
        except Exception:  # a truncated or stale entry is a miss: the trial runs again
            return None
        return replace(result, cached=True) if isinstance(result, TrialResult) else None

    def put(self, key: str, result: TrialResult) -> bool:
        """Store ``result`` without its candidate (treat rebuilds that when it needs it);
        False when it cannot be pickled (e.g. a model class defined inside a function)."""
        if result.status == "too_long" or (
            result.history is not None and result.history.stopped == "interrupted"
        ):
            return False
        try:
            data = pickle.dumps(replace(result, candidate=None, cached=False))
        except Exception:
            return False
        tmp = self._path(key).with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self._path(key))
        return True


# -- where trials run -------------------------------------------------------------------------


class TrialEngine:
    """Runs trials in-process, in ``workers`` local processes, or on Ray; caches them."""

    def __init__(
        self,
        experiment: Experiment,
        workers: int | None = None,
        ray: str | bool | None = None,
        cache: str | Path | None = None,
    ) -> None:
        if workers is not None and ray not in (None, False):
            raise ValueError("give treat either workers= (local processes) or ray=, not both")
        self.cache = TrialCache(cache) if cache is not None else None
        self.pool: ProcessPoolExecutor | None = None
        self.ray: Any = None
        self._ray_started = False
        self._pending: dict[str, Any] = {}
        self.ran = 0  # trials this engine ran (not served from the cache)
        self.hits = 0  # trials served from the cache
        if workers is not None and workers > 1:
            check_picklable(experiment, f"workers={workers}")
            self.pool = ProcessPoolExecutor(workers, mp_context=_worker_context())
        elif ray not in (None, False):
            self._connect_ray(ray)

    @property
    def remote(self) -> bool:
        return self.pool is not None or self.ray is not None

    def submit(self, spec: TrialSpec) -> None:
        """Start ``spec`` in the background (a no-op in-process or when cached)."""
        if not self.remote:
            return
        key = trial_key(spec)
        if key in self._pending or (self.cache and self.cache._path(key).is_file()):
            return
        shipped = self._shippable(spec)
        if shipped is not None:
            self._pending[key] = self._start(shipped)

    def result(self, spec: TrialSpec) -> TrialResult:
        key = trial_key(spec) if self.cache is not None or self.remote else None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.hits += 1
                return hit
        result = self._run(spec, key)
        self.ran += 1
        if key is not None and self.cache is not None:
            self.cache.put(key, result)
        return result

    def _run(self, spec: TrialSpec, key: str | None) -> TrialResult:
        pending = self._pending.pop(key, None) if key is not None else None
        if pending is None and self.remote:
            shipped = self._shippable(spec)
            pending = self._start(shipped) if shipped is not None else None
        if pending is None:
            return run_trial(spec)
        if not isinstance(pending, Future):
            result: TrialResult = self.ray.get(pending)
            return result
        try:
            return pending.result()
        except BrokenProcessPool:
            raise RuntimeError(
                "a treat worker process exited before returning its trial: a script that "
                "passes workers= must start treat under `if __name__ == '__main__':` (worker "
                "processes import the script again), and the machine must have the memory "
                "for one more training run per worker"
            ) from None

    def _start(self, spec: TrialSpec) -> Any:
        if self.pool is not None:
            return self.pool.submit(run_trial, spec)
        return self._remote_trial.remote(spec)

    def _shippable(self, spec: TrialSpec) -> TrialSpec | None:
        """The spec as sent to another process (no progress bar there); None when it does
        not pickle (a remedy's closure), and the trial runs here instead, with equal numbers."""
        shipped = replace(spec, progress=False)
        if self.pool is not None:
            try:
                pickle.dumps(shipped)
            except Exception:
                return None
        return shipped

    def _connect_ray(self, ray_arg: str | bool) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError(
                "treat(..., ray=...) needs Ray: pip install 'deepdoctor[ray]'"
            ) from None
        address = ray_arg if isinstance(ray_arg, str) else None
        if address is not None and address not in ("auto", "local"):
            check_reachable(address)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._ray_started = True
        self.ray = ray
        self._remote_trial = ray.remote(num_cpus=1)(run_trial)

    def close(self) -> None:
        for pending in self._pending.values():  # trials run ahead that the search never used
            if isinstance(pending, Future):
                pending.cancel()
            elif self.ray is not None:
                with contextlib.suppress(Exception):
                    self.ray.cancel(pending)
        self._pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.ray is not None and self._ray_started:
            self.ray.shutdown()
        self.ray = None

    def __enter__(self) -> TrialEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_context() -> BaseContext:
    """forkserver where the platform has it: its server imports torch and deepdoctor once
    and forks each worker from there (spawn imports them afresh in every worker)."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["deepdoctor.trials"])
    return ctx


def check_picklable(exp: Experiment, how: str) -> None:
    """Refuse, in one sentence, an experiment that worker processes cannot receive."""
    for what, value in (
        ("model builder", exp.model),
        ("optimizer factory", exp.optimizer),
        ("loss function", exp.loss_fn),
        ("augmentation", exp.augment),
        ("training data", exp.train),
        ("validation data", exp.val),
    ):
        try:
            pickle.dumps(value)
        except Exception as exc:
            name = getattr(value, "__qualname__", type(value).__name__)
            raise ValueError(
                f"treat(..., {how}) sends the experiment to worker processes by pickling, "
                f"and its {what} {name!r} cannot be pickled ({type(exc).__name__}): define it "
                "as a function at module level (a lambda or a function defined inside another "
                "cannot be pickled; functools.partial of a module-level one can), or run "
                "treat without workers"
            ) from None


def check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing answers at a Ray address."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379 or "
            "ray://head:10001); pass ray='auto' to join the cluster this machine is part of"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}): start one with "
            "`ray start --head` or check the address; no trial was run"
        ) from None


@contextlib.contextmanager
def engine_for(
    experiment: Experiment,
    workers: int | None = None,
    ray: str | bool | None = None,
    cache: str | Path | None = None,
) -> Iterator[TrialEngine]:
    engine = TrialEngine(experiment, workers=workers, ray=ray, cache=cache)
    try:
        yield engine
    finally:
        engine.close()


__all__ = [
    "TrialCache",
    "TrialEngine",
    "TrialResult",
    "TrialSpec",
    "check_picklable",
    "check_reachable",
    "engine_for",
    "run_trial",
    "trial_key",
]
