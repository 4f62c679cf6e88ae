"""The command line's TARGET: ``preset:NAME`` or ``path/to/file.py:function``.

A TARGET names an Experiment: a built-in preset (``deepdoctor presets`` lists them), or a
function in the user's own file that takes no arguments and returns an Experiment.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .experiment import Experiment
from .presets import UnknownPreset, get_preset


class TargetError(ValueError):
    """A CLI TARGET that cannot be turned into an Experiment."""


def load_target(target: str) -> Experiment:
    """``preset:NAME`` or ``path/to/file.py:function`` -> the Experiment it names."""
    if not isinstance(target, str) or ":" not in target:
        raise TargetError(
            f"TARGET {target!r} must be preset:NAME (see `deepdoctor presets`) or "
            "path/to/file.py:function"
        )
    head, name = target.rsplit(":", 1)
    if head == "preset":
        try:
            return _named(get_preset(name), target)
        except UnknownPreset as exc:
            raise TargetError(str(exc)) from None
    path = Path(head)
    if not path.is_file():
        raise TargetError(f"TARGET file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"deepdoctor_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {path}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report its error in one line
        raise TargetError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise TargetError(f"{path} has no function {name!r}")
    exp = fn()
    if not isinstance(exp, Experiment):
        raise TargetError(
            f"{path}:{name} returned {type(exp).__name__}, not a deepdoctor.Experiment"
        )
    return _named(exp, f"{path.resolve()}:{name}")


def _named(exp: Experiment, target: str) -> Experiment:
    """The experiment with its TARGET in ``meta``: treat's changes.py rebuilds the model from
    it (an absolute path for a file, so the script runs from any directory)."""
    return exp.replace(meta={**exp.meta, "target": target})
