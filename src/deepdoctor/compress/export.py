"""Save a compressed model with the code that rebuilds it.

A pruned, factorised or shrunk model no longer fits the experiment's builder, so the saved
``rebuild_chosen.py`` writes the architecture out: ``nn.Sequential`` trees of torch.nn
layers, each written as its constructor (torch's repr of a layer is one). A quantised model
is rebuilt in float, quantised by the same torchao configuration, then loaded. The code is
run once before it is written and its model must give the same outputs as the original;
where that is not possible (a custom module), the whole module is pickled instead and the
script loads the pickle.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "chosen_model.pt"
PICKLE_FILE = "chosen_model_module.pt"
SCRIPT_FILE = "rebuild_chosen.py"


def layer_code(module: nn.Module, indent: str = "    ") -> str:
    """Python that constructs ``module`` (ValueError where it cannot be written out)."""
    if type(module) is nn.Sequential:
        inner = indent + "    "
        items = "".join(
            f"{inner}({name!r}, {layer_code(child, inner)}),\n"
            for name, child in module.named_children()
        )
        return f"nn.Sequential(OrderedDict([\n{items}{indent}]))"
    if not type(module).__module__.startswith("torch.nn.modules") or list(module.children()):
        raise ValueError(f"{type(module).__name__} is not a plain torch.nn layer")
    if type(module) is nn.Linear:  # torchao rewrites a quantised Linear's repr: write it out
        bias = module.bias is not None
        return f"nn.Linear({module.in_features}, {module.out_features}, bias={bias})"
    code = f"nn.{module!r}"
    try:
        ast.parse(code, mode="eval")
    except SyntaxError:
        raise ValueError(f"the repr of {type(module).__name__} is not its constructor") from None
    return code


def _script(point: Any, arch: str | None) -> str:
    head = (
        f'"""Rebuild the model deepdoctor compress chose: {point.method}, {point.setting}.\n\n'
        f"{point.connections:,} connections, {point.parameters:,} parameters, "
        f"validation accuracy {point.val_accuracy:.4f}.\n"
        '"""\n\nfrom collections import OrderedDict\nfrom pathlib import Path\n\n'
        "import torch\nfrom torch import nn\n\nHERE = Path(__file__).parent\n\n\n"
    )
    if arch is None:
        return head + (
            "def build() -> nn.Module:\n"
            f"    return torch.load(HERE / {PICKLE_FILE!r}, weights_only=False)\n"
        )
    lines = [f"def build() -> nn.Module:\n    model = {arch}\n"]
    config = point.details.get("config") if point.method == "quantize" else None
    if config:
        lines.append(
            f"    import torchao.quantization as q\n\n    q.quantize_(model, q.{config}())\n"
        )
    lines.append(
        f"    state = torch.load(HERE / {STATE_FILE!r}, weights_only={not config})\n"
        f"    model.load_state_dict(state{', assign=True' if config else ''})\n"
        "    return model.eval()\n"
    )
    return head + "".join(lines)


def _unbuildable(point: Any, reason: str) -> str:
    return (
        f'"""The model deepdoctor compress chose ({point.method}, {point.setting}) could not be '
        f"written out as code nor pickled ({reason}); its state_dict is in {STATE_FILE}: load "
        'it into the same architecture."""\n'
    )


def _rebuilds(script: str, directory: Path, point: Any) -> bool:
    """Run ``script`` and check its model's outputs match the point's model."""
    namespace: dict[str, object] = {"__file__": str(directory / SCRIPT_FILE)}
    try:
        exec(compile(script, SCRIPT_FILE, "exec"), namespace)  # noqa: S102 -- our own code
        rebuilt = namespace["build"]()  # type: ignore[operator]
        first = next(iter(point.model.parameters()))
        shape = _input_shape(point.model)
        if shape is None:
            return True
        x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0)).to(first.dtype)
        with torch.no_grad():
            return bool(torch.allclose(rebuilt(x), point.model.eval()(x), atol=1e-5))
    except Exception:  # any failure means: use the pickle instead
        return False


def _input_shape(model: nn.Module) -> tuple[int, ...] | None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, nn.modules.conv._ConvNd):
            return None  # the spatial size is not in the layer; trust the state_dict load
    return None


def save_model(point: Any, directory: Path) -> list[Path]:
    """Write the point's state_dict and ``rebuild_chosen.py`` into ``directory``."""
    torch.save(point.model.state_dict(), directory / STATE_FILE)
    try:
        arch: str | None = layer_code(point.model)
    except ValueError:
        arch = None
    script = _script(point, arch)
    if arch is not None and not _rebuilds(script, directory, point):
        arch, script = None, _script(point, None)
    written = [directory / STATE_FILE, directory / SCRIPT_FILE]
    if arch is None:
        try:
            torch.save(point.model, directory / PICKLE_FILE)
            written.append(directory / PICKLE_FILE)
        except Exception as exc:  # pickling fails in many ways (lambdas, tensor subclasses)
            script = _unbuildable(point, f"{type(exc).__name__}: {exc}")
    (directory / SCRIPT_FILE).write_text(script)
    return written
