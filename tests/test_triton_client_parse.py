"""The client's reading of the ``MODELS`` output's first row straight from the response's
raw bytes (``_first_row_of_strings``), against the client library's own ``as_numpy``."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from tritonclient.grpc import InferResult, service_pb2                      # noqa: E402
from tritonclient.utils import serialize_byte_tensor                       # noqa: E402

from yujing.service.triton.client import _first_row_of_strings            # noqa: E402


def _result(outputs: dict[str, np.ndarray]) -> InferResult:
    response = service_pb2.ModelInferResponse(model_name="heads")
    for name, arr in outputs.items():
        if arr.dtype == np.object_:
            out = response.outputs.add(name=name, datatype="BYTES", shape=list(arr.shape))
            response.raw_output_contents.append(serialize_byte_tensor(arr).item())
        else:
            out = response.outputs.add(name=name, datatype="FP32", shape=list(arr.shape))
            response.raw_output_contents.append(arr.astype(np.float32).tobytes())
        assert out.name == name
    return InferResult(response)


@pytest.mark.parametrize("rows", [1, 3, 257])
def test_the_first_row_is_what_as_numpy_reads(rows):
    row = [b"sentiment:3", b"emotion:1", "intent:\u4e8c".encode(), b"dissatisfaction:12"]
    names = np.empty((rows, len(row)), dtype=np.object_)
    names[:] = row
    result = _result({"sentiment": np.ones((rows, 3)), "MODELS": names})
    assert _first_row_of_strings(result, "MODELS", rows) == list(result.as_numpy("MODELS")[0]) == row


def test_another_shape_or_no_such_output_reads_as_none():
    names = np.empty((2, 2), dtype=np.object_)
    names[:] = [b"a:1", b"b:2"]
    result = _result({"MODELS": names, "sentiment": np.ones((2, 3))})
    assert _first_row_of_strings(result, "MODELS", 3) is None          # rows differ from the texts sent
    assert _first_row_of_strings(result, "sentiment", 2) is None       # not BYTES
    assert _first_row_of_strings(result, "OTHER", 2) is None
    flat = _result({"MODELS": np.array([b"a:1", b"b:2"], dtype=np.object_)})
    assert _first_row_of_strings(flat, "MODELS", 2) is None            # one dimension, not [rows, k]


def test_a_truncated_tensor_reads_as_none():
    names = np.empty((1, 2), dtype=np.object_)
    names[:] = [b"sentiment:3", b"emotion:1"]
    result = _result({"MODELS": names})
    raw = result.get_response().raw_output_contents
    raw[0] = raw[0][:-12]
    assert _first_row_of_strings(result, "MODELS", 1) is None
