"""Reading a GGUF file: metadata as a plain dict, tensors as zero-copy views.

The ``gguf`` package memory-maps the file; weight tensors handed to
ggml_sparse point straight into that map, so loading copies nothing and the
OS pages weights in on first use, as llama.cpp does.

A file is validated before any view is made (``check_tensor_table``; no data
is read, the cost is O(number of tensors)): only regular files are opened
(a named pipe would block), every read of the header must lie inside the
file, and each tensor's raw header values must describe a byte range
[offset, offset + nbytes) that is aligned, inside the data section and
disjoint from every other tensor's, computed with Python integers (the
``gguf`` reader adds offsets as numpy uint64, which wraps: an offset of
2**64 - 1 would point just before the data section). The standard metadata
keys must hold their kind of value (``check_metadata_types``) and the
vocabulary must agree with the embedding and output rows
(``check_vocabulary``). Every refusal is a ``ModelLoadError`` naming the
tensor or key.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .config import ModelLoadError   # defined there, free of the C library; raised here
from .tensor import GGMLType

GGUF_MAGIC = b"GGUF"
POWERINFER_MAGIC = b"PWRI"
GGUF_VERSIONS = (2, 3)
MAX_DIMS = 4                # GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLType
    ne: Tuple[int, ...]         # ggml order: ne[0] innermost
    data: np.ndarray            # read-only view into the file map

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _field_value(field) -> Any:
    """A metadata value as Python data. Strings that are not UTF-8 keep their
    undecodable bytes as U+FFFD (llama.cpp keeps the raw bytes; the tokenizer
    reads token texts as bytes from the reader, not from here)."""
    string = _STRING_TYPE()
    if len(field.types) == 2 and field.types[1] == string:
        # arrays of strings (vocabularies): decode the parts directly, ~4x faster
        # than ReaderField.contents()'s per-element conversions
        parts = field.parts
        try:
            return [bytes.decode(parts[i]) for i in field.data]
        except UnicodeDecodeError:
            return [bytes.decode(parts[i], "utf-8", "replace") for i in field.data]
    if field.types == [string]:
        return bytes(field.parts[-1]).decode("utf-8", "replace")
    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _STRING_TYPE():
    from gguf import GGUFValueType
    return GGUFValueType.STRING


def _check_path(path: str) -> bytes:
    """The magic of the GGUF file at `path`, after checking that it is a regular
    file (stat first: opening a named pipe would block until a writer comes)
    with a GGUF or PWRI magic and a version this reader handles."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"Model path does not exist: {path}") from None
    except (OSError, ValueError) as e:      # ValueError: a NUL in the path
        raise ModelLoadError(f"Failed to load model from file: {path} ({e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise ModelLoadError(f"Failed to load model from file: {path} (not a regular file: {kind})")
    # O_NONBLOCK: should the path have become a pipe since the stat, open() still returns
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:                    # permission denied, ...
        raise ModelLoadError(f"Failed to load model from file: {path} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelLoadError(f"Failed to load model from file: {path} (not a regular file)")
        head = f.read(8)
    magic = head[:4]
    if magic not in (GGUF_MAGIC, POWERINFER_MAGIC):
        raise ModelLoadError(f"Failed to load model from file: {path} (not a GGUF file: magic {magic!r})")
    if len(head) < 8:
        raise ModelLoadError(f"Failed to load model from file: {path} (the file ends inside its header)")
    version, = struct.unpack("<I", head[4:])
    if version not in GGUF_VERSIONS:
        why = (" (a big-endian file? only little-endian GGUF is supported)"
               if version and version & 0xFFFF == 0 else "")
        raise ModelLoadError(f"Failed to load model from file: {path} (GGUF version {version} is not "
                             f"supported: {' and '.join(map(str, GGUF_VERSIONS))} are){why}")
    return magic


@dataclass(frozen=True)
class RawTensorInfo:
    """One entry of a GGUF tensor table, as stored (before any view is made)."""
    name: str
    dims: Tuple[int, ...]       # ggml ne order, as read (each a uint64)
    type: int                   # raw ggml type id
    offset: int                 # from the start of the data section


def check_tensor_table(infos: Sequence[RawTensorInfo], data_size: int, alignment: int) -> List[int]:
    """Check a tensor table against the data section it points into; returns every
    tensor's size in bytes. Python integers throughout: nothing wraps.

    Refused (ModelLoadError, naming the tensor): more than 4 or no dimensions; an
    element count of 2**63 or more (llama.cpp's INT64_MAX bound); a type the
    ``gguf`` package does not know; rows (ne[0]) that are not a whole number of
    the type's blocks; an offset that is not a multiple of `alignment`; a byte
    range that ends past `data_size`; two byte ranges that overlap. A tensor of
    zero elements is allowed (llama.cpp allows it; GPU index files hold empty
    ``gpu_bucket`` tensors) and occupies no bytes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    sizes, ranges = [], []
    for t in infos:
        what = f"tensor '{t.name}'"
        if not 1 <= len(t.dims) <= MAX_DIMS:
            raise ModelLoadError(f"{what} has {len(t.dims)} dimensions (1 to {MAX_DIMS} are allowed)")
        n = 1
        for d in t.dims:
            n *= d
        if n >= 1 << 63:
            raise ModelLoadError(f"{what} has shape {list(t.dims)}: 2**63 elements or more")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type)]
        except (ValueError, KeyError):
            raise ModelLoadError(f"{what} has unknown ggml type {t.type}") from None
        if t.dims[0] % block:
            raise ModelLoadError(f"{what} of type {GGMLQuantizationType(t.type).name} has rows of "
                                 f"{t.dims[0]} elements, not a multiple of its block size {block}")
        nbytes = n // block * type_size
        if t.offset % alignment:
            raise ModelLoadError(f"{what} has offset {t.offset}, not a multiple of the alignment {alignment}")
        if t.offset + nbytes > data_size:
            raise ModelLoadError(f"{what} data [{t.offset}, {t.offset + nbytes}) is not within the file "
                                 f"bounds: the data section holds {data_size} bytes (corrupted or incomplete)")
        sizes.append(nbytes)
        if nbytes:
            ranges.append((t.offset, t.offset + nbytes, t.name))
    ranges.sort()
    for (_, prev_end, prev), (start, end, name) in zip(ranges, ranges[1:]):
        if start < prev_end:
            raise ModelLoadError(f"tensors '{prev}' and '{name}' overlap: both hold bytes from {start} "
                                 f"to {min(end, prev_end)} of the data section")
    return sizes


# Standard keys and the kind of value each must hold (llama.cpp's get_key refuses another type:
# "key ... has wrong type"); "{arch}." is general.architecture. Head counts and the FFN length
# may also be per-layer arrays in llama.cpp: ModelConfig checks those.
_KEY_KINDS = {
    "general.architecture": str, "general.name": str, "tokenizer.ggml.model": str,
    "tokenizer.ggml.pre": str, "tokenizer.chat_template": str, "{arch}.rope.scaling.type": str,
    "{arch}.context_length": int, "{arch}.embedding_length": int, "{arch}.block_count": int,
    "{arch}.vocab_size": int, "{arch}.pooling_type": int, "{arch}.rope.dimension_count": int,
    "{arch}.attention.key_length": int, "{arch}.attention.value_length": int,
    "{arch}.rope.scaling.original_context_length": int, "split.vram_capacity": int,
    "tokenizer.ggml.bos_token_id": int, "tokenizer.ggml.eos_token_id": int,
    "tokenizer.ggml.unknown_token_id": int, "tokenizer.ggml.padding_token_id": int,
    "{arch}.rope.freq_base": float, "{arch}.rope.scaling.factor": float,
    "{arch}.attention.layer_norm_rms_epsilon": float, "powerinfer.sparse_threshold": float,
    "tokenizer.ggml.add_bos_token": bool, "tokenizer.ggml.add_eos_token": bool,
    "tokenizer.ggml.add_space_prefix": bool,
}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def check_metadata_types(metadata: Dict[str, Any]) -> None:
    """Every standard key present holds its kind of value (see _KEY_KINDS; named chat
    templates ``tokenizer.chat_template.NAME`` are strings too), so that the code reading
    them (``int(md[...])``, a template compiler) meets no list, string or infinity."""
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else "general.architecture"   # (refused below)
    kinds = {k.replace("{arch}", arch): kind for k, kind in _KEY_KINDS.items()}
    for key, value in metadata.items():
        kind = kinds.get(key, str if key.startswith("tokenizer.chat_template.") else None)
        if kind is None:
            continue
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            text = repr(value)
            raise ModelLoadError(f"metadata key '{key}' must be {_KIND_NAMES[kind]}, found "
                                 f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}")


def check_vocabulary(metadata: Dict[str, Any], tensors: Dict[str, "TensorInfo"]) -> None:
    """The vocabulary (``tokenizer.ggml.tokens``) agrees with ``{arch}.vocab_size``
    and with the rows (ne[1]) of ``token_embd.weight`` and ``output.weight`` when
    the file has them, as llama.cpp requires (its ``check_tensor_dims``: "tensor
    'token_embd.weight' has wrong shape"). A file without a vocabulary (a GPU
    index) has nothing to check."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    if not isinstance(tokens, list):
        raise ModelLoadError(f"tokenizer.ggml.tokens must be an array of strings, "
                             f"found {type(tokens).__name__}")
    n = len(tokens)
    key = f"{metadata.get('general.architecture')}.vocab_size"
    declared = metadata.get(key, n)
    if declared != n:
        raise ModelLoadError(f"metadata key '{key}' is {declared!r}, but tokenizer.ggml.tokens "
                             f"holds {n} tokens")
    for name in ("token_embd.weight", "output.weight"):
        t = tensors.get(name)
        if t is not None and (len(t.ne) != 2 or t.ne[1] != n):
            raise ModelLoadError(f"tensor '{name}' has shape {list(t.ne)}, expected [n_embd, {n}]: "
                                 f"one row per token of the vocabulary (tokenizer.ggml.tokens)")


class GGUFFile:
    """An open GGUF (or PowerInfer ``PWRI``) file."""

    def __init__(self, path: str, load_tokenizer_arrays: bool = True):
        magic = _check_path(path)
        self.path = path
        self.is_powerinfer = magic == POWERINFER_MAGIC
        try:
            self.reader = _open_reader(path, self.is_powerinfer)
        except (ValueError, IndexError, KeyError, OSError, OverflowError, struct.error) as e:
            # struct.error: a truncated file; OverflowError: a length of 2**63 or more
            raise ModelLoadError(f"Failed to load model from file: {path} ({e})") from e
        self.metadata: Dict[str, Any] = {}
        for name, field in self.reader.fields.items():
            if name.startswith("GGUF."):
                continue
            try:
                self.metadata[name] = _field_value(field)
            except (ValueError, IndexError, TypeError) as e:
                raise ModelLoadError(f"Failed to load model from file: {path} "
                                     f"(metadata key '{name}' cannot be read: {e})") from None
        self.tensors: Dict[str, TensorInfo] = {}
        for t in self.reader.tensors:
            try:
                ttype = GGMLType(int(t.tensor_type))
            except ValueError:
                raise ModelLoadError(f"tensor '{t.name}' has type {t.tensor_type!r}, "
                                     "which pyinfer does not support") from None
            self.tensors[t.name] = TensorInfo(t.name, ttype, tuple(int(x) for x in t.shape), t.data)
        try:
            check_metadata_types(self.metadata)
            check_vocabulary(self.metadata, self.tensors)
        except ModelLoadError as e:
            raise ModelLoadError(f"Failed to load model from file: {path} ({e})") from None

    def get(self, name: str) -> Optional[TensorInfo]:
        return self.tensors.get(name)

    def require(self, name: str, ne: Optional[Tuple[int, ...]] = None) -> TensorInfo:
        t = self.tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{self.path}: missing tensor '{name}'")
        if ne is not None and tuple(t.ne) != tuple(ne):
            raise ModelLoadError(f"{self.path}: tensor '{name}' has shape {list(t.ne)}, expected {list(ne)}")
        return t

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _open_reader(path: str, powerinfer: bool):
    return _make_reader_class()(path, powerinfer)


_READER_CLASS = None


class _Bytes(bytes):
    """A string part of a metadata array: bytes with the memoryview/ndarray
    ``tobytes()`` that gguf's ``ReaderField.contents()`` calls."""
    __slots__ = ()

    def tobytes(self) -> bytes:
        return bytes(self)


def _make_reader_class():
    """gguf.GGUFReader with these changes: it accepts PowerInfer's PWRI magic
    (the rest of such a file is GGUF); every header read must lie inside the
    file (the stock reader silently returns short arrays there); arrays of
    arrays are refused (as llama.cpp does); the tensor table is checked by
    ``check_tensor_table`` before any view is made; and metadata arrays are
    parsed in one pass instead of one numpy view per element (a 49k-token
    vocabulary takes ~2 s the stock way, ~0.05 s this way), each string as a
    small bytes copy rather than a view (a view object costs ~180 bytes: 35 MB
    of peak memory for a 49k vocabulary with 49k merges). Fields keep the stock
    layout, so ``field.contents()`` works unchanged."""
    global _READER_CLASS
    if _READER_CLASS is not None:
        return _READER_CLASS
    import gguf
    from gguf import GGUFValueType

    class Reader(gguf.GGUFReader):
        def __init__(self, path, powerinfer):
            self._powerinfer = powerinfer
            self._raw = None
            super().__init__(path, "r")
            self._raw = None

        def _get(self, offset, dtype, count=1, override_order=None):
            out = super()._get(offset, dtype, count, override_order)
            if out.size != int(count):
                raise ValueError(f"the file ends inside its header (reading {int(count)} x "
                                 f"{np.dtype(dtype).name} at byte {offset} of {len(self.data)})")
            if self._powerinfer and offset == 0 and override_order == "<":
                return np.array([gguf.GGUF_MAGIC], dtype=np.uint32)
            return out

        def _get_field_parts(self, orig_offs, raw_type):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            offs = orig_offs + 12
            itype = GGUFValueType(int(raw_itype[0]))
            n = int(alen[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                arr = self._get(offs, nptype, n)
                return 12 + int(arr.nbytes), [raw_itype, alen, arr], [2], [GGUFValueType.ARRAY, itype]
            if itype != GGUFValueType.STRING:
                raise ValueError(f"an array of {itype.name} at byte {orig_offs}: "
                                 "arrays of arrays are not supported")
            if self._raw is None:
                self._raw = memoryview(self.data)
            raw = self._raw
            size = len(raw)
            if n > (size - offs) // 8:
                raise ValueError(f"an array of {n} strings at byte {orig_offs} cannot fit in the file")
            parts = [raw_itype, alen]
            length = _Bytes(b"\0" * 8)   # length parts are never read: one shared placeholder
            unpack = struct.Struct("<Q").unpack_from
            append = parts.append
            try:
                for _ in range(n):
                    slen, = unpack(raw, offs)
                    offs += 8
                    append(length)
                    append(_Bytes(raw[offs:offs + slen]))
                    offs += slen
            except (struct.error, OverflowError):   # a string ran past the end (or past 2**63)
                offs = size + 1
            if offs > size:         # (only the last one can end outside the file unnoticed)
                raise ValueError(f"the array of {n} strings at byte {orig_offs} runs past the end of the file")
            idxs = list(range(3, len(parts), 2))
            return offs - orig_offs, parts, idxs, [GGUFValueType.ARRAY, GGUFValueType.STRING]

        def _build_tensors(self, start_offs, fields):
            infos = []
            for i, field in enumerate(fields):
                _, name_data, _, dims, raw_dtype, offset = field.parts
                try:
                    name = bytes(name_data).decode("utf-8")
                except UnicodeDecodeError:
                    raise ModelLoadError(f"tensor {i} has a name that is not UTF-8: "
                                         f"{bytes(name_data)[:64]!r}") from None
                infos.append(RawTensorInfo(name, tuple(dims.tolist()), int(raw_dtype[0]), int(offset[0])))
            if infos and start_offs > len(self.data):
                raise ModelLoadError(f"the file ends before its data section (byte {start_offs})")
            check_tensor_table(infos, len(self.data) - start_offs, int(self.alignment))
            super()._build_tensors(start_offs, fields)

    _READER_CLASS = Reader
    return Reader
