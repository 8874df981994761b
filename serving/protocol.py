"""The Open Inference Protocol, v1 and v2, as plain functions: request bodies in, arrays out, and
arrays back to response bodies (KServe's and Triton's shapes, the binary tensor extension included).

Nothing here knows HTTP or a model; every problem with a request is a `BadRequest` naming the input,
the field and what was expected (the server answers 400 with `{"error": ...}`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from mlyard.core.errors import BadRequest

HEADER_LENGTH = "inference-header-content-length"

# OIP v2 datatypes and the numpy dtypes they travel as.
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
_BY_KIND = {np.dtype(v).str[1:]: k for k, v in DATATYPES.items() if k != "BYTES"}


@dataclass
class TensorMeta:
    """An input or output tensor as a model's v2 metadata names it."""

    name: str
    datatype: str
    shape: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an array (strings, bytes, objects and datetimes, as ISO 8601, are BYTES)."""
    if array.dtype.kind in ("U", "S", "O", "M", "m"):
        return "BYTES"
    name = _BY_KIND.get(array.dtype.str[1:])
    if name is None:
        raise BadRequest("output", str(array.dtype), "a dtype the inference protocol can carry")
    return name


# -- v1 -----------------------------------------------------------------------------------------------

def v1_instances(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The `instances` of a v1 predict body (KServe and the seed's `{"instances": [[...], ...]}`) and
    its `parameters` (`{"probabilities": true}` asks a classifier for its class probabilities)."""
    doc = _json(body)
    if not isinstance(doc, dict):
        raise BadRequest("body", type(doc).__name__, 'a JSON object such as {"instances": [[5.1, 3.5, 1.4, 0.2]]}')
    rows = doc.get("instances", doc.get("inputs"))
    if not isinstance(rows, list) or not rows:
        raise BadRequest("instances", _short(rows), 'a non-empty list of rows, e.g. {"instances": [[5.1, 3.5, 1.4, 0.2]]}')
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters", _short(params), 'an object, e.g. {"probabilities": true}')
    return rows, params


def v1_response(predictions: Any) -> bytes:
    """`{"predictions": [...]}` of any output numpy can hold: numbers as they are; strings; bytes as UTF-8
    text; datetimes as ISO 8601; object arrays element by element."""
    return orjson.dumps({"predictions": jsonable(predictions)}, option=orjson.OPT_SERIALIZE_NUMPY)


def jsonable(value: Any) -> Any:
    """A value orjson can write: numeric arrays pass as they are (fast); the others become lists."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufc" and value.dtype.str[1:] in _BY_KIND:
            return value
        if value.dtype.kind in "Mm":
            return np.datetime_as_string(value).tolist() if value.dtype.kind == "M" else value.astype(str).tolist()
        return [jsonable(v) for v in value] if value.ndim > 1 else [_scalar(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return _scalar(value)


def _text(v: Any) -> str:
    """One element of a BYTES output as text: datetimes in ISO 8601, objects as JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v))
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (dict, list, tuple)) or v is None:
        return orjson.dumps(jsonable(v) if not isinstance(v, dict) else v,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    return str(v.item() if isinstance(v, np.generic) else v)


def _scalar(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return jsonable(np.asarray(v)).tolist() if isinstance(v, (np.datetime64, np.timedelta64)) else v.item()
    if isinstance(v, (dict, str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "isoformat"):  # datetime, date, time, pandas' Timestamp
        return v.isoformat()
    if isinstance(v, np.ndarray):
        return jsonable(v)
    return str(v)


# -- v2 -----------------------------------------------------------------------------------------------

@dataclass
class Tensor:
    name: str
    shape: list[int]
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # requested outputs: name, parameters
    binary_output: bool = False  # the request asked for binary outputs by default


def v2_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode a v2 infer body: JSON, or JSON followed by binary tensor data (the binary extension:
    the header's length arrives as Inference-Header-Content-Length)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest("Inference-Header-Content-Length", header_length,
                             f"the length of the JSON header, at most the body's {len(body)} bytes")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    doc = _json(head)
    if not isinstance(doc, dict):
        raise BadRequest("body", type(doc).__name__, 'a JSON object with "inputs"')
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("inputs", raw_inputs, "a non-empty list of tensors {name, shape, datatype, data}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters", params, "an object")
    offset = 0
    tensors = []
    for i, raw in enumerate(raw_inputs):
        tensor, used = _tensor(raw, i, binary[offset:])
        offset += used
        tensors.append(tensor)
    if offset != len(binary):
        raise BadRequest("binary data", len(binary), f"{offset} bytes, the sum of the inputs' binary_data_size")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest("outputs", outputs, 'a list of {"name": ..., "parameters": {...}}')
    rid = doc.get("id")
    return InferRequest(tensors, str(rid) if rid is not None else None, params, outputs,
                        bool(params.get("binary_data_output", False)))


def _tensor(raw: Any, i: int, binary: memoryview) -> tuple[Tensor, int]:
    where = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise BadRequest(where, raw, "a tensor {name, shape, datatype, data}")
    name, shape, datatype = raw.get("name"), raw.get("shape"), raw.get("datatype")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.name", name, "the input's name")
    where = f"input {name!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where} shape", shape, "a list of non-negative integers, e.g. [2, 4]")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"{where} datatype", datatype, ", ".join(DATATYPES))
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} parameters", _short(params), "an object")
    count = int(np.prod(shape)) if shape else 1
    if count == 0:  # nothing to predict: a caller's mistake, not the model's failure
        raise BadRequest(f"{where} shape", shape, "at least one value: no dimension of 0")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise BadRequest(f"{where} binary_data_size", size, f"at most the {len(binary)} bytes that follow")
        array = _from_binary(bytes(binary[:size]), datatype, count, where)
        used = size
    else:
        if "data" not in raw:
            raise BadRequest(f"{where} data", None, "the tensor's values (or binary_data_size with binary data)")
        array = _from_json(raw["data"], datatype, count, where)
        used = 0
    return Tensor(name, shape, datatype, array.reshape(shape), params), used


def _from_json(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"{where} data", _short(data), f"a (nested) list of {count} {datatype} values")
    if datatype == "FP16":  # JSON numbers cannot say which half-precision value they mean: as KServe refuses it
        raise BadRequest(f"{where} datatype", "FP16", "FP16 in the binary tensor extension (binary_data_size), or "
                         "FP32 as JSON: FP16 data cannot travel as JSON")
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(v, (str, bytes)) for v in flat):
            raise BadRequest(f"{where} data", _short(data), "strings for BYTES")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() if isinstance(v, str) else v for v in flat]
    else:
        kind = np.dtype(DATATYPES[datatype]).kind
        if kind in "iu" and not all(isinstance(v, int) and not isinstance(v, bool) for v in _flatten(data)):
            raise BadRequest(f"{where} data", _short(data), f"whole numbers for {datatype}")  # 0.5 is not one
        try:
            with np.errstate(over="raise", invalid="raise"):
                array = np.asarray(data, dtype=DATATYPES[datatype]).reshape(-1)
        except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
            raise BadRequest(f"{where} data", _short(data), f"{datatype} values ({exc})") from None
        if datatype == "BOOL" and not all(isinstance(v, bool) for v in _flatten(data)):
            raise BadRequest(f"{where} data", _short(data), "true/false values for BOOL")
        if kind == "f" and not np.isfinite(array).all():
            raise BadRequest(f"{where} data", _short(data), f"finite values within {datatype}'s range")
    if array.size != count:
        raise BadRequest(f"{where} data", f"{array.size} values", f"{count} values, as its shape says")
    return array


def _from_binary(raw: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise BadRequest(f"{where} binary data", len(raw), "4-byte little-endian lengths each followed by the bytes")
            (n,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4:pos + 4 + n])
            pos += 4 + n
        if pos != len(raw):
            raise BadRequest(f"{where} binary data", len(raw), "4-byte little-endian lengths each followed by the bytes")
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        if len(raw) != count * dtype.itemsize:
            raise BadRequest(f"{where} binary_data_size", len(raw), f"{count * dtype.itemsize} bytes: {count} {datatype} values")
        array = np.frombuffer(raw, dtype=dtype)
    if array.size != count:
        raise BadRequest(f"{where} binary data", f"{array.size} values", f"{count} values, as its shape says")
    return array


def v2_response(model: str, version: str | None, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]],
                parameters: dict[str, Any] | None = None) -> tuple[bytes, int | None]:
    """A v2 infer response body and, when any output is binary, the JSON header's length (for the
    Inference-Header-Content-Length header). `outputs`: (name, array, as binary)."""
    items, chunks = [], []
    for name, array, binary in outputs:
        array = np.asarray(array)
        datatype = datatype_of(array)
        item: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            raw = _to_binary(array, datatype)
            item["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            item["data"] = [_text(v) for v in array.reshape(-1)]
        elif datatype == "FP16":  # as for inputs: half precision cannot travel as JSON (KServe refuses it too)
            raise BadRequest(f"output {name!r}", "FP16 as JSON", 'the binary tensor extension: ask for it with '
                             '{"name": ..., "parameters": {"binary_data": true}} in "outputs"')
        else:
            item["data"] = array.reshape(-1)
        items.append(item)
    doc: dict[str, Any] = {"model_name": model, "outputs": items}
    if version is not None:
        doc["model_version"] = version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        out = bytearray()
        for v in array.reshape(-1):
            b = v if isinstance(v, bytes) else _text(v).encode()
            out += struct.pack("<I", len(b)) + b
        return bytes(out)
    return np.ascontiguousarray(array, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")).tobytes()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _json(body: bytes) -> Any:
    if not body:
        raise BadRequest("body", "", "a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body", _short(body), f"valid JSON ({exc})") from None


def _flatten(data: Any):
    if isinstance(data, list):
        for v in data:
            yield from _flatten(v)
    else:
        yield data


def _short(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
