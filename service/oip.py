"""Open Inference Protocol (v2) tensors in and out: an inference request's JSON and binary tensor data
checked against what the model takes, and an inference response as JSON or with binary outputs.

Requests: JSON `data` (flat, row-major, or nested to the tensor's shape) or the binary tensor data
extension (the JSON header first, `Inference-Header-Content-Length` bytes long, then each input's raw
little-endian bytes in input order, each input naming its length in `parameters.binary_data_size`).
Everything an input declares (name, datatype, shape) is checked against the model's `TensorSpec` before any
data is read, and the bytes it declares against the bytes present, so that a small request declaring a
huge tensor costs nothing. Every problem raises `InvalidInferenceRequest` naming the tensor.

Responses: each output as JSON `data` (flat; non-finite floats as null) or, where the request asks for
binary data (`binary_data_output` for all, `binary_data` per output), as raw bytes after the JSON header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInferenceRequest

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "TensorSpec",
    "encode_response",
    "parse_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's fixed-size datatypes (BYTES and BF16 are left out: no model here takes or gives them).
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
MAX_RANK = 8
MAX_NAME_CHARS = 128


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or gives: its datatype (the one metadata names, then any other an input
    accepts), its shape with -1 for a variable dimension, and for an input at most how many elements it
    may hold (the server's limits)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()
    max_elements: int | None = None

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def datatypes(self) -> tuple[str, ...]:
        return (self.datatype, *self.accepts)


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names, and whether it asked for binary data (None: the request's default)."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: its `id`, its inputs as arrays of their declared shape and datatype,
    its parameters (the protocol's `binary_data_output` taken out), and the outputs it names (None: all)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False

    def wants_binary(self, name: str) -> bool:
        for output in self.outputs or []:
            if output.name == name and output.binary is not None:
                return output.binary
        return self.binary_output


def _bad(message: str) -> InvalidInferenceRequest:
    return InvalidInferenceRequest(message)


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not a JSON number")


def _header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header as an object, and the binary data after it."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not header_length.isascii() or not header_length.isdigit() or len(header_length) > 12:
            raise _bad(f"{HEADER_LENGTH} must be a number of bytes, got {header_length[:20]!r}")
        size = int(header_length)
        if size > len(body):
            raise _bad(f"{HEADER_LENGTH} is {size} bytes but the body has only {len(body)}")
        view = memoryview(body)
        json_part, binary = bytes(view[:size]), view[size:]
    try:
        parsed = json.loads(json_part, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(f"the request is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise _bad("the request must be a JSON object with an 'inputs' list")
    return parsed, binary


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise _bad(f"{what}: 'name' must be a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _shape(value: Any, label: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value)
    ):
        raise _bad(f"{label}: 'shape' must be a list of at most {MAX_RANK} non-negative integers")
    return tuple(value)


def _check_declared(spec: TensorSpec, datatype: Any, shape: tuple[int, ...], label: str) -> None:
    """The declared datatype and shape against the spec, and the element count against its bound."""
    if datatype not in spec.datatypes():
        raise _bad(
            f"{label}: datatype {str(datatype)[:20]!r} is not accepted; "
            f"expected {' or '.join(spec.datatypes())}"
        )
    fits = len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape, strict=True))
    if not fits:
        raise _bad(f"{label}: expected shape {list(spec.shape)} (-1: any size), got {list(shape)}")
    count = math.prod(shape)
    if spec.max_elements is not None and count > spec.max_elements:
        raise _bad(
            f"{label}: shape {list(shape)} holds {count} elements, more than this server takes in one "
            f"request ({spec.max_elements})"
        )


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    """JSON `data`, flat or nested, as an array of `shape` and `datatype`: booleans for BOOL only, whole
    numbers in range for integer types, finite numbers for floating types."""
    if not isinstance(data, list):
        raise _bad(f"{label}: 'data' must be a list (flat, or nested to the shape)")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise _bad(f"{label}: 'data' is not a rectangular array of numbers") from None
    if array.size != math.prod(shape):
        raise _bad(f"{label}: shape {list(shape)} needs {math.prod(shape)} values, 'data' holds {array.size}")
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        if array.size and array.dtype != np.bool_:
            raise _bad(f"{label}: BOOL data must be true or false")
    elif array.size and array.dtype.kind not in "iuf":
        raise _bad(f"{label}: {datatype} data must be numbers, got {array.dtype.kind!r} values")
    elif array.size and dtype.kind in "iu":
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise _bad(f"{label}: {datatype} data must be whole numbers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise _bad(f"{label}: {datatype} values must lie in [{info.min}, {info.max}]")
    elif array.size and not np.isfinite(array).all():
        raise _bad(f"{label}: {datatype} data must be finite numbers")
    return array.astype(dtype).reshape(shape)


def _from_binary(
    binary: memoryview, offset: int, size: Any, datatype: str, shape: tuple[int, ...], label: str
):
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise _bad(
            f"{label}: binary_data_size must be {expected} bytes ({datatype} of shape {list(shape)}), "
            f"got {str(size)[:20]}"
        )
    if offset + size > len(binary):
        raise _bad(f"{label}: needs {size} bytes of binary data, only {len(binary) - offset} remain")
    array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    if datatype == "BOOL" and array.size and not np.isin(array.view(np.uint8), (0, 1)).all():
        raise _bad(f"{label}: BOOL bytes must be 0 or 1")
    return array.astype(dtype.newbyteorder("="))


def _outputs(value: Any, known: set[str]) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
        raise _bad("'outputs' must be a list of objects with a 'name'")
    outputs = []
    for i, item in enumerate(value):
        name = _name(item.get("name"), f"outputs[{i}]")
        if name not in known:
            raise _bad(
                f"outputs[{i}]: this model has no output {name!r}; its outputs: {', '.join(sorted(known))}"
            )
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _bad(f"output {name!r}: 'parameters' must be an object")
        if parameters.get("classification"):
            raise _bad(f"output {name!r}: the classification extension is not supported")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise _bad(f"output {name!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(name, binary))
    return outputs


def parse_request(
    body: bytes,
    header_length: str | None,
    inputs: Mapping[str, TensorSpec],
    outputs: set[str],
    required: set[str],
) -> InferRequest:
    """An inference request for a model taking `inputs` (of which `required` must be present) and giving
    `outputs`; CPU work proportional to the body: run it off the event loop."""
    header, binary = _header(body, header_length)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("'parameters' must be an object")
    parameters = dict(parameters)
    binary_output = parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise _bad("binary_data_output must be true or false")
    items = header.get("inputs")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _bad("'inputs' must be a list of tensors (objects with name, datatype, shape and data)")
    declared = []
    for i, item in enumerate(items):  # everything declared is checked before any data is read
        name = _name(item.get("name"), f"inputs[{i}]")
        label = f"input {name!r}"
        if name not in inputs:
            raise _bad(f"this model has no input {name!r}; its inputs: {', '.join(sorted(inputs))}")
        if any(name == d[0] for d in declared):
            raise _bad(f"{label} is given twice")
        shape = _shape(item.get("shape"), label)
        _check_declared(inputs[name], item.get("datatype"), shape, label)
        tensor_parameters = item.get("parameters") or {}
        if not isinstance(tensor_parameters, dict):
            raise _bad(f"{label}: 'parameters' must be an object")
        if any(k.startswith("shared_memory") for k in tensor_parameters):
            raise _bad(f"{label}: the shared-memory extensions are not supported; send the data in the body")
        declared.append((name, item, shape, tensor_parameters.get("binary_data_size")))
    missing = required - {d[0] for d in declared}
    if missing:
        raise _bad(
            f"missing input {', '.join(sorted(missing))!s}; this model takes {', '.join(sorted(inputs))}"
        )
    arrays, offset = {}, 0
    for name, item, shape, size in declared:
        label = f"input {name!r}"
        if size is not None:
            if "data" in item:
                raise _bad(f"{label}: give either 'data' or binary_data_size, not both")
            arrays[name] = _from_binary(binary, offset, size, item["datatype"], shape, label)
            offset += size
        else:
            if "data" not in item:
                raise _bad(f"{label}: no 'data' (and no binary_data_size)")
            arrays[name] = _from_json(item["data"], item["datatype"], shape, label)
    if offset != len(binary):
        raise _bad(f"the body has {len(binary) - offset} bytes of binary data beyond what the inputs declare")
    return InferRequest(
        request_id, arrays, parameters, _outputs(header.get("outputs"), outputs), binary_output
    )


def _json_data(array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [float(v) if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: list[tuple[TensorSpec, np.ndarray]],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header where binary outputs follow it (None: the
    body is all JSON)."""
    tensors, blobs = [], []
    for spec, array in outputs:
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if request.wants_binary(spec.name):
            raw = np.ascontiguousarray(array, dtype=DATATYPES[spec.datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = _json_data(array.astype(DATATYPES[spec.datatype], copy=False))
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = tensors
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
