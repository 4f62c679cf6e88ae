"""Does treat repair the calibration cases? Measured with plain PyTorch, not deepdoctor's loop.

For each calibration case (``tests/cases``): ``dd.treat(experiment, budget=3)``, then three
validation scores, each measured here by code that shares nothing with deepdoctor's
training, probing or scoring:

- treated: the returned ``Treatment.model`` (already trained) evaluated on the validation
  split as the user holds it (raw inputs);
- untreated: the case's own model, optimizer, batch size and steps, trained by the plain loop
  below (own data order, same seed) and evaluated the same way;
- best achievable: the best of the treated, the untreated and a few plain references on the
  standardised, flattened inputs -- sklearn's logistic regression (class-balanced on
  imbalanced data; ridge regression for a regression) and a 2x128 ReLU MLP trained with Adam
  at 1e-3 / 3e-3 / 1e-2 for the case's own number of steps (same compute as the user's run,
  so "what the data allows" is within the case's budget).

The score is balanced accuracy when the training classes are >= 3x imbalanced (most / least
frequent), accuracy on other classification, R^2 for a regression (so that the 0.05
thresholds below mean the same on every case).

- room to improve: best - untreated >= ``ROOM``;
- repaired: treated - untreated >= ``ROOM`` and at least half of the gap closed;
- falsely verified: a remedy kept while treated - untreated < ``REAL_GAIN``, or the treated
  model predicts one class for (almost) every sample;
- healthy untouched: a case labelled healthy on which treat applied nothing;
- every named remedy screened (issue 14, item 4): each remedy that a warning or critical
  finding of the untreated run names, and that treat can apply, got a screen.

``--random-draws N`` puts a random-remedy search beside it (a published study, ICST 2023,
found random fixes about as good as the repair tools): ``dd.treat`` with ``remedies=`` as
many remedy names as treat screens in a round (``MAX_CANDIDATES``), drawn at random seeded
by the case name and draw, so it shares treat's baseline, noise margin, screens and
verification; only the choice of candidates differs. Its returned model is scored by the
same plain code and judged by the same rules.

Each finished case is written to the JSON file (``--out``) as it ends, and a rerun skips the
cases already there, so an interrupted run resumes. One torch thread (the machine is shared).

    PYTHONPATH=src python benchmarks/treat_repairs.py [--cases a,b] [--all] [--out FILE]
        [--random-draws N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.cases, the calibration suite

import deepdoctor as dd  # noqa: E402
import tests.cases.architectures  # noqa: E402, F401  (registers its cases)
import tests.cases.families  # noqa: E402, F401
import tests.cases.synthetic  # noqa: E402, F401
from deepdoctor.remedies import REMEDIES  # noqa: E402
from deepdoctor.search import MAX_CANDIDATES  # noqa: E402
from tests.cases import CASES, Case  # noqa: E402
from tests.cases.verify import _batches as batches  # noqa: E402  (the plain data order)
from tests.cases.verify import _fit as fit  # noqa: E402

BUDGET = 3.0
ROOM = 0.05  # below what the data allows by this much: room to improve; and the least repair
REAL_GAIN = 0.01  # a kept remedy that gains less than a point over the plain untreated run
IMBALANCED = 3.0  # most / least frequent training class: score by balanced accuracy
ONE_CLASS = 0.98  # share of predictions in one class: a constant predictor
REFERENCE_LRS = (1e-3, 3e-3, 1e-2)
REFERENCE_WIDTH = 128
ORIGINAL = 42  # the calibration suite before the later families (last session's figures)
EVAL_CHUNK = 1024
STD_FLOOR = 1e-2  # a feature (pixel) that barely varies in training is not blown up


# -- plain PyTorch: training, evaluation, scores ----------------------------------------------


def plain_train(
    model: nn.Module,
    make_opt: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int,
    seed: int,
    loss_fn: nn.Module,
) -> nn.Module:
    opt = make_opt([p for p in model.parameters() if p.requires_grad])
    model.train()
    for idx in batches(len(X), batch_size, seed, steps):
        loss = loss_fn(fit(model(X[idx]), y[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def predict(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        outs = [model(X[i : i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)]
    return torch.cat([o.logits if hasattr(o, "logits") else o for o in outs])


def score(out: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    if not torch.isfinite(out).all():
        return -math.inf if metric == "r2" else _class_score(out.nan_to_num(), y, metric)
    if metric == "r2":
        out = fit(out, y).reshape(y.shape).double()
        var = float(((y.double() - y.double().mean()) ** 2).mean())
        return 1.0 - float(((out - y.double()) ** 2).mean()) / var
    return _class_score(out, y, metric)


def _class_score(out: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    pred = out.argmax(-1).reshape(-1)
    y = y.reshape(-1)
    if metric == "accuracy":
        return float((pred == y).double().mean())
    recalls = [float((pred[y == c] == c).double().mean()) for c in torch.unique(y)]
    return float(np.mean(recalls))


def one_class_share(out: torch.Tensor, metric: str) -> float:
    if metric == "r2":
        return 0.0
    pred = out.nan_to_num().argmax(-1).reshape(-1)
    return float(torch.bincount(pred).max()) / max(1, pred.numel())


def metric_for(y: torch.Tensor) -> str:
    if y.is_floating_point():
        return "r2"
    counts = torch.bincount(y.reshape(-1)[y.reshape(-1) >= 0])
    counts = counts[counts > 0]
    return "balanced_accuracy" if float(counts.max() / counts.min()) >= IMBALANCED else "accuracy"


def loss_for(y: torch.Tensor, weight: torch.Tensor | None = None) -> nn.Module:
    return nn.MSELoss() if y.is_floating_point() else nn.CrossEntropyLoss(weight=weight)


# -- the three scores -----------------------------------------------------------------------


def untreated(exp: dd.Experiment, metric: str) -> float:
    X, y = exp.train
    Xv, yv = exp.val
    model = exp.build()  # seeded by the experiment
    make_opt = exp.optimizer or (lambda p: torch.optim.SGD(p, lr=0.1))
    loss_fn = exp.loss_fn or loss_for(y)
    plain_train(model, make_opt, X, y, exp.steps, exp.batch_size, exp.seed, loss_fn)
    return score(predict(model, Xv), yv, metric)


def references(exp: dd.Experiment, metric: str) -> dict[str, float]:
    """Plain references on standardised flat inputs: sklearn's linear model and an MLP."""
    X, y = exp.train
    Xv, yv = exp.val
    if not X.is_floating_point():
        return {}  # token ids: no flat reference
    shape, shape_v = X.shape, Xv.shape
    X, Xv = X.reshape(len(X), -1).double(), Xv.reshape(len(Xv), -1).double()
    mean, std = X.mean(0), X.std(0).clamp_min(STD_FLOOR)
    X, Xv = ((X - mean) / std).float(), ((Xv - mean) / std).float()
    out = {"linear": _linear(X, y, Xv, yv, metric)}
    weight = None
    if metric == "balanced_accuracy":
        counts = torch.bincount(y).double().clamp_min(1)
        weight = (counts.sum() / (len(counts) * counts)).float()
    for lr in REFERENCE_LRS[:2]:  # the case's own architecture, standardised inputs, Adam
        own = exp.build()
        make = lambda p, lr=lr: torch.optim.Adam(p, lr=lr)  # noqa: E731
        Xs, Xvs = X.reshape(shape), Xv.reshape(shape_v)
        plain_train(own, make, Xs, y, exp.steps, exp.batch_size, exp.seed, loss_for(y, weight))
        out[f"own_adam_{lr:g}"] = score(predict(own, Xvs), yv, metric)
    n_out = 1 if y.is_floating_point() else int(y.max()) + 1
    for lr in REFERENCE_LRS:
        torch.manual_seed(exp.seed)
        mlp = nn.Sequential(
            nn.Linear(X.shape[1], REFERENCE_WIDTH),
            nn.ReLU(),
            nn.Linear(REFERENCE_WIDTH, REFERENCE_WIDTH),
            nn.ReLU(),
            nn.Linear(REFERENCE_WIDTH, n_out),
        )
        make = lambda p, lr=lr: torch.optim.Adam(p, lr=lr)  # noqa: E731
        plain_train(mlp, make, X, y, exp.steps, 64, exp.seed, loss_for(y, weight))
        out[f"mlp_adam_{lr:g}"] = score(predict(mlp, Xv), yv, metric)
    return out


def _linear(
    X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor, metric: str
) -> float:
    from sklearn.linear_model import LogisticRegression, Ridge

    if metric == "r2":
        model = Ridge(alpha=1.0).fit(X.numpy(), y.numpy())
        pred = torch.as_tensor(model.predict(Xv.numpy()))
        return score(pred, yv, metric)
    balanced = "balanced" if metric == "balanced_accuracy" else None
    model = LogisticRegression(max_iter=2000, class_weight=balanced).fit(X.numpy(), y.numpy())
    proba = torch.as_tensor(model.predict_proba(Xv.numpy()))
    full = torch.zeros(len(Xv), int(max(int(y.max()), int(yv.max()))) + 1, dtype=proba.dtype)
    full[:, torch.as_tensor(model.classes_)] = proba
    return score(full, yv, metric)


# -- one case -------------------------------------------------------------------------------


def measure(case: Case) -> dict[str, Any]:
    started = time.time()
    exp = case.build()
    metric = metric_for(exp.train[1])
    tr = dd.treat(exp, budget=BUDGET)
    Xv, yv = exp.val
    out = predict(tr.model, Xv)
    treated = score(out, yv, metric)
    before = untreated(case.build(), metric)
    refs = references(case.build(), metric)
    finite = [v for v in [treated, before, *refs.values()] if math.isfinite(v)]
    best = max(finite) if finite else -math.inf
    return {
        "case": case.name,
        "healthy": case.healthy,
        "original": CASES.index(case) < ORIGINAL,
        "metric": metric,
        "untreated": before,
        "treated": treated,
        "best": best,
        "references": refs,
        "applied": list(tr.applied),
        "verdict": tr.verdict,
        "tool_scoring": tr.scoring.get("metric"),
        "tool_before": tr.before,
        "tool_after": tr.after,
        "one_class_share": one_class_share(out, metric),
        "compute": tr.compute,
        "trials": [
            {
                "remedies": t.remedies,
                "stage": t.stage,
                "status": t.status,
                "score": t.score,
                "note": t.note or t.reason or t.error,
            }
            for t in tr.trials
        ],
        "findings_before": sorted({f.kind for f in tr.findings_before if f.is_problem}),
        **named_screened(tr),
        "seconds": round(time.time() - started, 1),
    }


def named_screened(tr: Any) -> dict[str, list[str]]:
    """The remedies that the untreated run's warning and critical findings name (treat can
    apply them: a prescription is not counted), and those of them that got a screen."""
    named = {
        r
        for f in tr.findings_before
        if f.severity in ("warning", "critical")
        for r in f.remedies
        if r in REMEDIES
    }
    ran = {r for t in tr.trials if t.stage == "screen" and t.steps for r in t.remedies}
    prescribed = {r for t in tr.trials if t.status == "prescription" for r in t.remedies}
    return {"named": sorted(named - prescribed), "screened": sorted(named & ran)}


def random_draw(case: str, draw: int) -> list[str]:
    """Remedy names drawn at random: the same draw on every machine and every rerun."""
    rng = random.Random(f"{case}/{draw}")
    return rng.sample(sorted(REMEDIES), MAX_CANDIDATES)


def measure_random(case: Case, draw: int) -> dict[str, Any]:
    """treat with a random draw of remedies, its returned model scored as treat's is."""
    exp = case.build()
    metric = metric_for(exp.train[1])
    names = random_draw(case.name, draw)
    tr = dd.treat(exp, budget=BUDGET, remedies=names)
    out = predict(tr.model, exp.val[0])
    return {
        "draw": draw,
        "remedies": names,
        "applied": list(tr.applied),
        "treated": score(out, exp.val[1], metric),
        "one_class_share": one_class_share(out, metric),
        "compute": tr.compute,
    }


def random_results(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each random draw of a case as a result of its own, judged by the same rules."""
    return [{**r, **d} for d in r.get("random", [])]


def judge(r: dict[str, Any]) -> dict[str, bool]:
    """room, repaired, falsely verified, untouched: the figures' definitions (module doc)."""
    u, t, b = r["untreated"], r["treated"], r["best"]
    u_ = u if math.isfinite(u) else min(0.0, b - 1.0)  # a blown-up run: as far as it gets
    gap = b - u_
    kept = bool(r["applied"])
    room = not r["healthy"] and gap >= ROOM
    gain = (t - u_) if math.isfinite(t) else -math.inf
    false = kept and (gain < REAL_GAIN or r["one_class_share"] >= ONE_CLASS)
    return {
        "room": room,
        "repaired": room and gain >= ROOM and gain >= gap / 2,
        "false": false,
        "untouched": r["healthy"] and not kept,
    }


# -- the table ------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| case | metric | untreated | treated | best | applied | verdict | compute | judged |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        j = judge(r)
        flags = ", ".join(k for k, v in j.items() if v) or "-"
        rows.append(
            f"| {r['case']} | {r['metric']} | {r['untreated']:.3f} | {r['treated']:.3f} | "
            f"{r['best']:.3f} | {'+'.join(r['applied']) or '-'} | {r['verdict']} | "
            f"{r['compute']:.2f} | {flags} |"
        )
    return "\n".join(rows)


def totals(results: list[dict[str, Any]], what: str = "cases") -> str:
    js = [judge(r) for r in results]
    room = sum(j["room"] for j in js)
    repaired = sum(j["repaired"] for j in js)
    kept = sum(bool(r["applied"]) for r in results)
    healthy = sum(r["healthy"] for r in results)
    compute = [r["compute"] for r in results]
    named = [r for r in results if r.get("named")]
    every = sum(set(r["named"]) <= set(r["screened"]) for r in named)
    share = sum(len(r["screened"]) for r in named) / max(1, sum(len(r["named"]) for r in named))
    screened = (
        f"; every named remedy screened on {every}/{len(named)} cases ({share:.0%} of the names)"
        if named and "random" not in what
        else ""
    )
    return (
        f"{what} {len(results)}: repaired {repaired}/{room} with room "
        f"({repaired / max(1, room):.0%}); falsely verified {sum(j['false'] for j in js)}/{kept} "
        f"kept; healthy untouched {sum(j['untouched'] for j in js)}/{healthy}; compute mean "
        f"{np.mean(compute):.2f} max {np.max(compute):.2f} untreated runs{screened}"
        if results
        else f"{what}: none"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names (default: the 42 original)")
    parser.add_argument("--all", action="store_true", help="every case, the later families too")
    parser.add_argument("--out", default="/tmp/deepdoctor-treat-repairs.json")
    parser.add_argument("--report", action="store_true", help="print the table of --out only")
    parser.add_argument(
        "--random-draws", type=int, default=0, help="random-remedy searches per case beside"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(args.out)
    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    chosen = CASES if args.all else CASES[:ORIGINAL]
    if args.cases:
        names = args.cases.split(",")
        unknown = sorted(set(names) - {c.name for c in CASES})
        if unknown:
            sys.exit(f"unknown cases {unknown}: see python -m tests.cases.sweep --help")
        chosen = [c for c in CASES if c.name in names]
    for case in [] if args.report else chosen:
        try:
            if case.name not in done:
                done[case.name] = measure(case)
                _print(done[case.name], "treat")
            r = done[case.name]
            for draw in range(len(r.get("random", [])), args.random_draws):
                r.setdefault("random", []).append(measure_random(case, draw))
                _print({**r, **r["random"][-1]}, f"random draw {draw}")
        except Exception:  # noqa: BLE001  (recorded; the run goes on)
            print(f"{case.name}: failed\n{traceback.format_exc()}", file=sys.stderr)
            continue
        finally:
            path.write_text(json.dumps(done, indent=1, default=str))
    results = [done[c.name] for c in chosen if c.name in done]
    print(table(results))
    print(totals(results))
    # The detection thresholds were chosen on the tuning families (tests/cases): treat's
    # figures on the families held out from that, apart.
    held_out = {c.name for c in chosen if c.held_out}
    print(totals([r for r in results if r["case"] not in held_out], "tuning families, cases"))
    print(totals([r for r in results if r["case"] in held_out], "held-out families, cases"))
    drawn = [d for r in results for d in random_results(r)]
    if drawn:
        print(totals(drawn, "random-remedy searches"))


def _print(r: dict[str, Any], search: str) -> None:
    print(
        f"{r['case']} ({search}): {r['untreated']:.3f} -> {r['treated']:.3f} "
        f"(best {r['best']:.3f}) {'+'.join(r['applied']) or '-'} {judge(r)} "
        f"{r.get('seconds', '')}",
        flush=True,
    )


if __name__ == "__main__":
    main()
