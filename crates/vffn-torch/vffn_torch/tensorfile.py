"""safetensors files exactly as vffn writes and checks them (crates/model/src/checkpoint.rs:
`write_tensors`, `read_tensors_checked`).

Every file carries, in its metadata key `checksums`, a JSON object from each tensor's name to a
64-bit content hash of its dtype, shape and bytes, plus `__metadata__` -> the hash of the other
metadata; the header is canonical JSON (`__metadata__` first, then the tensors by name, keys
sorted, no spaces) padded with spaces to a multiple of 8 bytes, the data laid out by name. So
the same tensors give the same bytes as vffn's writer, and vffn verifies what is written here.
"""
from __future__ import annotations

import json

import numpy as np

CHECKSUMS_KEY = "checksums"
# The entry of `checksums` covering the metadata other than the checksums themselves.
METADATA_CHECKSUM = "__metadata__"
MISSING_CHECKSUMS = (
    f"metadata `{CHECKSUMS_KEY}`: missing (the file was written by an older vffn or by another "
    "tool, without the content checksums vffn requires; vffn_torch can re-save it: "
    "`vffn_torch.save(vffn_torch.load(PATH, require_checksums=False), DIR)`)"
)

_MASK = (1 << 64) - 1
_ODD = 0x9E3779B97F4A7C15
_TENSOR_SEED = 0x7666666E
_METADATA_SEED = 0x6D657461


class TensorFileError(ValueError):
    """A file that is not a valid vffn tensor file; the message names the tensor or key."""


def _step(state: int, word: int) -> int:
    x = ((state ^ word) * _ODD) & _MASK
    return ((x << 29) | (x >> 35)) & _MASK


def hash_bytes(state: int, data) -> int:
    """vffn's 64-bit content hash: each little-endian 8-byte word (the last one zero-padded,
    present even when empty) goes through (state ^ word) * ODD, rotated left by 29; the byte
    length is mixed in last."""
    data = memoryview(data).cast("B")
    whole = len(data) - len(data) % 8
    mask, odd = _MASK, _ODD
    for word in np.frombuffer(data[:whole], dtype="<u8").tolist():
        x = ((state ^ word) * odd) & mask
        state = ((x << 29) | (x >> 35)) & mask
    state = _step(state, int.from_bytes(bytes(data[whole:]), "little"))
    return _step(state, len(data))


def tensor_checksum(dtype: str, shape, data) -> str:
    """The checksum of one tensor (dtype name as in the header, shape, raw bytes): 16 hex digits."""
    state = hash_bytes(_TENSOR_SEED, dtype.encode())
    for dim in shape:
        state = hash_bytes(state, int(dim).to_bytes(8, "little"))
    return f"{hash_bytes(state, data):016x}"


def metadata_checksum(metadata: dict) -> str:
    """The checksum of string metadata (keys and values in key order): 16 hex digits."""
    state = _METADATA_SEED
    for key in sorted(metadata):
        state = hash_bytes(hash_bytes(state, key.encode()), metadata[key].encode())
    return f"{state:016x}"


def _compact(value) -> str:
    """serde_json's compact form of a parsed JSON value with its object keys sorted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def canonical_header(header: dict) -> str | None:
    """The header JSON as vffn writes it, or None when `__metadata__` is not a map of strings
    (vffn's `canonical_header` then leaves the metadata out, which never matches a file)."""
    header = dict(header)
    metadata = header.pop("__metadata__", None)
    tensors = _compact(header)[1:-1]
    if metadata is None:
        return "{" + tensors + "}"
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    separator = "," if tensors else ""
    return '{"__metadata__":' + _compact(metadata) + separator + tensors + "}"


def write_tensors(tensors: dict, metadata: dict) -> bytes:
    """{name: little-endian f32 numpy array} and {key: str} as the bytes vffn's `write_tensors`
    gives for the same tensors and metadata."""
    if CHECKSUMS_KEY in metadata:
        raise TensorFileError(f"metadata `{CHECKSUMS_KEY}`: reserved key given as metadata")
    checksums = {METADATA_CHECKSUM: metadata_checksum(metadata)}
    header: dict = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        blob = array.tobytes()
        checksums[name] = tensor_checksum("F32", array.shape, blob)
        header[name] = {"data_offsets": [offset, offset + len(blob)], "dtype": "F32", "shape": list(array.shape)}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = dict(metadata, **{CHECKSUMS_KEY: _compact(checksums)})
    head = canonical_header(header).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def read_tensors(data: bytes, *, require_checksums: bool = True) -> tuple[dict, dict]:
    """(tensors {name: (dtype, shape, raw bytes)}, metadata without `checksums`) of a tensor
    file, with the checksums verified as vffn does: header in canonical form, metadata and
    every tensor matching its entry. Without `checksums` the file is refused unless
    `require_checksums` is false. The container itself must already have been validated
    (offsets within the file and matching the shapes): `safetensors` does that."""
    if len(data) < 8:
        raise TensorFileError("header: unreadable length (the file is corrupted)")
    length = int.from_bytes(data[:8], "little")
    region = bytes(data[8 : 8 + length])
    try:
        header = json.loads(region)
    except ValueError as err:
        raise TensorFileError(f"header is not JSON ({err}) (the file is corrupted)") from err
    if not isinstance(header, dict):
        raise TensorFileError("header is not a JSON object (the file is corrupted)")
    metadata = dict(header.get("__metadata__") or {})
    start = 8 + length
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            begin, end = info["data_offsets"]
            tensors[name] = (info["dtype"], tuple(info["shape"]), memoryview(data)[start + begin : start + end])
    checksums_json = metadata.pop(CHECKSUMS_KEY, None)
    if checksums_json is None:
        if require_checksums:
            raise TensorFileError(MISSING_CHECKSUMS)
        return tensors, metadata
    try:
        checksums = json.loads(checksums_json)
    except ValueError:
        checksums = None
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise TensorFileError("header: metadata `checksums` is not a JSON object of strings (the file is corrupted)")
    canonical = canonical_header(header)
    if canonical is None or canonical.encode() != region.rstrip(b" "):
        raise TensorFileError("header: not in the form vffn writes (the file is corrupted)")
    if checksums.get(METADATA_CHECKSUM) != metadata_checksum(metadata):
        raise TensorFileError("header: metadata does not match its checksum (the file is corrupted)")
    if len(checksums) != len(tensors) + 1:
        raise TensorFileError("header: the checksums list other tensors than the file holds (the file is corrupted)")
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        if checksums.get(name) != tensor_checksum(dtype, shape, raw):
            raise TensorFileError(f"tensor `{name}`: content does not match its checksum (the file is corrupted)")
    return tensors, metadata
