"""What a user applies after treat: ``changes.py``, ``treated_model.pt``, ``input_scaling.pt``.

``changes.py`` is runnable Python. ``build_treated()`` builds the treated model from the
user's own builder (the CLI TARGET, a ``deepdoctor.models.spec``, or a module-level
function; any other builder is passed in: ``build_treated(lambda: MyNet())``), under the
seed treat used, then applies the kept remedies' model transformations, each a call of the
library function that treat applied (``deepdoctor.remedies...``); so its initial weights are
the ones treat trained from, and ``treated_model.pt`` (the trained state_dict) loads into it.

A data change is kept outside the model: standardize_inputs trained the model on
``(x - mean) / std`` with the training data's statistics, so ``prepare_inputs(x)`` applies
them (saved in ``input_scaling.pt``), and is the identity when no data change was kept. We
chose this over a wrapper module inside the saved model so that ``treated_model.pt`` loads
into the user's own (treated) model class; the scaling is then one visible step of the
user's input pipeline, like a torchvision Normalize. ``Treatment.model`` itself takes raw
inputs (``remedies.data.StandardizedInputs``: the trained model, ``.model``, behind that same
step), so what treat hands back is what its "after" was measured on.
Training-only changes (learning rate, clipping, optimizer, schedule, class weights,
augmentation, early stopping) are listed as comments with the line that makes each.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .experiment import Experiment
from .models import BuilderSpec
from .remedies.base import ModelTransform, TransformedBuilder, python_literal

MODEL_FILE = "treated_model.pt"
CHANGES_FILE = "changes.py"
SCALING_FILE = "input_scaling.pt"


def write_apply_files(
    treated: Experiment, model: nn.Module, directory: Path, headline: str
) -> list[Path]:
    """Write treated_model.pt, changes.py and (when inputs were standardised)
    input_scaling.pt into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / MODEL_FILE, directory / CHANGES_FILE]
    torch.save(model.state_dict(), paths[0])
    paths[1].write_text(changes_source(treated, headline))
    scaling = input_scaling(treated)
    if scaling is not None:
        paths.append(directory / SCALING_FILE)
        torch.save(scaling, paths[-1])
    return paths


def input_scaling(treated: Experiment) -> dict[str, torch.Tensor] | None:
    for change in treated.meta.get("changes", []):
        if "inputs" in change:
            return dict(change["inputs"])
    return None


def changes_source(treated: Experiment, headline: str) -> str:
    """The text of changes.py for ``treated`` (see the module docstring)."""
    imports = {"pathlib", "torch"}
    build_model = _build_model_source(treated, imports)
    transforms = _transform_lines(treated, imports)
    training = [
        f"#   {c['remedy']}: " + c["code"].replace("\n", "\n#     ")
        for c in treated.meta.get("changes", [])
        if "transform" not in c and "inputs" not in c
    ]
    parts = [
        _HEADER.format(headline=headline.replace('"""', "'''")),
        "\n".join(f"import {m}" for m in sorted(imports) if m != "builtins"),
        f"\nHERE = pathlib.Path(__file__).resolve().parent\nSEED = {treated.seed}\n\n",
        build_model,
        _BUILD_TREATED.format(lines="".join(f"    {line}\n" for line in transforms)),
        _prepare_inputs_source(input_scaling(treated) is not None),
        _LOAD_TREATED,
        "\n# Training changes treat kept (make them where you train the model):\n"
        + ("\n".join(training) if training else "#   none")
        + "\n",
        _MAIN,
    ]
    return "\n".join(parts)


def _transform_lines(treated: Experiment, imports: set[str]) -> list[str]:
    builder = treated.model
    transforms: list[ModelTransform] = (
        builder.transforms if isinstance(builder, TransformedBuilder) else []
    )
    changes = {id(c["transform"]): c for c in treated.meta.get("changes", []) if "transform" in c}
    lines = []
    for transform in transforms:
        change = changes.get(id(transform), {"remedy": "a remedy", "code": ""})
        # the remedy's own words for the change, then the call that makes it
        said = [line.removeprefix("# ") for line in change["code"].splitlines()]
        lines += [f"# {change['remedy']}: {said[0]}" if said else f"# {change['remedy']}"]
        lines += [f"#   {line}" for line in said[1:]] + [transform.code(imports)]
    return lines or ["# no change to the model itself"]


def _build_model_source(treated: Experiment, imports: set[str]) -> str:
    """``def build_model()``: the user's untreated builder, named the way it can be found
    again; a builder that cannot be named makes build_model say what to pass instead."""
    builder: Any = treated.model
    root = builder.root if isinstance(builder, TransformedBuilder) else builder
    doc = '    """Your untreated model, from the builder treat was given."""\n'
    if isinstance(root, BuilderSpec):
        imports.add("deepdoctor.models")
        args = "".join(f", {k}={python_literal(v, imports)}" for k, v in root.kwargs.items())
        body = f"    return deepdoctor.models.spec({root.name!r}{args})()\n"
    elif "target" in treated.meta:
        imports.add("deepdoctor.targets")
        body = f"    return deepdoctor.targets.load_target({treated.meta['target']!r}).model()\n"
    elif _importable(root):
        imports.add(root.__module__)
        body = f"    return {root.__module__}.{root.__qualname__}()\n"
    else:
        what = treated.name
        body = (
            "    raise TypeError(\n"
            f"        'treat was given a builder of {what} that cannot be named here (a lambda, '\n"
            "        'a local function or a model instance): pass a function that builds your '\n"
            "        'untreated model, build_treated(lambda: MyNet()) or load_treated(lambda: "
            "MyNet())'\n"
            "    )\n"
        )
    return f"def build_model():\n{doc}{body}\n"


def _importable(fn: Any) -> bool:
    """A module-level function or class that an import finds again (not in __main__)."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in name or "." in name:
        return False
    try:
        return getattr(importlib.import_module(module), name, None) is fn
    except Exception:
        return False


def _prepare_inputs_source(scaled: bool) -> str:
    if not scaled:
        return (
            "def prepare_inputs(x):\n"
            '    """The inputs as the treated model takes them: as they are (treat kept no '
            'data change)."""\n'
            "    return x\n\n"
        )
    return (
        "def prepare_inputs(x):\n"
        '    """The inputs as the treated model takes them: standardize_inputs trained it on\n'
        "    (x - mean) / std with the training data's mean and std, saved in "
        f'{SCALING_FILE}."""\n'
        f'    scaling = torch.load(HERE / "{SCALING_FILE}", weights_only=True)\n'
        '    return (x - scaling["mean"]) / scaling["std"]\n\n'
    )


_HEADER = '''"""What deepdoctor treat changed, as code to run: {headline}

    from changes import load_treated, prepare_inputs
    model = load_treated()                 # the treated model with its trained weights
    prediction = model(prepare_inputs(x))  # x as your untreated model took it

build_treated() builds the treated model from your builder with the seed treat used, so its
initial weights are the ones treat trained from; treated_model.pt holds the trained ones.
Written by deepdoctor; `python changes.py` checks that the weights load.
"""
'''

_BUILD_TREATED = '''def build_treated(build_model=build_model):
    """The treated model, untrained: your model with the kept remedies' changes."""
    torch.manual_seed(SEED)
    model = build_model()
{lines}    return model

'''

_LOAD_TREATED = '''def load_treated(build_model=build_model, path=HERE / "treated_model.pt"):
    """The treated model with the weights treat trained, in eval mode."""
    model = build_treated(build_model)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
'''

_MAIN = """
if __name__ == "__main__":
    loaded = load_treated()
    count = sum(p.numel() for p in loaded.parameters())
    print(f"treated model: {count:,} parameters loaded from {HERE / 'treated_model.pt'}")
"""
