"""Calibration methods: each turns a calibrated prepared graph into decisions.

Register new methods with :func:`register_method`; the CLI's ``--method``
and ``QConfig.method`` look them up here.
"""
from .base import METHODS, Method, get_method, params_fields, register_method  # noqa: F401
from .params import MethodParams, SearchParams  # noqa: F401
from . import minmax  # noqa: F401  (registers)
from . import qhyvit  # noqa: F401,E402  (registers)
from . import easyquant  # noqa: F401,E402  (registers)
from . import ptq4vit  # noqa: F401,E402  (registers)
from . import repq_vit  # noqa: F401,E402  (registers)
from . import fq_vit  # noqa: F401,E402  (registers)
