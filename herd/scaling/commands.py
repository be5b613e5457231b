"""`herd scaling fit | plan | sweep`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from herd.errors import HerdError

LAWS = ("chinchilla", "isoflop", "mixed-modal", "downstream")


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HerdError(
            f"{name} '{text}': expected comma-separated numbers like 1e15,3e15"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise HerdError(f"{name} '{text}': expected positive numbers")
    return values


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="scaling_command", metavar="ACTION", required=True, parser_class=type(p)
    )
    f = sub.add_parser(
        "fit",
        help="fit a scaling law to runs or a CSV",
        description="Fit a scaling law. RUNS are herd run folders, sweep folders or "
        "CSV files (params,tokens,loss[,modality][,flops]; downstream: "
        "flops,nll,accuracy, or `herd eval --out` files of training checkpoints).",
    )
    f.add_argument("runs", nargs="+", metavar="RUNS")
    f.add_argument(
        "--law",
        choices=LAWS,
        default="chinchilla",
        help="chinchilla: L = E + A/N^a + B/D^b (Hoffmann approach 3); isoflop: "
        "parabolas per budget (approach 2); mixed-modal: per-modality laws and pair "
        "interactions (Aghajanyan et al.); downstream: NLL vs compute, then accuracy",
    )
    f.add_argument("--out", type=Path, default=None, help="folder for fit.json and the plots")
    f.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        help="bootstrap resamples for the 95%% intervals (chinchilla)",
    )
    f.add_argument(
        "--predict",
        default=None,
        metavar="C1,C2",
        help="compute budgets at which to report N_opt and D_opt (chinchilla) or the "
        "predicted accuracy (downstream); default: 10x and 100x the largest run",
    )
    f.add_argument(
        "--chance",
        type=float,
        default=0.25,
        help="downstream: accuracy of guessing (0.25 for four choices)",
    )
    pl = sub.add_parser(
        "plan",
        help="compute-optimal N and D for a budget, as a run config",
        description="Compute-optimal parameters and tokens for --flops, with the "
        "published Chinchilla law or a fitted one, and the nearest herd "
        "architecture as a TOML run config.",
    )
    pl.add_argument("--flops", type=float, required=True, help="training compute budget C")
    pl.add_argument(
        "--law",
        type=Path,
        default=None,
        help="fit.json from `herd scaling fit` (default: Hoffmann et al.'s published "
        "E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)",
    )
    pl.add_argument("--vocab-size", type=int, default=32000, help="vocabulary of the architecture")
    pl.add_argument("--seq-len", type=int, default=2048, help="training context length")
    pl.add_argument("--out", type=Path, default=None, help="write the TOML config here")
    sw = sub.add_parser(
        "sweep",
        help="train an IsoFLOP grid of herd runs and fit it",
        description="Plan and run an IsoFLOP grid (every budget x every size; "
        "resumable: finished runs are skipped), then fit approach 2 and 3.",
    )
    sw.add_argument("--data", required=True, help="token shards from `herd data prepare`")
    sw.add_argument("--flops", required=True, help="compute budgets, e.g. 3e12,1e13")
    sw.add_argument(
        "--sizes",
        required=True,
        help="model sizes in parameters (nearest Llama shapes are used), e.g. 2e5,5e5,1e6",
    )
    sw.add_argument("--out", type=Path, required=True, help="sweep folder (runs/, fits, plots)")
    sw.add_argument("--seq-len", type=int, default=64, help="training context")
    sw.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    sw.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every run")


def run_scaling(args: argparse.Namespace) -> None:
    {"fit": _run_fit, "plan": _run_plan, "sweep": _run_sweep}[args.scaling_command](args)


def _run_fit(args: argparse.Namespace) -> None:
    from herd.scaling.runs import read_points

    required = (
        ("flops", "nll", "accuracy") if args.law == "downstream" else ("params", "tokens", "loss")
    )
    points = read_points(args.runs, required)
    record = fit_and_report(points, args.law, args.out, args.bootstrap, args.predict, args.chance)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fit.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out / 'fit.json'}")


def fit_and_report(
    points,
    law: str,
    out: Path | None,
    bootstrap: int = 100,
    predict: str | None = None,
    chance: float = 0.25,
) -> dict:
    import numpy as np

    from herd.scaling import chinchilla, fits, plots
    from herd.scaling.chinchilla import chinchilla_flops

    def arr(key):
        return [p[key] for p in points]

    if law == "downstream":
        result = fits.fit_downstream(arr("flops"), arr("nll"), arr("accuracy"), chance)
        budgets = _floats(predict, "--predict") if predict else [max(arr("flops")) * 10]
        nll, acc = result.pop("predict")(budgets)
        result["predictions"] = [
            {"flops": c, "nll": float(x), "accuracy": float(a)}
            for c, x, a in zip(budgets, nll, acc, strict=True)
        ]
        for row in result["predictions"]:
            print(
                f"C = {row['flops']:.3g}: predicted NLL {row['nll']:.4f}, accuracy {row['accuracy']:.3f}"
            )
        return {"law": law, **result}
    if law == "mixed-modal":
        result = fits.fit_mixed_modal(points)
        for pair, terms in result["pairs"].items():
            kind = "synergy" if terms["synergy"] else "competition"
            print(
                f"{pair}: C = {terms['C']:+.4f} ({kind}), A = {terms['A']:.4g}, alpha = "
                f"{terms['alpha']:.3f}, B = {terms['B']:.4g}, beta = {terms['beta']:.3f}"
            )
        return {"law": law, **result}
    if law == "isoflop":
        flops = [p.get("flops", chinchilla_flops(p["params"], p["tokens"])) for p in points]
        result = fits.isoflop(arr("params"), arr("tokens"), arr("loss"), flops)
        n, d = result["params_opt"], result["tokens_opt"]
        print(
            f"N_opt = {n['coefficient']:.4g} C^{n['exponent']:.3f}, "
            f"D_opt = {d['coefficient']:.4g} C^{d['exponent']:.3f} "
            f"({len(result['profiles'])} budgets)"
        )
        if out is not None:
            plots.plot_isoflop(points, result, out / "isoflop.png")
        return {"law": law, **result}
    result = chinchilla.fit(arr("params"), arr("tokens"), arr("loss"), bootstrap=bootstrap)
    fitted = result["law"]
    ci = result["intervals"]
    print("L(N, D) = E + A / N^alpha + B / D^beta")
    for key, value in fitted.to_dict().items():
        interval = f"  95% [{ci[key][0]:.4g}, {ci[key][1]:.4g}]" if key in ci else ""
        print(f"  {key:<6}{value:>12.4g}{interval}")
    top = max(chinchilla_flops(p["params"], p["tokens"]) for p in points)
    budgets = _floats(predict, "--predict") if predict else [top * 10, top * 100]
    optima = [chinchilla.optimal_with_intervals(result, c) for c in budgets]
    for o in optima:
        extra = ""
        if "params_ci95" in o:
            extra = (
                f" (95% N [{o['params_ci95'][0]:.3g}, {o['params_ci95'][1]:.3g}], "
                f"D [{o['tokens_ci95'][0]:.3g}, {o['tokens_ci95'][1]:.3g}])"
            )
        print(f"C = {o['flops']:.3g}: N_opt {o['params']:.4g}, D_opt {o['tokens']:.4g}{extra}")
    if out is not None:
        plots.plot_frontier(points, fitted, out / "frontier.png")
        plots.plot_fit(points, fitted, out / "fit.png")
    residual = np.log(fitted.loss(arr("params"), arr("tokens"))) - np.log(arr("loss"))
    return {
        "law": law,
        "fit": fitted.to_dict(),
        "intervals": ci,
        "n_points": len(points),
        "rmse_log": float(np.sqrt(np.mean(residual**2))),
        "optima": optima,
    }


def _run_plan(args: argparse.Namespace) -> None:
    from herd.scaling.chinchilla import ChinchillaLaw, published
    from herd.scaling.plan import plan

    law = published()
    if args.law is not None:
        try:
            record = json.loads(args.law.read_text())
            law = ChinchillaLaw(**record["fit"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise HerdError(
                f"{args.law}: not a chinchilla fit.json from `herd scaling fit`"
            ) from None
    result = plan(law, args.flops, args.vocab_size, args.seq_len)
    a = result["architecture"]
    print(
        f"C = {args.flops:.3g} FLOPs: N_opt = {result['params_opt']:.4g} parameters, "
        f"D_opt = {result['tokens_opt']:.4g} tokens ({result['tokens_per_param']:.1f} tokens "
        f"per parameter)"
    )
    print(
        f"nearest herd architecture: dim {a['dim']}, {a['n_layers']} layers, {a['n_heads']} "
        f"heads ({a['n_kv_heads']} KV), SwiGLU {a['ffn_dim']}: {a['params']:,} parameters, "
        f"{result['tokens_for_architecture']:.4g} tokens for the budget"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result["toml"])
        print(f"wrote {args.out}")
    else:
        print(result["toml"])


def _run_sweep(args: argparse.Namespace) -> None:
    from herd.scaling.runs import sweep

    points = sweep(
        args.data,
        _floats(args.flops, "--flops"),
        _floats(args.sizes, "--sizes"),
        args.out,
        args.seq_len,
        args.batch_size,
        args.lr,
    )
    fits_out = {}
    for law in ("isoflop", "chinchilla"):
        try:
            fits_out[law] = fit_and_report(points, law, args.out, bootstrap=20)
        except HerdError as e:  # a small sweep may support one law and not the other
            print(f"{law}: not fitted ({e})")
    (args.out / "points.json").write_text(json.dumps(points, indent=1) + "\n")
    (args.out / "fit.json").write_text(json.dumps(fits_out, indent=1) + "\n")
    print(f"wrote {args.out / 'fit.json'}")
