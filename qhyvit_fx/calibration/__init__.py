"""Calibration data collection for reconstruction methods (FX side).

Modules: ``rows`` (row plans), ``stats`` (range records), ``interpreters`` (the two passes),
``gradients`` (objective weights), ``tails`` (bridge tails), ``collect`` (the driver).

Two ``torch.fx.Interpreter`` passes over the calibration images, in chunks of
images (rows of different images are independent, so chunking is exact):

1. :class:`RowCollector` runs the float graph and records, for every
   quantized layer, its input/output on a seeded sample of output rows
   (conv: output positions, with their receptive fields unfolded; linear:
   tokens; matmul: whole matrices of the batch) and its input range
   statistics over all rows;
2. :class:`GradCollector` runs a MinMax fake-quant version of the graph with
   autograd and records dL/dO on the same rows, with
   L = KL(softmax(float logits) || softmax(quantized logits)).

Bridge members get the rest of their bridge block as a *tail*: a small
GraphModule from the layer output to the bridge output, run on rows (valid
when the tail is pointwise: 1x1 convs, activations, adds).
"""
from .collect import augment_images, build_problems, collect  # noqa: F401
from .gradients import damped  # noqa: F401
from .interpreters import IDENTITY_MODULES, LayerRecord, searches_output  # noqa: F401
from .rows import RowPlan  # noqa: F401
from .tails import Tail, build_tail, tail_callable  # noqa: F401
