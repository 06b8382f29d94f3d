# Triton Python-backend entry point: the combined model is yujing.service.triton.heads.
from yujing.service.triton.heads import TritonPythonModel  # noqa: F401
