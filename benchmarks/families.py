"""Every attention-bearing timm family through the whole pipeline (issue: any timm hybrid).

Discovers the families from ``timm.list_modules()`` by what their captured graphs contain
(:func:`qhyvit_fx.survey.discover_families`), then runs each family's smallest attention-bearing
model (random weights) through capture, prepare (MinMax W8A8, --target ort), calibrate, convert,
export and ``qhyvit check``.  Writes ``results/families.json`` and prints the RESULTS.md table.

    python benchmarks/families.py                 # discover + survey (about 15 min on 2 cores)
    python benchmarks/families.py --models levit_128s edgenext_xx_small

Each model runs in a child process whose resident memory is bounded (``--max-rss-gb``): a model whose
other methods need more (their searches keep every layer's activations of the calibration images, and
some families run at 896 px) is surveyed again with MinMax alone, and those methods are recorded as
stopped for memory, so one family cannot take the whole sweep down.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(l for l in f if l.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                     "avx512_bf16")))


def _child(queue, model: str, family: str, methods) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from qhyvit_fx.survey import survey_model
    queue.put(survey_model(model, family=family, methods=methods).to_dict())


def survey_bounded(model: str, family: str, methods, max_rss_gb: float, poll_s: float = 0.5) -> dict:
    """``survey_model`` in a child process, stopped once its resident memory (with its own children)
    passes ``max_rss_gb``; then MinMax alone, with the other methods recorded as stopped for memory."""
    import psutil
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, model, family, list(methods)))
    proc.start()
    peak = 0.0
    while True:
        try:
            row = queue.get(timeout=poll_s)
            proc.join()
            return row
        except Exception:      # queue.Empty: still running
            pass
        if not proc.is_alive():
            raise RuntimeError(f"survey of {model} exited with code {proc.exitcode} and no result")
        try:
            ps = psutil.Process(proc.pid)
            rss = sum(p.memory_info().rss for p in [ps] + ps.children(recursive=True)) / 2**30
        except psutil.NoSuchProcess:
            continue
        peak = max(peak, rss)
        if peak > max_rss_gb:
            proc.kill()
            proc.join()
            others = [m for m in methods if m != "minmax"]
            if not others:
                raise RuntimeError(f"MinMax survey of {model} passed {max_rss_gb} GB RSS")
            row = survey_bounded(model, family, [], max_rss_gb, poll_s)
            row["methods"] = {m: f"memory: stopped past {max_rss_gb:g} GB RSS (--max-rss-gb)" for m in others}
            row["ok"] = False
            return row


def table(rows) -> str:
    short = {"feature_map_to_tokens": "map->tokens", "tokens_to_feature_map": "tokens->map"}
    head = ("| family | model | px | params M | capture max diff | bridges (L->G / G->L) | rules | integer ops | "
            "integer MACs % | W8A8 SQNR dB | s | status |")
    out = [head, "|" + "---|" * 12]
    for r in rows:
        d = r["bridges_by_direction"]
        failed = {m: v for m, v in r.get("methods", {}).items() if v != "ok"}
        status = "ok" if r["ok"] else (r["error"][:110] or (f"{len(r['float_islands'])} float islands"
                                                      if r["float_islands"] else "")
                                       + "; ".join(f"{m}: {v}" for m, v in failed.items()))
        diff = "-" if r["capture_max_diff"] is None else f"{r['capture_max_diff']:.1e}"
        sq = "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        rules = ", ".join(f"{short.get(k, k)} {v}" for k, v in sorted(r["bridge_rules"].items())) or "-"
        out.append(f"| {r['family']} | {r['model']} | {r['img']} | {r['params_m']} | {diff} | {r['bridges']} "
                   f"({d.get('local->global', 0)} / {d.get('global->local', 0)}) | {rules} | "
                   f"{r['integer_ops']}/{r['compute_ops']} | {r['integer_mac_share']:.1f} | {sq} | "
                   f"{r['seconds']:.0f} | {status} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="survey these models instead of discovering the families")
    ap.add_argument("--families-from", help="take the family list from an earlier results file (skips discovery)")
    ap.add_argument("--methods", nargs="*", default=None,
                    help="also run these methods (default: every registered one) through prepare, calibrate, "
                         "convert and export; --methods with no name: MinMax only")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "families.json"))
    ap.add_argument("--table", metavar="RESULTS_JSON", help="only print the table of an earlier run")
    ap.add_argument("--max-rss-gb", type=float, default=16.0,
                    help="resident-memory bound of one model's survey (default 16)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, survey the rest")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)["rows"]))
        return 0
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from tqdm import tqdm

    from qhyvit_fx.decisions import atomic_write_text
    from qhyvit_fx.methods import METHODS
    from qhyvit_fx.survey import discover_families
    methods = sorted(METHODS) if args.methods is None else args.methods
    if args.models:
        todo = [{"family": "", "model": m} for m in args.models]
    elif args.families_from:
        with open(args.families_from) as f:
            todo = [{"family": r["family"], "model": r["model"]} for r in json.load(f)["rows"]]
    else:
        todo = discover_families()
        print(f"{len(todo)} attention-bearing families", file=sys.stderr)
    payload = {"command": " ".join(["python", "benchmarks/families.py"] + (argv if argv is not None else sys.argv[1:])),
               "methods": methods, "torch": torch.__version__, "cpu_flags": cpu_flags(), "rows": []}
    rows = payload["rows"]
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            rows.extend(json.load(f)["rows"])
        done = {r["model"] for r in rows}
        todo = [t for t in todo if t["model"] not in done]
    for item in tqdm(todo, desc="survey", unit="model"):
        rows.append(survey_bounded(item["model"], item["family"], methods, args.max_rss_gb))
        payload["complete"] = item is todo[-1]
        atomic_write_text(args.out, json.dumps(payload, indent=1))     # after each model: a long run can be read
    print(table(rows))
    ok = sum(r["ok"] for r in rows)
    print(f"\n{ok}/{len(rows)} families green; wrote {args.out}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
