"""A GGUF codec for tests, written from the format description and independent of the `gguf`
package and of pyinfer: `parse(bytes)` gives the header, the key/values, the tensor table and the
data section as plain Python values; `serialize(g)` writes them back and returns, beside the
bytes, where every integer field of the header went (`Field`: byte offset, size, label), so tests
can corrupt one field with any value, including the ones a writer would never produce.

    g = parse(open("m.gguf", "rb").read())
    g.tensor("blk.0.attn_q.weight").offset = 2**64 - 1
    data, fields = serialize(g)

Layout (little-endian): magic[4] version:u32 n_tensors:u64 n_kv:u64; n_kv times key:str
type:u32 value (array: item_type:u32 count:u64 items); n_tensors times name:str n_dims:u32
dims:u64[n_dims] type:u32 offset:u64; padding to `general.alignment` (default 32); data.
A string is a u64 length and that many bytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
                  BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
DEFAULT_ALIGNMENT = 32


@dataclass
class KV:
    key: bytes
    type: int
    value: Any                      # int/float/bool, bytes (STRING), list (ARRAY)
    item_type: Optional[int] = None  # ARRAY only


@dataclass
class Tensor:
    name: bytes
    dims: List[int]                 # ggml order: dims[0] innermost
    type: int
    offset: int                     # from the start of the data section


@dataclass
class Field:
    offset: int                     # byte offset in the serialized file
    size: int                       # bytes (4 or 8)
    label: str                      # e.g. "tensor[3].offset", "kv[2].array_len"


@dataclass
class RawGGUF:
    magic: bytes
    version: int
    kvs: List[KV]
    tensors: List[Tensor]
    data: bytes                     # the data section (after the alignment padding)
    n_tensors: Optional[int] = None  # header counts to write instead of the real ones
    n_kv: Optional[int] = None
    extra: bytes = field(default=b"")   # bytes between the tensor table and the padding

    def kv(self, key: str) -> KV:
        return next(kv for kv in self.kvs if kv.key == key.encode())

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name.encode())

    @property
    def alignment(self) -> int:
        for kv in self.kvs:     # (a zero, which a reader must refuse, pads as the default)
            if kv.key == b"general.alignment" and kv.type == U32 and kv.value > 0:
                return kv.value
        return DEFAULT_ALIGNMENT


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        v, = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> bytes:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string past the end")
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, t: int):
        if t == STRING:
            return self.string()
        return self.take(SCALAR_FORMATS[t])


def parse(buf: bytes) -> RawGGUF:
    """Parse a well-formed GGUF (GGUF or PWRI magic)."""
    r = _Reader(buf)
    magic = buf[:4]
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        key, t = r.string(), r.take("<I")
        if t == ARRAY:
            it, n = r.take("<I"), r.take("<Q")
            kvs.append(KV(key, t, [r.value(it) for _ in range(n)], it))
        else:
            kvs.append(KV(key, t, r.value(t)))
    tensors = []
    for _ in range(n_tensors):
        name, nd = r.string(), r.take("<I")
        dims = [r.take("<Q") for _ in range(nd)]
        tensors.append(Tensor(name, dims, r.take("<I"), r.take("<Q")))
    g = RawGGUF(magic, version, kvs, tensors, b"")
    start = -(-r.pos // g.alignment) * g.alignment
    g.data = buf[start:]
    return g


class _Writer:
    def __init__(self):
        self.out = bytearray()
        self.fields: List[Field] = []

    def put(self, fmt: str, v, label: Optional[str] = None):
        size = struct.calcsize(fmt)
        if label is not None:
            self.fields.append(Field(len(self.out), size, label))
        if fmt[1] in "BHIQbhiq":        # integers wrap to the field's width, as in C
            v = int(v) & ((1 << 8 * size) - 1)
            if fmt[1].islower() and v >> (8 * size - 1):
                v -= 1 << 8 * size
        self.out += struct.pack(fmt, v)

    def string(self, s: bytes, label: str):
        self.put("<Q", len(s), label)
        self.out += s

    def value(self, t: int, v, label: str):
        if t == STRING:
            self.string(v, label + ".len")
        else:
            self.put(SCALAR_FORMATS[t], v, label if t in (U32, I32, U64, I64) else None)


def serialize(g: RawGGUF) -> Tuple[bytes, List[Field]]:
    """The file's bytes and the location of every integer field of its header. The data
    section is placed at the next multiple of `g.alignment` after the tensor table."""
    w = _Writer()
    w.out += g.magic
    w.put("<I", g.version, "header.version")
    w.put("<Q", len(g.tensors) if g.n_tensors is None else g.n_tensors, "header.n_tensors")
    w.put("<Q", len(g.kvs) if g.n_kv is None else g.n_kv, "header.n_kv")
    for i, kv in enumerate(g.kvs):
        w.string(kv.key, f"kv[{i}].key_len")
        w.put("<I", kv.type, f"kv[{i}].type")
        if kv.type == ARRAY:
            w.put("<I", kv.item_type, f"kv[{i}].item_type")
            w.put("<Q", len(kv.value), f"kv[{i}].array_len")
            for j, v in enumerate(kv.value):     # fields: the first 8 items (vocabularies are long)
                if j < 8:
                    w.value(kv.item_type, v, f"kv[{i}].item[{j}]")
                else:
                    _put_unlabelled(w, kv.item_type, v)
        else:
            w.value(kv.type, kv.value, f"kv[{i}].value")
    for i, t in enumerate(g.tensors):
        w.string(t.name, f"tensor[{i}].name_len")
        w.put("<I", len(t.dims), f"tensor[{i}].n_dims")
        for j, d in enumerate(t.dims):
            w.put("<Q", d, f"tensor[{i}].dim[{j}]")
        w.put("<I", t.type, f"tensor[{i}].type")
        w.put("<Q", t.offset, f"tensor[{i}].offset")
    w.out += g.extra
    w.out += b"\0" * (-len(w.out) % g.alignment)
    w.out += g.data
    return bytes(w.out), w.fields


def _put_unlabelled(w: _Writer, t: int, v) -> None:
    if t == STRING:
        w.out += struct.pack("<Q", len(v)) + v
    else:
        w.put(SCALAR_FORMATS[t], v)
