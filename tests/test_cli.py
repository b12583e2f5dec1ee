import json
import os
import re
import subprocess
import sys

import onnx
import pytest
from PIL import Image

from qhyvit_fx import cli


def run(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_mobilevit_xxs(tmp_path, capsys):
    j, png = str(tmp_path / "s.json"), str(tmp_path / "b.png")
    code, out, err = run(["inspect", "mobilevit_xxs", "--json", j, "--draw", png], capsys)
    assert code == 0, err
    s = json.load(open(j))
    assert s["quantizable"] == {"conv": 35, "linear": 37, "matmul": 18}
    assert s["ops"]["softmax"] == 9 and s["norm_types"] == {"LayerNorm": 21}
    assert s["quantized_tensors"] == {"weights": 72, "activations": 108}
    assert [b["modules"] for b in s["bridges"]] == [[f"stages.{i}.1.conv_kxk.conv", f"stages.{i}.1.conv_1x1"]
                                                    for i in (2, 3, 4)]
    assert [b["output_module"] for b in s["bridges"]] == [f"stages.{i}.1.conv_1x1" for i in (2, 3, 4)]
    assert sum(1 for l in s["layers"] if l["bridge"] is not None) == 6
    with Image.open(png) as im:
        assert im.size[0] > 1000 and im.size[1] > 800
    assert "bridge blocks: 3" in out and "stages.3.1.conv_kxk.conv -> stages.3.1.conv_1x1" in out


def test_inspect_unknown_model_suggests(capsys):
    code, out, err = run(["inspect", "mobilevit_xss"], capsys)
    assert code == 2 and "unknown model 'mobilevit_xss'" in err and "mobilevit_xs" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_quantize_default_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "out")
    code, o, err = run(["quantize", "--out", out, "--eval-images", "100"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["bridge_histograms.png", "bridges.png", "choice_counts.png", "choices.png",
                                       "decisions.json", "model.onnx", "report.md"]
    dec = json.load(open(os.path.join(out, "decisions.json")))
    assert dec["format"] == "qhyvit-decisions/1" and len(dec["layers"]) == 90
    onnx.checker.check_model(onnx.load(os.path.join(out, "model.onnx")))
    rep = open(os.path.join(out, "report.md")).read()
    assert "## Accuracy" in rep and "minmax w8a8 (onnxruntime)" in rep
    # the accuracy table: float, torch fake-quant and onnxruntime lines
    assert o.count("w8a8 (") == 2 and "float" in o
    # the table: drop from FP32, and integer coverage on the rows that are the exported ONNX
    assert "drop" in o and re.search(r"minmax w8a8 \(onnxruntime\) .* 90/90 \(100 % of MACs\)", o)
    assert "| minmax w8a8 (onnxruntime) |" in rep and rep.count(" | 90/90 |") == 1
    # an existing output needs --force; nothing is touched without it
    before = os.path.getmtime(os.path.join(out, "model.onnx"))
    code, _, err = run(["quantize", "--out", out], capsys)
    assert code == 2 and "--force" in err
    assert os.path.getmtime(os.path.join(out, "model.onnx")) == before
    # and export re-applies the decisions exactly
    code, _, err = run(["export", "--decisions", os.path.join(out, "decisions.json"), "--out",
                        str(tmp_path / "re.onnx")], capsys)
    assert code == 0, err
    a = onnx.load(os.path.join(out, "model.onnx"))
    b = onnx.load(str(tmp_path / "re.onnx"))
    assert [i.raw_data for i in a.graph.initializer] == [i.raw_data for i in b.graph.initializer]


def test_quantize_ships_the_compared_methods_beside_it(tmp_path, capsys):
    code, o, err = run(["quantize", "--out", str(tmp_path / "o"), "--eval-images", "100",
                        "--compare", "minmax", "repq-vit", "repq-vit"], capsys)
    assert code == 0, err
    rows = [line.split()[0] for line in o.splitlines() if line.startswith("  ")]
    assert rows[-4:] == ["float", "minmax", "minmax", "repq-vit"]       # minmax once; repq-vit once
    # RepQ-ViT's log2 softmax quantizer leaves the attention matmuls in float: coverage says so
    assert re.search(r"repq-vit w8a8 \(onnxruntime\) .* 81/90 \(99 % of MACs\)", o)
    rep = open(tmp_path / "o" / "report.md").read()
    assert "| repq-vit w8a8 (onnxruntime) |" in rep and " | 81/90 |" in rep
    assert [f for f in os.listdir(tmp_path / "o") if f.endswith(".onnx")] == ["model.onnx"]   # only ours ships


@pytest.mark.parametrize("args,msg", [
    (["quantize", "--bits", "w9a8"], "outside 2-8"),
    (["quantize", "--bits", "8bit"], "not of the form wNaM"),
    (["quantize", "--method", "minmaxx"], "unknown method 'minmaxx'"),
    (["quantize", "--compare", "repq-vitt"], "unknown method 'repq-vitt'"),
    (["quantize", "mobilevit_xs"], "no weights for 'mobilevit_xs'"),
    (["quantize", "--weights", "/nonexistent.pth", "--calib", cli.DEFAULT_CALIB, "mobilevit_xxs"], "does not exist"),
    (["quantize", "--calib", "/nonexistent"], "does not exist"),
    (["quantize", "--calib-images", "1000"], "holds only 80"),
    (["quantize", "--out", "/dev/null/x"], "does not exist"),
])
def test_bad_input_gives_one_line(tmp_path, capsys, args, msg):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "o")]
    code, out, err = run(args, capsys)
    assert code == 2
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "o")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".qhyvit")]


def test_interrupt_leaves_no_output(tmp_path, capsys, monkeypatch):
    from qhyvit_fx import api

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "calibrate", boom)
    code, out, err = run(["quantize", "--out", str(tmp_path / "o")], capsys)
    assert code == 130 and "no output was written" in err
    assert os.listdir(tmp_path) == []


def test_console_script_installed():
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "qhyvit"), "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "inspect" in r.stdout and "quantize" in r.stdout


def test_quantize_integer_mode_and_export_round_trip(tmp_path, capsys):
    from qhyvit_fx.check import check_onnx
    out = str(tmp_path / "out")
    code, _, err = run(["quantize", "--mode", "integer", "--no-eval", "--out", out], capsys)
    assert code == 0, err
    dec = json.load(open(os.path.join(out, "decisions.json")))
    assert dec["meta"]["mode"] == "integer"
    kinds = {}
    for d in dec["layers"]:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    # 90 layers, plus 21 LayerNorms, per SiLU a sigmoid and a product (34 each), 21 residual adds; the 9
    # softmax stay float on onnxruntime (Backend.integer_mode_float_ops)
    assert kinds == {"conv": 35, "linear": 37, "matmul": 18, "norm": 21, "activation": 34, "mul": 34, "add": 21}
    rep = check_onnx(os.path.join(out, "model.onnx"))
    assert rep.integer_count == len(rep.ops) == 90
    ops = rep.optimized_ops
    assert ops["QLinearSigmoid"] == 34 and ops["QLinearMul"] == 34 and ops["QLinearAdd"] == 21
    assert ops["QLinearConcat"] == 3 and "Sigmoid" not in ops
    # export re-reads the mode from the decisions and rebuilds the same graph
    code, _, err = run(["export", "--decisions", os.path.join(out, "decisions.json"), "--out",
                        str(tmp_path / "re.onnx")], capsys)
    assert code == 0, err
    a, b = onnx.load(os.path.join(out, "model.onnx")), onnx.load(str(tmp_path / "re.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert [i.raw_data for i in a.graph.initializer] == [i.raw_data for i in b.graph.initializer]


def test_method_parameter_flags_reach_the_method_params():
    from qhyvit_fx.cli import UsageError, _config, build_parser
    base = ["quantize", "--calib", "x", "--out", "o", "--method", "qhyvit"]
    args = build_parser().parse_args(base)
    assert _config(args, 8, 8).method_params.calib_augment == "none"
    args = build_parser().parse_args(base + ["--calib-augment", "flip"])
    assert _config(args, 6, 6).method_params.calib_augment == "flip"
    assert _config(args, 6, 6).method_params.act_channel_beta == 3.0
    args = build_parser().parse_args(base + ["--act-channel-beta", "1.2", "--no-act-cv", "--rounds", "2"])
    p = _config(args, 6, 6).method_params
    assert (p.act_channel_beta, p.act_cv, p.rounds) == (1.2, False, 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--calib-augment", "rotate"])
    # a flag of another method's params is refused, naming the flag and the method
    args = build_parser().parse_args(base[:-1] + ["easyquant", "--no-act-cv"])
    with pytest.raises(UsageError, match="--act-cv is not a parameter of method 'easyquant'"):
        _config(args, 8, 8)
    assert _config(build_parser().parse_args(base[:-1] + ["easyquant", "--rounds", "5"]), 8, 8).method_params.rounds == 5
