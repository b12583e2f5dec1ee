"""The ``qhyvit`` command line: inspect, quantize, eval, export, check."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional

from .backends import BACKENDS, MODES
from .check import RUNTIMES
from .state import quant_state

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL = "mobilevit_xxs"
DEFAULT_WEIGHTS = os.path.join(ASSETS, "mobilevit_xxs-cifar10.pth")
DEFAULT_CALIB = os.path.join(ASSETS, "images", "calib")
DEFAULT_EVAL = os.path.join(ASSETS, "images", "eval")


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def _user_errors():
    from .api import PreparedError
    from .capture import CaptureError
    from .config import ConfigError
    from .data import DataError
    from .decisions import DecisionsError
    from .export import ExportError
    from .methods.minmax import CalibrationError
    from .models import ModelError
    return (UsageError, ModelError, DataError, ConfigError, CaptureError, DecisionsError, CalibrationError,
            ExportError, PreparedError)


# ---- output folders: all or nothing --------------------------------------------------------

@contextmanager
def atomic_dir(out: str, force: bool):
    """Yield a temp folder next to ``out``; on success it replaces ``out``.
    On any error or Ctrl-C nothing is left behind."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    if os.path.exists(out) and not force:
        raise UsageError(f"output '{out}' already exists; pass --force to overwrite it or choose another --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"output '{out}' exists and is a file; choose a folder path for --out")
    if not os.path.isdir(parent):
        raise UsageError(f"the folder '{parent}' for --out does not exist; create it first")
    try:
        tmp = tempfile.mkdtemp(prefix=".qhyvit-tmp-", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write in '{parent}' ({e.strerror}); choose a writable --out") from e
    try:
        yield tmp
        from .decisions import _umask
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=".qhyvit-old-", dir=parent)
            os.replace(out, os.path.join(old, "x"))
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_out_file(path: str, force: bool) -> None:
    path = os.path.abspath(path)
    if os.path.exists(path) and not force:
        raise UsageError(f"'{path}' already exists; pass --force to overwrite it or choose another path")
    if not os.path.isdir(os.path.dirname(path)):
        raise UsageError(f"the folder of '{path}' does not exist; create it first")
    if not os.access(os.path.dirname(path), os.W_OK):
        raise UsageError(f"cannot write in '{os.path.dirname(path)}'; choose a writable path")


# ---- shared pipeline -----------------------------------------------------------------------

@dataclass
class Job:
    name: str
    weights: Optional[str]
    pretrained: bool
    calib: Optional[str]
    eval: Optional[str]
    embedded: bool


def _resolve_job(args, need_calib: bool = True) -> Job:
    name = getattr(args, "model", None)
    weights = getattr(args, "weights", None)
    pretrained = getattr(args, "pretrained", False)
    calib = getattr(args, "calib", None)
    ev = getattr(args, "data", None) or getattr(args, "eval", None)
    embedded = False
    if name is None or (name == DEFAULT_MODEL and not weights and not pretrained):
        name = name or DEFAULT_MODEL
        if not weights and not pretrained:
            weights, embedded = DEFAULT_WEIGHTS, True
            calib = calib or DEFAULT_CALIB
            ev = ev or (DEFAULT_EVAL if not getattr(args, "no_eval", False) else None)
    if not weights and not pretrained:
        raise UsageError(f"no weights for '{name}': pass --weights FILE (a state_dict or a qhyvit checkpoint) "
                         "or --pretrained (downloads through timm)")
    if need_calib and not calib:
        raise UsageError("pass --calib DIR: a folder of calibration images (train split, never test)")
    return Job(name, weights, pretrained, calib, ev, embedded)


def _load(job: Job, img: Optional[int] = None):
    from .data import Preprocess
    from .models import create_model
    lm = create_model(job.name, weights=job.weights, pretrained=job.pretrained)
    pre = Preprocess.from_meta(lm.meta) or Preprocess.from_model(lm.model, img)
    if img and img != pre.img_size:
        pre.img_size = img
    return lm, pre


def _config(args, w_bits: int, a_bits: int):
    from .config import QConfig
    return QConfig(w_bits=w_bits, a_bits=a_bits, method=args.method, calib_images=args.calib_images,
                   seed=args.seed, kernel=getattr(args, "kernel", "auto"), device=getattr(args, "device", "cpu"), progress=True,
                   target=args.target, a_scheme=args.act_scheme, mode=getattr(args, "mode", "partial"),
                   method_params=_method_params(args, args.method))


_PARAM_DEST = "method_param_"


def _add_method_params(p) -> None:
    """One flag per field of every method's params class (``--act-channel-beta`` ...), in one group;
    a flag left out keeps the method's own default."""
    import argparse
    import dataclasses

    from .methods import METHODS
    owners, first = {}, {}
    for name, method in METHODS.items():
        types = method.params_class.field_types()
        for f in dataclasses.fields(method.params_class):
            owners.setdefault(f.name, []).append(name)
            first.setdefault(f.name, (f, types[f.name]))
    g = p.add_argument_group("method parameters", "each applies to the methods named in brackets")
    for name, (f, typ) in first.items():
        text = f.metadata.get("help", "").replace("%", "%%")
        kw = dict(dest=_PARAM_DEST + name, default=None, metavar=name.upper(),
                  help=f"[{', '.join(owners[name])}] {text} (default {f.default})")
        if typ is bool:
            kw.pop("metavar")
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = typ
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        g.add_argument("--" + name.replace("_", "-"), **kw)


def _method_params(args, method: str) -> dict:
    """The method-parameter flags given on the command line, checked against ``method``'s params."""
    from .methods import get_method, params_fields
    given = {k[len(_PARAM_DEST):]: v for k, v in vars(args).items() if k.startswith(_PARAM_DEST) and v is not None}
    own = params_fields(get_method(method).params_class)
    foreign = sorted(set(given) - own)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise UsageError(f"{flags} {'is not a parameter' if len(foreign) == 1 else 'are not parameters'} of "
                         f"method '{method}'; drop {'it' if len(foreign) == 1 else 'them'} or choose a method "
                         "that has it (see `qhyvit quantize --help`, group 'method parameters')")
    return given


def _calibrated(job: Job, args, lm, pre, w_bits, a_bits, log):
    from . import api
    from .data import open_folder, stack_images
    cfg = _config(args, w_bits, a_bits)
    ds = open_folder(job.calib, pre, limit=args.calib_images, seed=args.seed, skip_bad=args.skip_bad_images,
                     exact=True)
    calib = stack_images(ds)
    log(f"calibration: {len(ds)} images from {job.calib} (seed {args.seed})")
    t0 = time.time()
    pm = api.prepare(lm.model, calib[:1], cfg)
    api.calibrate(pm, calib)
    qm = api.convert(pm)
    quant_state(pm).calib_images = calib
    return cfg, pm, qm, time.time() - t0


def _eval_models(models, folder, pre, classes, limit, seed, skip_bad, progress=True):
    from .data import loader, open_folder
    from .evaluate import compare
    ds = open_folder(folder, pre, classes=classes, limit=limit, seed=seed, skip_bad=skip_bad)
    if all(y < 0 for _, y in ds.samples):
        raise UsageError(f"'{folder}' has no labels (use an ImageFolder layout or ImageNet synset file names)")
    return compare(models, loader(ds, 100), "float", progress=progress, total=(len(ds) + 99) // 100), len(ds)


def _ort_opt(cfg) -> bool:
    """Graph optimisations (integer kernels) only for deployment graphs: with --target fakequant
    activations may be per-channel, which onnxruntime's fused MatMulIntegerToFloat rejects at run
    time; unoptimised, onnxruntime runs the QDQ graph as float ops (the fake-quant numbers)."""
    return cfg.backend.integer_kernels


def _runtime_label(cfg) -> str:
    if cfg.backend.eval_runtime == "openvino":
        return "(openvino)"
    return "(onnxruntime)" if _ort_opt(cfg) else "(onnxruntime, QDQ in float)"


def _runtime_callable(path: str, cfg):
    """The exported file run by the runtime its target is measured through."""
    if cfg.backend.eval_runtime == "openvino":
        from .check_openvino import openvino_callable
        return openvino_callable(path, precision="f32")
    from .export import ort_callable
    return ort_callable(path, optimize=_ort_opt(cfg))


def _print_metrics(res, out=None, checks=None):
    """The accuracy table: top-1, its drop from the first row (FP32), agreement with FP32, KL, logits
    SQNR and, for the rows that are an exported ONNX, how many conv/gemm/matmul run in integer kernels."""
    out = out or sys.stdout
    checks = checks or {}
    w = max(22, max(len(m.name) for m in res.values()))
    ref = next(iter(res.values()))
    print(f"  {'model':<{w}} {'top-1':>7} {'drop':>6} {'agree':>7} {'KL':>9} {'SQNR dB':>8}"
          + ("  integer conv/gemm/matmul" if checks else ""), file=out)
    for k, m in res.items():
        c = checks.get(k)
        cov = f"  {c.integer_count}/{len(c.ops)} ({c.mac_share:.0f} % of MACs)" if c is not None else ""
        print(f"  {m.name:<{w}} {m.top1:7.2f} {ref.top1 - m.top1:+6.2f} {m.agreement:7.2f} {m.kl:9.5f} "
              f"{m.sqnr_db:8.2f}{cov}", file=out)


def _kernel_flags() -> str:
    from .target import cpu_flags, detect_kernel
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
    flags = " ".join(f for f in keep if f in cpu_flags())
    return f"{detect_kernel()} kernels" + (f"; flags {flags}" if flags else "")


def _compare_methods(args) -> List[str]:
    """Methods shipped beside the chosen one for comparison (``--compare``; default MinMax); an
    unknown name fails here, before any work."""
    from .methods import get_method
    names = ["minmax"] if args.compare is None else args.compare
    for name in names:
        get_method(name)
    return [m for m in dict.fromkeys(names) if m != args.method]


def _shipped_baseline(method: str, cfg, lm, pm, folder: str, weight_format: str):
    """``method`` with its own default parameters, on the same calibration images, config and target,
    exported and loaded in onnxruntime: (row name, callable, integer-kernel check)."""
    import dataclasses

    from . import api
    from .check import check_runtime
    from .export import export_onnx
    calib = quant_state(pm).calib_images
    ocfg = dataclasses.replace(cfg, method=method, method_params=None, progress=False)
    opm = api.prepare(lm.model, calib[:1], ocfg)
    api.calibrate(opm, calib)
    path = os.path.join(folder, f"{method}.onnx")
    export_onnx(api.convert(opm), path, weight_format=weight_format)
    bits = f"w{cfg.w_bits}a{cfg.a_bits}"
    return f"{method} {bits} {_runtime_label(cfg)}", _runtime_callable(path, cfg), \
        check_runtime(path, cfg.backend.check_runtime)


# ---- commands ------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    import copy

    import torch

    from .api import layer_graph
    from .decisions import Decisions
    from .graphinfo import format_summary, graph_summary
    from .models import create_model, default_img_size
    from .plots import draw_bridges
    for p in (args.json, args.draw):
        if p:
            _check_out_file(p, True)
    if args.draw and os.path.splitext(args.draw)[1].lower() not in (".png", ".svg"):
        raise UsageError(f"--draw '{args.draw}' must end in .png or .svg")
    lm = create_model(args.model, weights=args.weights)
    img = args.img or int(lm.meta.get("img_size", 0)) or default_img_size(lm.model)
    gm = layer_graph(copy.deepcopy(lm.model), torch.zeros(1, 3, img, img))
    dec = Decisions.load(args.decisions) if args.decisions else None
    s = graph_summary(gm, args.model, img, decisions=dec)
    print(format_summary(s))
    if args.json:
        from .decisions import atomic_write_text
        atomic_write_text(args.json, json.dumps(s, indent=1))
        print(f"\nwrote {args.json}")
    if args.draw:
        draw_bridges(gm, args.draw, title=f"{args.model} bridge blocks", decisions=dec)
        print(f"wrote {args.draw}")
    return 0



def cmd_quantize(args) -> int:
    from .config import parse_bits
    from .export import export_onnx
    from .report import write_quantize_report
    w_bits, a_bits = parse_bits(args.bits)
    job = _resolve_job(args)
    compare = _compare_methods(args) if job.eval and not args.no_eval else []
    log = print
    if job.embedded:
        log(f"using the bundled default: {DEFAULT_MODEL} trained on CIFAR-10 ({os.path.basename(DEFAULT_WEIGHTS)}), "
            "bundled calibration/eval images")
    with atomic_dir(args.out, args.force) as tmp:
        lm, pre = _load(job, args.img)
        cfg, pm, qm, secs = _calibrated(job, args, lm, pre, w_bits, a_bits, log)
        dec = quant_state(qm).decisions
        dec.meta.update({"model": job.name, "weights": os.path.basename(job.weights) if job.weights else "pretrained",
                         "img_size": pre.img_size})
        dec.save(os.path.join(tmp, "decisions.json"))
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(qm, onnx_path, weight_format=args.weight_format)
        log(f"quantized {len(dec.layers)} layers with {cfg.method} at {args.bits} in {secs:.1f} s"
            + (f" (weights limited to {cfg.weight_code_bits} bits for this CPU's integer kernels)"
               if cfg.weight_code_bits else ""))
        from .check import check_runtime
        check = check_runtime(onnx_path, cfg.backend.check_runtime)
        metrics = None
        if job.eval and not args.no_eval:
            shipped = f"{cfg.method} {args.bits} {_runtime_label(cfg)}"
            models = {"float": lm.model, shipped: _runtime_callable(onnx_path, cfg),
                      f"{cfg.method} {args.bits} (torch)": qm}
            checks = {shipped: check}
            with tempfile.TemporaryDirectory(prefix="qhyvit-compare-") as cmp_dir:
                for other in compare:
                    name, run, other_check = _shipped_baseline(other, cfg, lm, pm, cmp_dir, args.weight_format)
                    models[name], checks[name] = run, other_check
                res, n = _eval_models(models, job.eval, pre, lm.meta.get("classes"), args.eval_images, args.seed,
                                      args.skip_bad_images)
            log(f"accuracy on {n} images from {job.eval} (CPU: {_kernel_flags()}):")
            _print_metrics(res, checks=checks)
            metrics = {k: v.to_dict() for k, v in res.items()}
            for k, c in checks.items():
                metrics[k]["integer_ops"], metrics[k]["compute_ops"] = c.integer_count, len(c.ops)
        write_quantize_report(tmp, job=job, config=cfg, prepared=pm, converted=qm, metrics=metrics,
                              seconds=secs, argv=sys.argv, images=quant_state(pm).calib_images,
                              check=check)
    log(f"wrote {os.path.abspath(args.out)}/: model.onnx, decisions.json, report.md (+ figures)")
    return 0


def cmd_eval(args) -> int:
    from .config import parse_bits
    from .export import export_onnx
    w_bits, a_bits = parse_bits(args.bits)
    job = _resolve_job(args)
    if not job.eval:
        raise UsageError("pass --data DIR: a labelled folder of evaluation images (test split)")
    lm, pre = _load(job, args.img)
    cfg, pm, qm, secs = _calibrated(job, args, lm, pre, w_bits, a_bits, print)
    print(f"calibrated with {cfg.method} in {secs:.1f} s")
    models = {"float": lm.model, f"{cfg.method} {args.bits}": qm}
    tmpdir = None
    if args.onnx:
        tmpdir = tempfile.mkdtemp(prefix="qhyvit-eval-")
        path = os.path.join(tmpdir, "model.onnx")
        export_onnx(qm, path, weight_format=args.weight_format)
        models[f"{cfg.method} {args.bits} {_runtime_label(cfg)}"] = _runtime_callable(path, cfg)
    try:
        res, n = _eval_models(models, job.eval, pre, lm.meta.get("classes"), args.eval_images, args.seed,
                              args.skip_bad_images)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    print(f"{job.name}: {n} images from {job.eval}")
    _print_metrics(res)
    if args.json:
        from .decisions import atomic_write_text
        atomic_write_text(args.json, json.dumps({k: v.to_dict() for k, v in res.items()}, indent=1))
    return 0


def cmd_export(args) -> int:
    import torch
    from . import api
    from .decisions import Decisions
    from .export import export_onnx
    _check_out_file(args.out, args.force)
    dec = Decisions.load(args.decisions)
    job = _resolve_job(args, need_calib=False)
    lm, pre = _load(job, args.img or dec.meta.get("img_size"))
    from .config import QConfig
    if isinstance(dec.meta.get("config"), dict):
        # the whole config the decisions were taken with: the same graph is prepared again
        cfg = QConfig.from_dict(dict(dec.meta["config"], device="cpu", progress=False))
    else:                                   # decisions files from before the config was recorded
        w_bits, a_bits = int(dec.meta.get("w_bits", 8)), int(dec.meta.get("a_bits", 8))
        cfg = QConfig(w_bits=w_bits, a_bits=a_bits, target=dec.meta.get("target", "fakequant"),
                      mode=dec.meta.get("mode", "partial"),
                      quantize_outputs=bool(dec.meta.get("quantize_outputs", False)))
    x = torch.zeros(1, 3, pre.img_size, pre.img_size)
    pm = api.prepare(lm.model, x, cfg)
    qm = api.convert(pm, dec)
    export_onnx(qm, args.out, weight_format=args.weight_format)
    print(f"wrote {args.out} ({len(dec.layers)} layers from {args.decisions})")
    return 0


def cmd_check(args) -> int:
    from .check import check_runtime, write_json
    if not os.path.isfile(args.onnx):
        raise UsageError(f"'{args.onnx}' does not exist; pass an ONNX file")
    if args.runtime == "tensorrt" and args.save_optimized:
        raise UsageError("--save-optimized is onnxruntime's optimised graph; drop it with --runtime tensorrt")
    try:
        rep = check_runtime(args.onnx, args.runtime, keep_optimized=args.save_optimized)
    except Exception as e:  # onnx / onnxruntime load errors
        raise UsageError(f"cannot load '{args.onnx}' in {args.runtime} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); is it an ONNX model?") from e
    print(rep.format())
    if args.json:
        write_json(rep, args.json)
    if args.require_int8 and rep.integer_count < len(rep.ops):
        target = "tensorrt" if args.runtime == "tensorrt" else "ort"
        print(f"qhyvit check: error: {len(rep.ops) - rep.integer_count} conv/gemm/matmul op(s) run in float "
              f"on {args.runtime}; quantize with --target {target}", file=sys.stderr)
        return 3
    return 0


# ---- parser --------------------------------------------------------------------------------

def _add_common(p, model_optional=True):
    p.add_argument("model", nargs="?" if model_optional else None, default=None,
                   help=f"timm model name (default: the bundled {DEFAULT_MODEL} CIFAR-10 demo)")
    p.add_argument("--weights", help="weights: a state_dict .pth or a {'state_dict','meta'} checkpoint")
    p.add_argument("--pretrained", action="store_true", help="download pretrained weights through timm (online)")
    p.add_argument("--img", type=int, help="input size (default: from the checkpoint or the timm config)")


def _add_weight_format(p):
    p.add_argument("--weight-format", default="int8", choices=("int8", "int4"),
                   help="ONNX weight storage: int8 (default; onnxruntime's integer kernels read it) or int4 "
                        "(with w_bits <= 4: half the weight bytes, opset 21; onnxruntime then runs those layers "
                        "in float)")


def _add_quant(p):
    p.add_argument("--calib", help="folder of calibration images (train split)")
    p.add_argument("--calib-images", type=int, default=32, help="number of calibration images (default 32)")
    p.add_argument("--bits", default="w8a8", help="w8a8 | w6a6 | w4a8 | w4a4 | wNaM (default w8a8)")
    p.add_argument("--method", default="minmax",
                   help="calibration method: minmax (default), qhyvit, easyquant, ptq4vit, repq-vit, fq-vit")
    p.add_argument("--mode", default="partial", choices=tuple(MODES),
                   help="partial: conv/linear/matmul inputs and weights (paper Table 1, default); full: also "
                        "the inputs of norms, softmax, activations and residual adds (Table 2); integer: full "
                        "plus products, sigmoids (SiLU split into x*sigmoid(x)) and concats, each tensor "
                        "quantized once, so onnxruntime runs them as QLinear ops (fastest ONNX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", default="auto", choices=("auto", "avx2", "vnni", "arm", "none"),
                   help="integer kernels the ONNX will run on: avx2 limits 8-bit weights to 7-bit codes so "
                        "onnxruntime's u8s8 kernels cannot saturate (default: this CPU)")
    p.add_argument("--target", default="ort", choices=tuple(BACKENDS),
                   help="; ".join(f"{b.name}: {b.description}" for b in BACKENDS.values()) + " (default: ort)")
    p.add_argument("--act-scheme", default=None, choices=("asymmetric", "symmetric"),
                   help="activation scheme of the per-tensor targets: asymmetric uint8 (onnxruntime x86; the "
                        "default of ort and fakequant) or symmetric int8 with zero point 0 (tensorrt's only one)")
    _add_weight_format(p)
    p.add_argument("--device", default="cpu", help="device for the Q-HyViT search: cpu (default) or cuda")
    p.add_argument("--eval-images", type=int, default=None, help="evaluate on a seeded subset of this size")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (with a count)")
    _add_method_params(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qhyvit", description="Post-training quantization of hybrid vision transformers")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("inspect", help="quantizable ops and bridge blocks of a model")
    _add_common(p, model_optional=False)
    p.add_argument("--json", help="write the summary as JSON")
    p.add_argument("--draw", help="draw the graph around each bridge block (.png or .svg)")
    p.add_argument("--decisions", help="overlay a decisions.json on the drawing and the layer list")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("quantize", help="calibrate, convert, export QDQ ONNX + decisions + report")
    _add_common(p)
    _add_quant(p)
    p.add_argument("--out", default="qhyvit-out", help="output folder (default ./qhyvit-out)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--eval", help="labelled folder to evaluate FP vs quantized (torch and onnxruntime)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.add_argument("--compare", nargs="*", default=None, metavar="METHOD",
                   help="also ship these methods (their default parameters, the same images and target) and "
                        "print them in the accuracy table (default: minmax; --compare alone: none)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="FP vs quantized accuracy, agreement and SQNR")
    _add_common(p)
    _add_quant(p)
    p.add_argument("--data", help="labelled evaluation folder (test split)")
    p.add_argument("--onnx", action="store_true", help="also run the exported ONNX in onnxruntime")
    p.add_argument("--json", help="write the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="apply a (possibly edited) decisions.json and export ONNX")
    _add_common(p)
    p.add_argument("--decisions", required=True, help="decisions.json from 'qhyvit quantize'")
    p.add_argument("--out", required=True, help="ONNX file to write")
    _add_weight_format(p)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", help="which ops onnxruntime runs in integer kernels (and why not)")
    p.add_argument("onnx", help="QDQ ONNX model")
    p.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES,
                   help="onnxruntime: what its optimised CPU graph runs in integer kernels (default); tensorrt: "
                        "which ops follow TensorRT's explicit-quantization rules (read from the graph, no GPU)")
    p.add_argument("--require-int8", action="store_true", help="exit 3 if any conv/gemm/matmul stays float")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--save-optimized", help="also save onnxruntime's optimised graph here")
    p.set_defaults(func=cmd_check)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    errors = _user_errors()
    try:
        return args.func(args)
    except errors as e:
        print(f"qhyvit {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qhyvit {args.cmd}: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:          # output piped into `head` and closed
        sys.stderr = open(os.devnull, "w")
        return 0
    except MemoryError:
        print(f"qhyvit {args.cmd}: error: out of memory; use fewer --calib-images or a smaller --img",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
