# Triton Python-backend entry point: the generic model is yujing.service.triton.backend.
from yujing.service.triton.backend import TritonPythonModel  # noqa: F401
