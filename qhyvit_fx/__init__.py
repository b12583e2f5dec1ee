"""qhyvit-fx: post-training quantization of hybrid vision transformers as a
torch.fx graph-rewriting compiler (Q-HyViT)."""
from .api import calibrate, convert, prepare  # noqa: F401
from .capture import CaptureError, capture  # noqa: F401
from .config import QConfig  # noqa: F401
from .decisions import Decisions  # noqa: F401
from .export import export_onnx  # noqa: F401
from .state import QuantState, quant_state  # noqa: F401
from .models import mobileformer as _mobileformer  # noqa: F401  (registers mobileformer_* with timm)

__version__ = "0.1.0"
