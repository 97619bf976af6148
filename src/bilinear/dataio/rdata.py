"""A small reader for R's serialization format and R lazy-load databases, standard library only (no R).

Why: Jane Austen's novels reach us offline only inside Debian's ``r-cran-janeaustenr``, whose data is an R
lazy-load database (the natural-text corpus of issue 13, used for PAPER.md C12-C16 on natural text).

Lazy-load database (``<name>.rdx`` + ``<name>.rdb``):
    .rdx   a gzip stream holding one serialized R object: a named list
           ``list(variables = list(<name> = c(offset, length), ...), references = list(...), compressed = TRUE)``
    .rdb   the objects' chunks back to back; the chunk of a variable is ``rdb[offset : offset + length]``:
           a 4-byte big-endian uncompressed length, then a zlib stream (``compressed = TRUE``). The stream
           inflates to one serialized R object of exactly that length.

Serialization (the XDR format, ``"X\\n"``): big-endian 4-byte ints. A header (format version 2 or 3,
writer's and minimal reader's R versions, and for version 3 the writer's native encoding), then one item.
Every item starts with a flags int: the low byte is the R type, bit 8 "is object", bit 9 "has attributes",
bit 10 "has tag", and bits 12+ the "levels" (for strings, the encoding). Vectors follow with their length
(-1 means a long vector: two more ints) and their elements; attributes, when flagged, come after the
elements as a pairlist. Pairlists carry (attributes, tag, car) per node, then their cdr.

Only what data sets need is read: NULL, symbols and references to them, pairlists, strings, and logical,
integer, double, complex, raw and generic vectors. Anything else (closures, environments, ALTREP objects,
bytecode) is a DataError naming the type, as is every truncated or inconsistent byte.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

from bilinear.errors import DataError

# R's SEXPTYPE codes (src/include/Rinternals.h) and the pseudo-types of serialize.c.
NILSXP, SYMSXP, LISTSXP, CHARSXP = 0, 1, 2, 9
LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP = 10, 13, 14, 15, 16, 19, 20, 24
REFSXP, NILVALUE_SXP = 255, 254
TYPE_NAMES = {0: "NULL", 1: "symbol", 2: "pairlist", 3: "closure", 4: "environment", 5: "promise", 6: "call",
              7: "special", 8: "builtin", 9: "CHARSXP", 10: "logical", 13: "integer", 14: "double",
              15: "complex", 16: "character", 17: "...", 19: "list", 20: "expression", 21: "bytecode",
              22: "external pointer", 23: "weak reference", 24: "raw", 25: "S4", 238: "ALTREP",
              239: "attribute pairlist", 240: "attribute call", 241: "base environment",
              242: "empty environment", 247: "base namespace", 248: "namespace", 249: "package",
              250: "persistent reference", 251: "missing argument", 252: "unbound value",
              253: "global environment"}

NA_INTEGER = -(2**31)          # R's NA for integers and logicals
LATIN1_MASK, UTF8_MASK, BYTES_MASK = 1 << 2, 1 << 3, 1 << 1  # CHARSXP encoding levels

_MAX_ELEMENTS = 1 << 31        # a sanity bound on any length read from the stream (a corrupt length fails early)


class RVector(list):
    """An R vector as a Python list (NA is None), with its R type name and its attributes (``names`` ...)."""

    def __init__(self, values, rtype: str, attributes: dict[str, Any] | None = None):
        super().__init__(values)
        self.rtype = rtype
        self.attributes: dict[str, Any] = attributes or {}

    @property
    def names(self) -> list[str] | None:
        return self.attributes.get("names")

    def as_dict(self) -> dict[str, Any]:
        """``{name: element}`` for a vector with a ``names`` attribute (a named list or vector)."""
        names = self.names
        if names is None or len(names) != len(self):
            raise DataError(f"R {self.rtype} vector has no names for its {len(self)} elements")
        return dict(zip(names, self))


class RSymbol(str):
    """An R symbol (a name), kept apart from character strings."""


class _Reader:
    """Cursor over one serialized object's bytes; every read checks the bounds."""

    def __init__(self, buf: bytes, what: str):
        self.buf, self.pos, self.what = memoryview(buf), 0, what
        self.refs: list[Any] = []   # symbols (and, in R, environments) in the order first seen; REFSXP indexes them
        self.encoding = "utf-8"

    def fail(self, msg: str) -> DataError:
        return DataError(f"{self.what}: {msg} (at byte {self.pos}); the R data is corrupt or not a serialized object")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated: needs {n} more bytes, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: the length follows as two ints, upper then lower 32 bits
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) | lo
        if n < 0 or n > _MAX_ELEMENTS:
            raise self.fail(f"impossible vector length {n}")
        return n

    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt, repr(fmt))
            raise DataError(f"{self.what}: serialization format {kind}, only R's XDR format (\"X\\n\") is read")
        version = self.int()
        self.take(8)  # writer's R version, minimal reader's R version: not needed to decode
        if version == 3:
            self.encoding = _python_encoding(bytes(self.take(self.length())).decode("ascii", "replace"))
        elif version != 2:
            raise self.fail(f"unknown serialization version {version}")

    # --- items -------------------------------------------------------------------------------------------

    def item(self) -> Any:
        flags = self.int()
        rtype, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        levels = flags >> 12
        if rtype == NILVALUE_SXP:
            return None
        if rtype == REFSXP:
            index = (flags >> 8) or self.int()  # packed in the flags, or in the next int when too large
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"reference {index} to an object not seen yet")
            return self.refs[index - 1]
        if rtype == SYMSXP:
            name = self.item()  # a CHARSXP
            sym = RSymbol(name if name is not None else "NA")
            self.refs.append(sym)
            return sym
        if rtype == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if rtype == CHARSXP:
            return self.charsxp(levels)
        if rtype in (LGLSXP, INTSXP):
            n = self.length()
            raw = struct.unpack(f">{n}i", self.take(4 * n))
            if rtype == LGLSXP:
                values = [None if v == NA_INTEGER else bool(v) for v in raw]
            else:
                values = [None if v == NA_INTEGER else v for v in raw]
            return self.finish(values, rtype, has_attr)
        if rtype == REALSXP:
            n = self.length()
            return self.finish(list(struct.unpack(f">{n}d", self.take(8 * n))), rtype, has_attr)
        if rtype == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return self.finish([complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)], rtype, has_attr)
        if rtype == STRSXP:
            n = self.length()
            values = []
            for _ in range(n):
                inner = self.int()
                if inner & 0xFF != CHARSXP:
                    raise self.fail(f"a character vector holds a {TYPE_NAMES.get(inner & 0xFF, inner & 0xFF)}")
                values.append(self.charsxp(inner >> 12))
            return self.finish(values, rtype, has_attr)
        if rtype in (VECSXP, EXPRSXP):
            n = self.length()
            return self.finish([self.item() for _ in range(n)], rtype, has_attr)
        if rtype == RAWSXP:
            n = self.length()
            return self.finish([bytes(self.take(n))], rtype, has_attr)
        name = TYPE_NAMES.get(rtype, f"type {rtype}")
        raise self.fail(f"unsupported R object: {name} (only data vectors, lists and pairlists are read)")

    def charsxp(self, levels: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        if n < 0:
            raise self.fail(f"impossible string length {n}")
        raw = bytes(self.take(n))
        if levels & BYTES_MASK:
            return raw.decode("latin-1")  # "bytes" strings carry no encoding; latin-1 maps each byte to itself
        enc = "latin-1" if levels & LATIN1_MASK else "utf-8" if levels & UTF8_MASK else self.encoding
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            raise self.fail(f"a string is not valid {enc}") from None

    def finish(self, values: list, rtype: int, has_attr: bool) -> RVector:
        attrs = self.attributes() if has_attr else {}
        return RVector(values, TYPE_NAMES[rtype], attrs)

    def attributes(self) -> dict[str, Any]:
        pl = self.item()
        if not isinstance(pl, list) or any(not isinstance(t, str) for t, _ in pl):
            raise self.fail("attributes are not a tagged pairlist")
        return {str(tag): value for tag, value in pl}

    def pairlist(self, has_attr: bool, has_tag: bool) -> list[tuple[str | None, Any]]:
        """A pairlist as ``[(tag, value), ...]``; read node by node, not recursively, since they can be long."""
        out: list[tuple[str | None, Any]] = []
        while True:
            if has_attr:
                self.attributes()  # a pairlist node's own attributes: never used by data sets
            tag = self.item() if has_tag else None
            out.append((tag, self.item()))
            flags = self.int()  # the cdr: another node, or the end
            rtype = flags & 0xFF
            if rtype == NILVALUE_SXP:
                return out
            if rtype != LISTSXP:
                raise self.fail(f"a pairlist ends in a {TYPE_NAMES.get(rtype, rtype)}")
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))


def _python_encoding(name: str) -> str:
    """Python's codec for R's native encoding name; unknown names fall back to UTF-8 (R's usual default)."""
    name = name.strip().lower()
    if name in ("latin1", "iso-8859-1", "iso8859-1", "cp1252"):
        return "latin-1" if name != "cp1252" else "cp1252"
    return "utf-8"


def unserialize(buf: bytes, what: str = "R data") -> Any:
    """The R object serialized (XDR, format version 2 or 3) in ``buf``; ``what`` names it in errors.

    Returns None for NULL, an ``RVector`` (a list; NA as None) for vectors and lists, ``[(tag, value)]`` for
    pairlists. Trailing bytes after the object are an error: the caller's framing was wrong.
    """
    r = _Reader(buf, what)
    r.header()
    obj = r.item()
    if r.pos != len(r.buf):
        raise r.fail(f"{len(r.buf) - r.pos} bytes left after the object")
    return obj


def read_rds(path: str | Path) -> Any:
    """A gzip-compressed or plain serialized object from a file (``saveRDS``'s default and .rdx files)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: bad gzip stream ({e})") from None
    return unserialize(raw, str(path))


def lazyload_index(rdx: str | Path) -> dict[str, tuple[int, int]]:
    """``{variable: (offset, length)}`` of a lazy-load database's index file (.rdx)."""
    index = read_rds(rdx)
    if not isinstance(index, RVector) or index.rtype != "list" or not index.names:
        raise DataError(f"{rdx}: not a lazy-load index (expected a named list)")
    parts = index.as_dict()
    variables = parts.get("variables")
    if not isinstance(variables, RVector) or variables.rtype != "list":
        raise DataError(f"{rdx}: lazy-load index has no 'variables' list")
    compressed = parts.get("compressed")
    flag = compressed[0] if isinstance(compressed, RVector) and len(compressed) == 1 else None
    # TRUE (or 1) is zlib; R writes 2 (bzip2) and 3 (xz) with an extra type byte per chunk, which no package
    # we read uses, so they are refused rather than guessed.
    if flag is not True and flag != 1:
        raise DataError(f"{rdx}: lazy-load database compressed with R's type {flag!r}; only zlib (TRUE) is read")
    out = {}
    for name, loc in (variables.as_dict() if variables else {}).items():
        if (not isinstance(loc, RVector) or len(loc) != 2 or any(v is None for v in loc)
                or any(not float(v).is_integer() or v < 0 for v in loc)):
            raise DataError(f"{rdx}: variable {name!r} has no (offset, length) pair")
        out[name] = (int(loc[0]), int(loc[1]))
    return out


def read_lazyload_db(rdx: str | Path, rdb: str | Path | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Every variable (or those in ``names``) of the lazy-load database ``rdx`` / ``rdb``, unserialized.

    ``rdb`` defaults to ``rdx`` with the suffix .rdb. A chunk whose declared length disagrees with its zlib
    stream, or that lies outside the .rdb file, is a DataError naming the variable.
    """
    rdx = Path(rdx)
    rdb = Path(rdb) if rdb is not None else rdx.with_suffix(".rdb")
    index = lazyload_index(rdx)
    wanted = list(index) if names is None else names
    missing = [n for n in wanted if n not in index]
    if missing:
        raise DataError(f"{rdx}: no variable {', '.join(map(repr, missing))} (it has {', '.join(index) or 'none'})")
    try:
        blob = rdb.read_bytes()
    except OSError as e:
        raise DataError(f"{rdb}: cannot read ({e.strerror or e})") from None
    out = {}
    for name in wanted:
        off, n = index[name]
        what = f"{rdb} variable {name!r}"
        if n < 4 or off + n > len(blob):
            raise DataError(f"{what}: chunk [{off}, {off + n}) lies outside the {len(blob)}-byte file (truncated?)")
        chunk = blob[off : off + n]
        (ulen,) = struct.unpack(">I", chunk[:4])
        try:
            raw = zlib.decompress(chunk[4:])
        except zlib.error as e:
            raise DataError(f"{what}: bad zlib stream ({e})") from None
        if len(raw) != ulen:
            raise DataError(f"{what}: inflates to {len(raw)} bytes, its header says {ulen}")
        out[name] = unserialize(raw, what)
    return out
