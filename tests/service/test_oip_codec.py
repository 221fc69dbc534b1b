"""The Open Inference Protocol tensor codec in-process: JSON and binary tensors in, every kind of bad
request refused with a message naming the tensor, and responses that tritonclient's own parser reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import InvalidInferenceRequest
from service.oip import DATATYPES, TensorSpec, encode_response, parse_request

IMAGES = TensorSpec("images", "UINT8", (-1, 1, 4, 4), max_elements=8 * 16)
COUNT = TensorSpec("num_samples", "INT64", (1,), accepts=("INT32",))
SPECS = {"images": IMAGES, "num_samples": COUNT}
OUTPUTS = {"log_prob", "is_outlier"}


def tensor(name: str, datatype: str, shape: list, data=None, size: int | None = None) -> dict:
    item: dict = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        item["data"] = data
    if size is not None:
        item["parameters"] = {"binary_data_size": size}
    return item


def parse(header: dict, binary: bytes = b"", required=frozenset({"images"})):
    head = json.dumps(header).encode()
    length = str(len(head)) if binary else None
    return parse_request(head + binary, length, SPECS, OUTPUTS, set(required))


def refused(header: dict, *words: str, binary: bytes = b"") -> str:
    with pytest.raises(InvalidInferenceRequest) as caught:
        parse(header, binary)
    assert caught.value.status == 400
    for word in words:
        assert word in caught.value.message, caught.value.message
    return caught.value.message


def test_json_data_flat_and_nested_give_the_same_tensor():
    images = np.arange(2 * 16, dtype=np.uint8).reshape(2, 1, 4, 4)
    flat = parse({"inputs": [tensor("images", "UINT8", [2, 1, 4, 4], images.reshape(-1).tolist())]})
    nested = parse({"inputs": [tensor("images", "UINT8", [2, 1, 4, 4], images.tolist())]})
    for request in (flat, nested):
        assert request.inputs["images"].dtype == np.uint8
        np.testing.assert_array_equal(request.inputs["images"], images)


def test_binary_tensors_follow_the_json_header_in_input_order():
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    count = np.array([7], dtype=np.int32)
    header = {
        "id": "r1",
        "inputs": [
            tensor("images", "UINT8", [3, 1, 4, 4], size=images.nbytes),
            tensor("num_samples", "INT32", [1], size=count.nbytes),
        ],
        "parameters": {"binary_data_output": True, "seed": 3},
    }
    request = parse(header, images.tobytes() + count.tobytes())
    np.testing.assert_array_equal(request.inputs["images"], images)
    assert request.inputs["num_samples"].tolist() == [7] and request.inputs["num_samples"].dtype == np.int32
    assert request.id == "r1" and request.parameters == {"seed": 3} and request.binary_output
    assert request.inputs["images"].flags.writeable  # a copy, not a view of the body


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ({"inputs": [tensor("images", "FP32", [1, 1, 4, 4], [0] * 16)]}, ["'images'", "FP32", "UINT8"]),
        ({"inputs": [tensor("images", "UINT8", [1, 4, 4], [0] * 16)]}, ["expected shape [-1, 1, 4, 4]"]),
        ({"inputs": [tensor("images", "UINT8", [1, 3, 4, 4], [0] * 48)]}, ["got [1, 3, 4, 4]"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, -4, 4], [0] * 16)]}, ["non-negative integers"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4.0, 4], [0] * 16)]}, ["non-negative integers"]),
        ({"inputs": [tensor("images", "UINT8", [9, 1, 4, 4], [0] * 144)]}, ["144 elements", "(128)"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], [0] * 15)]}, ["needs 16 values", "holds 15"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], [256] + [0] * 15)]}, ["[0, 255]"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], [-1] + [0] * 15)]}, ["[0, 255]"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], [0.5] + [0] * 15)]}, ["whole numbers"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], ["a"] * 16)]}, ["must be numbers"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4], [[0] * 3, [0] * 13])]}, ["rectangular"]),
        ({"inputs": [tensor("images", "UINT8", [1, 1, 4, 4])]}, ["no 'data'"]),
        ({"inputs": [tensor("pixels", "UINT8", [1, 1, 4, 4], [0] * 16)]}, ["no input 'pixels'", "images"]),
        ({"inputs": []}, ["missing input images"]),
        ({"inputs": [tensor("images", "UINT8", [0, 1, 4, 4], [])] * 2}, ["given twice"]),
        ({"inputs": {"images": 1}}, ["'inputs' must be a list"]),
        (
            {"inputs": [tensor("images", "UINT8", [0, 1, 4, 4], [])], "outputs": [{"name": "x"}]},
            ["no output 'x'"],
        ),
        (
            {
                "inputs": [tensor("images", "UINT8", [0, 1, 4, 4], [])],
                "outputs": [{"name": "log_prob", "parameters": {"classification": 3}}],
            },
            ["classification"],
        ),
    ],
)
def test_bad_json_tensors_are_400s_naming_the_tensor_and_the_problem(header, words):
    refused(header, *words)


def test_bad_binary_data_is_refused_before_anything_is_allocated():
    images = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    declared = [tensor("images", "UINT8", [2, 1, 4, 4], size=32)]
    refused(
        {"inputs": [tensor("images", "UINT8", [2, 1, 4, 4], size=31)]}, "must be 32 bytes", binary=b"\0" * 31
    )
    refused({"inputs": declared}, "only 16 remain", binary=images.tobytes()[:16])
    refused({"inputs": declared}, "1 bytes of binary data beyond", binary=images.tobytes() + b"\0")
    # A few bytes declaring a tensor of 2**39 images: refused from the declaration alone.
    huge = [tensor("images", "UINT8", [2**39, 1, 4, 4], size=2**43)]
    refused({"inputs": huge}, "more than this server takes", binary=b"\0")
    head = json.dumps({"inputs": declared}).encode()
    for length in ("-1", "x", str(len(head) + 100)):
        with pytest.raises(InvalidInferenceRequest, match="Inference-Header-Content-Length"):
            parse_request(head + images.tobytes(), length, SPECS, OUTPUTS, {"images"})


def test_malformed_json_is_a_400():
    for body in (b"{", b"[1, 2]", b'{"inputs": [], "x": NaN}', b"\xff"):
        with pytest.raises(InvalidInferenceRequest) as caught:
            parse_request(body, None, SPECS, OUTPUTS, set())
        assert caught.value.status == 400


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_round_trips_as_json_and_binary(datatype):
    spec = TensorSpec("x", datatype, (-1,))
    dtype = DATATYPES[datatype]
    values = np.array([0, 1, 1, 0], dtype=dtype)
    json_request = parse_request(
        json.dumps({"inputs": [tensor("x", datatype, [4], values.tolist())]}).encode(),
        None,
        {"x": spec},
        set(),
        set(),
    )
    head = json.dumps({"inputs": [tensor("x", datatype, [4], size=values.nbytes)]}).encode()
    binary_request = parse_request(head + values.tobytes(), str(len(head)), {"x": spec}, set(), set())
    for request in (json_request, binary_request):
        assert request.inputs["x"].dtype == dtype.newbyteorder("=")
        np.testing.assert_array_equal(request.inputs["x"], values)


def test_bool_data_must_be_booleans():
    spec = {"x": TensorSpec("x", "BOOL", (-1,))}
    for data in ([1, 0], [True, 2]):
        with pytest.raises(InvalidInferenceRequest, match="true or false"):
            parse_request(
                json.dumps({"inputs": [tensor("x", "BOOL", [2], data)]}).encode(), None, spec, set(), set()
            )
    head = json.dumps({"inputs": [tensor("x", "BOOL", [2], size=2)]}).encode()
    with pytest.raises(InvalidInferenceRequest, match="0 or 1"):
        parse_request(head + b"\x01\x02", str(len(head)), spec, set(), set())


def test_responses_read_back_through_tritonclients_parser():
    http = pytest.importorskip("tritonclient.http")
    log_prob = np.array([-1.5, -np.inf, 2.0])
    outlier = np.array([False, True, False])
    specs = [
        (TensorSpec("log_prob", "FP64", (-1,)), log_prob),
        (TensorSpec("is_outlier", "BOOL", (-1,)), outlier),
    ]
    header = {"id": "abc", "inputs": [tensor("images", "UINT8", [0, 1, 4, 4], [])]}
    for binary in (False, True):
        request = parse({**header, "parameters": {"binary_data_output": binary}})
        body, length = encode_response("m", "2", request, specs, {"seed": 1})
        assert (length is None) == (not binary)
        result = http.InferResult.from_response_body(body, header_length=length)
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == ("m", "2", "abc")
        assert response["parameters"] == {"seed": 1}
        np.testing.assert_array_equal(
            result.as_numpy("log_prob"), [-1.5, np.nan if not binary else -np.inf, 2.0]
        )
        np.testing.assert_array_equal(result.as_numpy("is_outlier"), outlier)


def test_per_output_binary_data_overrides_the_request_default():
    request = parse(
        {
            "inputs": [tensor("images", "UINT8", [0, 1, 4, 4], [])],
            "outputs": [{"name": "log_prob", "parameters": {"binary_data": True}}, {"name": "is_outlier"}],
        }
    )
    assert request.wants_binary("log_prob") and not request.wants_binary("is_outlier")
    body, length = encode_response(
        "m",
        "1",
        request,
        [
            (TensorSpec("log_prob", "FP64", (-1,)), np.array([1.0])),
            (TensorSpec("is_outlier", "BOOL", (-1,)), np.array([True])),
        ],
    )
    head = json.loads(body[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8} and head["outputs"][1]["data"] == [
        True
    ]
    assert np.frombuffer(body[length:], dtype="<f8").tolist() == [1.0]
