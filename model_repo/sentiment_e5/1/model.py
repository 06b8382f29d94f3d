# Triton Python-backend entry point; the generic implementation is
# service/models/triton_backend.py. The stub's embedded Python runs isolated (it ignores
# PYTHONPATH), so the path the launcher sets is applied here.
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

from service.models.triton_backend import TritonPythonModel  # noqa: E402,F401
