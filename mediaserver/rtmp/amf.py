"""AMF0 codec, with AMF3 decoding for values behind the AMF0 avmplus marker (0x11).

RTMP command and data messages carry a sequence of AMF values. The decoder treats its
input as hostile: every length and count it reads is checked against `AMFLimits` before
anything is allocated, nesting is bounded (so a Python `RecursionError` cannot happen),
the number of values one call may produce is bounded (so a wide-and-deep "AMF bomb" is
refused), and references are charged for the size of what they point to (so a chain of
references cannot expand into an exponentially large tree). Every decode problem raises
`AMFError`, which the session turns into a closed connection.

References to an object that is still being decoded (cycles) are refused: a cyclic
result would break every consumer that walks it, and no RTMP peer needs one.

One module on purpose, though it is long: the AMF0 and AMF3 decoders share one budget (`AMFLimits`, the
value count, the nesting depth and the reference charges) threaded through both, and splitting them would
put that accounting in two places.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, final

__all__ = [
    "DEFAULT_LIMITS",
    "UNDEFINED",
    "AMFDate",
    "AMFError",
    "AMFLimits",
    "ECMAArray",
    "TypedObject",
    "Undefined",
    "decode_amf0",
    "decode_amf3_command",
    "encode_amf0",
]


class AMFError(ValueError):
    """Malformed or over-limit AMF data. The only exception the decoders raise."""


# Each nesting level costs the decoder about three Python frames; this cap keeps the
# worst case far below the interpreter's default recursion limit of 1000.
_MAX_DEPTH_CAP: Final = 128


@dataclass(frozen=True, slots=True)
class AMFLimits:
    max_string: int = 1 << 20  # bytes in any one string / long string / xml / bytearray
    max_items: int = 65536  # entries declared in one object / ECMA array / strict array
    max_depth: int = 32  # nesting of objects/arrays
    max_total_items: int = 262144  # all values decoded in one call

    def __post_init__(self) -> None:
        for name in ("max_string", "max_items", "max_depth", "max_total_items"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"AMFLimits.{name} must be a non-negative int, got {value!r}")
        if self.max_depth > _MAX_DEPTH_CAP:
            raise ValueError(f"AMFLimits.max_depth must be at most {_MAX_DEPTH_CAP}")


DEFAULT_LIMITS: Final = AMFLimits()


class ECMAArray(dict[str, Any]):
    """An AMF0 ECMA array (0x08): a dict that is re-encoded as an ECMA array, not an object.

    onMetaData is conventionally an ECMA array and some players insist on it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ECMAArray({dict.__repr__(self)})"


@final
class Undefined:
    """The AMF undefined value (AMF0 0x06, AMF3 0x00). Use the `UNDEFINED` singleton."""

    __slots__ = ()
    _instance: ClassVar[Undefined | None] = None

    def __new__(cls) -> Undefined:
        # A singleton, so `value is UNDEFINED` works for every decoded undefined.
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"  # pickles/copies back to the module-level singleton


UNDEFINED: Final = Undefined()


@dataclass
class TypedObject:
    """An object with a class name: AMF0 typed object (0x10) or a named AMF3 object."""

    class_name: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class AMFDate:
    """AMF date: milliseconds since the Unix epoch (UTC) and a timezone offset in minutes.

    The AMF0 spec says the timezone is reserved and should be 0; AMF3 has none.
    """

    milliseconds: float
    timezone: int = 0


# --------------------------------------------------------------------------- decoding

_F64: Final = struct.Struct(">d")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_DATE0: Final = struct.Struct(">dh")

# One entry of a reference table: the decoded value, how many values it counts for
# (itself included) and how many nesting levels it occupies. None while the value is
# still being decoded, so a reference to it (a cycle) can be refused.
_Slot = tuple[Any, int, int] | None


class _Decoder:
    """Cursor over one buffer plus the per-call state: limits, counters, reference tables."""

    __slots__ = (
        "buf",
        "deepest",
        "depth",
        "end",
        "max_depth",
        "max_items",
        "max_string",
        "max_total",
        "objects3",
        "pos",
        "refs0",
        "strings3",
        "total",
        "traits3",
    )

    def __init__(self, data: bytes | bytearray | memoryview, limits: AMFLimits) -> None:
        buf = memoryview(data)
        if buf.ndim != 1 or buf.format != "B":
            buf = buf.cast("B")  # indexing must yield ints
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.max_string = limits.max_string
        self.max_items = limits.max_items
        self.max_depth = limits.max_depth
        self.max_total = limits.max_total_items
        self.depth = 0  # containers currently open
        self.deepest = 0  # deepest level reached inside the innermost open container
        self.total = 0  # values produced so far, references counted at full size
        self.refs0: list[_Slot] = []
        self.strings3: list[str] = []
        self.objects3: list[_Slot] = []
        self.traits3: list[tuple[str, tuple[str, ...], bool]] = []

    # -- primitive reads (each checks the remaining length first)

    def _take(self, n: int) -> int:
        """Advance past n bytes; return where they start."""
        p = self.pos
        q = p + n
        if q > self.end:
            raise AMFError(f"truncated: need {n} bytes at offset {p}, have {self.end - p}")
        self.pos = q
        return p

    def _u8(self) -> int:
        p = self.pos
        if p >= self.end:
            raise AMFError(f"truncated: need 1 byte at offset {p}")
        self.pos = p + 1
        return self.buf[p]

    def _u16(self) -> int:
        value: int = _U16.unpack_from(self.buf, self._take(2))[0]
        return value

    def _u32(self) -> int:
        value: int = _U32.unpack_from(self.buf, self._take(4))[0]
        return value

    def _f64(self) -> float:
        value: float = _F64.unpack_from(self.buf, self._take(8))[0]
        return value

    def _utf8(self, n: int) -> str:
        if n > self.max_string:
            raise AMFError(f"string of {n} bytes exceeds max_string={self.max_string}")
        p = self._take(n)
        # Cameras and old encoders write Latin-1 metadata; a wrong byte is not worth a dropped stream.
        return str(self.buf[p : p + n], "utf-8", "replace")

    def _raw(self, n: int) -> bytes:
        if n > self.max_string:
            raise AMFError(f"byte array of {n} bytes exceeds max_string={self.max_string}")
        p = self._take(n)
        return bytes(self.buf[p : p + n])

    # -- bookkeeping shared by AMF0 and AMF3

    def _count(self, n: int = 1) -> None:
        total = self.total + n
        if total > self.max_total:
            raise AMFError(f"more than max_total_items={self.max_total} values")
        self.total = total

    def _check_declared(self, count: int, what: str) -> None:
        """Refuse a declared element count before allocating or looping for it."""
        if count > self.max_items:
            raise AMFError(f"{what} declares {count} items, max_items={self.max_items}")
        # Every element takes at least one byte, so a count beyond the remaining bytes
        # is a lie; this refuses 2**32-1 without decoding anything.
        if count > self.end - self.pos:
            raise AMFError(f"{what} declares {count} items but only {self.end - self.pos} bytes remain")
        if self.total + count > self.max_total:
            raise AMFError(f"{what} of {count} items exceeds max_total_items={self.max_total}")

    def _enter(self) -> tuple[int, int]:
        """Open a container; returns the state `_leave` needs."""
        depth = self.depth + 1
        if depth > self.max_depth:
            raise AMFError(f"nesting deeper than max_depth={self.max_depth}")
        self.depth = depth
        saved = self.deepest, self.total
        self.deepest = depth
        return saved

    def _leave(self, saved: tuple[int, int]) -> tuple[int, int]:
        """Close a container; returns its (weight, height) for the reference table."""
        outer_deepest, total_before = saved
        height = self.deepest - self.depth + 1
        # +1: the container itself was counted when its marker was read.
        weight = self.total - total_before + 1
        self.deepest = max(self.deepest, outer_deepest)
        self.depth -= 1
        return weight, height

    def _resolve(self, table: list[_Slot], index: int, kind: str) -> Any:
        if index >= len(table):
            raise AMFError(f"{kind} reference {index} out of range (table has {len(table)})")
        slot = table[index]
        if slot is None:
            raise AMFError(f"{kind} reference {index} points at an unfinished value (cycle)")
        value, weight, height = slot
        # Charge the reference as if the value were inlined here, so shared references
        # cannot build a structure that is exponentially larger than the input.
        self._count(weight - 1)  # the reference itself was already counted once
        reach = self.depth + height
        if reach > self.max_depth:
            raise AMFError(f"reference {index} nests deeper than max_depth={self.max_depth}")
        self.deepest = max(self.deepest, reach)
        return value

    def _reserve(self, table: list[_Slot]) -> int:
        # Tables only grow with counted values, so max_total bounds them too.
        index = len(table)
        table.append(None)
        return index

    # -- AMF0

    def value0(self) -> Any:
        p = self.pos
        if p >= self.end:
            raise AMFError(f"truncated: expected a value marker at offset {p}")
        marker = self.buf[p]
        self.pos = p + 1
        if marker == 0x11:  # avmplus: the next value is AMF3 (counted there)
            return self.value3()
        self._count()
        # Ordered by how often each marker shows up in RTMP traffic.
        if marker == 0x02:
            return self._utf8(self._u16())
        if marker == 0x00:
            return self._f64()
        if marker == 0x03:
            return self._object0(None)
        if marker == 0x05:
            return None
        if marker == 0x01:
            return self._u8() != 0
        if marker == 0x08:
            return self._ecma0()
        if marker == 0x0A:
            return self._strict_array0()
        if marker == 0x06:
            return UNDEFINED
        if marker == 0x0C or marker == 0x0F:  # long string, XML document
            return self._utf8(self._u32())
        if marker == 0x10:
            return self._object0(self._utf8(self._u16()))
        if marker == 0x07:
            return self._resolve(self.refs0, self._u16(), "AMF0")
        if marker == 0x0B:
            ms, tz = _DATE0.unpack_from(self.buf, self._take(10))
            return AMFDate(ms, tz)
        if marker == 0x0D:  # "unsupported": a placeholder without payload
            return None
        if marker == 0x09:
            raise AMFError(f"object-end marker outside an object at offset {p}")
        if marker == 0x04 or marker == 0x0E:
            raise AMFError(f"reserved AMF0 marker 0x{marker:02x} at offset {p}")
        raise AMFError(f"unknown AMF0 marker 0x{marker:02x} at offset {p}")

    def _properties0(self, out: dict[str, Any]) -> None:
        """Key/value pairs up to the 00 00 09 end marker (or the end of the buffer)."""
        buf = self.buf
        end = self.end
        n = 0
        while True:
            p = self.pos
            if p == end:
                return  # some encoders omit the end marker on the last value
            if p + 2 > end:
                raise AMFError(f"truncated: property name length at offset {p}")
            klen = buf[p] << 8 | buf[p + 1]
            if klen == 0 and p + 2 < end and buf[p + 2] == 0x09:
                self.pos = p + 3
                return
            self.pos = p + 2
            key = self._utf8(klen)
            n += 1
            if n > self.max_items:
                raise AMFError(f"object has more than max_items={self.max_items} properties")
            out[key] = self.value0()

    def _object0(self, class_name: str | None) -> dict[str, Any] | TypedObject:
        index = self._reserve(self.refs0)
        saved = self._enter()
        values: dict[str, Any] = {}
        self._properties0(values)
        result: dict[str, Any] | TypedObject = values if class_name is None else TypedObject(class_name, values)
        self.refs0[index] = (result, *self._leave(saved))
        return result

    def _ecma0(self) -> ECMAArray:
        self._u32()  # the count is only a hint (often 0); the end marker is authoritative
        index = self._reserve(self.refs0)
        saved = self._enter()
        result = ECMAArray()
        self._properties0(result)
        self.refs0[index] = (result, *self._leave(saved))
        return result

    def _strict_array0(self) -> list[Any]:
        count = self._u32()
        self._check_declared(count, "strict array")
        index = self._reserve(self.refs0)
        saved = self._enter()
        value0 = self.value0
        result = [value0() for _ in range(count)]
        self.refs0[index] = (result, *self._leave(saved))
        return result

    # -- AMF3

    def _u29(self) -> int:
        # Variable length: up to three 7-bit groups with a continuation bit, then a
        # final full byte. At most four iterations, so the loop is fine.
        buf = self.buf
        p = self.pos
        end = self.end
        result = 0
        for _ in range(3):
            if p >= end:
                raise AMFError(f"truncated: U29 at offset {self.pos}")
            b = buf[p]
            p += 1
            if b < 0x80:
                self.pos = p
                return (result << 7) | b
            result = (result << 7) | (b & 0x7F)
        if p >= end:
            raise AMFError(f"truncated: U29 at offset {self.pos}")
        self.pos = p + 1
        return (result << 8) | buf[p]

    def _string3(self) -> str:
        header = self._u29()
        if not header & 1:
            index = header >> 1
            if index >= len(self.strings3):
                raise AMFError(f"AMF3 string reference {index} out of range")
            return self.strings3[index]
        s = self._utf8(header >> 1)
        if s:  # the empty string is never put in the table
            if len(self.strings3) >= self.max_total:
                raise AMFError("AMF3 string table exceeds max_total_items")
            self.strings3.append(s)
        return s

    def value3(self) -> Any:
        marker = self._u8()
        self._count()
        if marker == 0x06:
            return self._string3()
        if marker == 0x04:
            n = self._u29()
            return n - 0x20000000 if n & 0x10000000 else n  # sign-extend 29 bits
        if marker == 0x05:
            return self._f64()
        if marker == 0x0A:
            return self._object3()
        if marker == 0x01:
            return None
        if marker == 0x02:
            return False
        if marker == 0x03:
            return True
        if marker == 0x00:
            return UNDEFINED
        if marker == 0x09:
            return self._array3()
        if marker == 0x08:
            return self._simple3(lambda _h: AMFDate(self._f64()))
        if marker == 0x07 or marker == 0x0B:  # XMLDocument, XML
            return self._simple3(lambda h: self._utf8(h >> 1))
        if marker == 0x0C:
            return self._simple3(lambda h: self._raw(h >> 1))
        if 0x0D <= marker <= 0x11:
            raise AMFError(f"unsupported AMF3 vector/dictionary marker 0x{marker:02x}")
        raise AMFError(f"unknown AMF3 marker 0x{marker:02x} at offset {self.pos - 1}")

    def _simple3(self, read: Callable[[int], Any]) -> Any:
        """Date / XML / ByteArray: a reference, or an inline leaf that enters the table."""
        header = self._u29()
        if not header & 1:
            return self._resolve(self.objects3, header >> 1, "AMF3 object")
        value = read(header)
        self.objects3.append((value, 1, 0))
        return value

    def _array3(self) -> Any:  # list, or dict for a mixed array
        header = self._u29()
        if not header & 1:
            return self._resolve(self.objects3, header >> 1, "AMF3 object")
        dense = header >> 1
        self._check_declared(dense, "AMF3 array")
        index = self._reserve(self.objects3)
        saved = self._enter()
        assoc: dict[str, Any] = {}
        self._dynamic3(assoc, dense, "array")
        value3 = self.value3
        items = [value3() for _ in range(dense)]
        result: list[Any] | dict[str, Any]
        if not assoc:
            result = items
        else:
            # Mixed array: one dict, dense items under their index as a string key.
            assoc.update((str(i), v) for i, v in enumerate(items))
            result = assoc
        self.objects3[index] = (result, *self._leave(saved))
        return result

    def _dynamic3(self, into: dict[str, Any], count: int, what: str) -> None:
        """Key/value pairs up to the empty key (associative array part, dynamic members), counted from `count`."""
        while True:
            key = self._string3()
            if not key:
                return
            count += 1
            if count > self.max_items:
                raise AMFError(f"AMF3 {what} has more than max_items={self.max_items} entries")
            into[key] = self.value3()

    def _object3(self) -> Any:  # dict or TypedObject
        header = self._u29()
        if not header & 1:
            return self._resolve(self.objects3, header >> 1, "AMF3 object")
        if not header & 2:
            ti = header >> 2
            if ti >= len(self.traits3):
                raise AMFError(f"AMF3 traits reference {ti} out of range")
            class_name, sealed, dynamic = self.traits3[ti]
        else:
            if header & 4:
                raise AMFError("externalizable AMF3 objects are not supported")
            dynamic = bool(header & 8)
            count = header >> 4
            self._check_declared(count, "AMF3 object")
            class_name = self._string3()
            sealed = tuple(self._string3() for _ in range(count))
            if len(self.traits3) >= self.max_total:
                raise AMFError("AMF3 traits table exceeds max_total_items")
            self.traits3.append((class_name, sealed, dynamic))
        index = self._reserve(self.objects3)
        saved = self._enter()
        values: dict[str, Any] = {}
        for name in sealed:
            values[name] = self.value3()
        if dynamic:
            self._dynamic3(values, len(sealed), "object")
        result: dict[str, Any] | TypedObject = TypedObject(class_name, values) if class_name else values
        self.objects3[index] = (result, *self._leave(saved))
        return result

    def all0(self) -> list[Any]:
        out: list[Any] = []
        value0 = self.value0
        while self.pos < self.end:
            out.append(value0())
        return out


def _run(data: bytes | bytearray | memoryview, limits: AMFLimits, skip_format_byte: bool) -> list[Any]:
    decoder = _Decoder(data, limits)
    if skip_format_byte and decoder.end and decoder.buf[0] == 0x00:
        decoder.pos = 1
    try:
        return decoder.all0()
    except RecursionError as exc:  # defensive: max_depth is capped well below the limit
        raise AMFError("nesting too deep") from exc
    finally:
        decoder.buf.release()  # let the caller resize a bytearray it passed in


def decode_amf0(data: bytes | bytearray | memoryview, limits: AMFLimits = DEFAULT_LIMITS) -> list[Any]:
    """Decode every AMF0 value in the buffer, in order (an RTMP command message body is a sequence of values)."""
    return _run(data, limits, skip_format_byte=False)


def decode_amf3_command(data: bytes | bytearray | memoryview, limits: AMFLimits = DEFAULT_LIMITS) -> list[Any]:
    """Body of an RTMP message type 17 (AMF3 command): an optional leading 0x00 format byte, then
    AMF0-encoded values (where a value may be 0x11 followed by one AMF3 value). Return the list of values.

    A command starts with its name, a string (0x02, or 0x11 0x06), never with a Number, so a
    leading 0x00 can only be the format byte.
    """
    return _run(data, limits, skip_format_byte=True)


# --------------------------------------------------------------------------- encoding

_NUMBER: Final = struct.Struct(">Bd").pack
_SHORT_STR: Final = struct.Struct(">BH").pack
_LONG_STR: Final = struct.Struct(">BI").pack
_KEY_LEN: Final = struct.Struct(">H").pack
_DATE: Final = struct.Struct(">Bdh").pack
_TRUE: Final = b"\x01\x01"
_FALSE: Final = b"\x01\x00"
_NULL: Final = b"\x05"
_UNDEF: Final = b"\x06"
_OBJECT: Final = b"\x03"
_OBJ_END: Final = b"\x00\x00\x09"
# Our own replies are shallow; this only stops a cyclic structure before RecursionError.
_ENCODE_MAX_DEPTH: Final = 256


def encode_amf0(*values: Any) -> bytes:
    """Encode values one after the other. bool->Boolean, int/float->Number, str->String (Long
    String if >65535 UTF-8 bytes), None->Null, UNDEFINED->Undefined, ECMAArray->ECMA array (0x08),
    other dict/Mapping->Object (0x03), list/tuple->Strict array, TypedObject->0x10, AMFDate->0x0B.
    Raise TypeError for anything else (ValueError for a value AMF0 cannot hold)."""
    out = bytearray()
    for value in values:
        _encode(value, out, 0)
    return bytes(out)


def _int_to_number(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"int {value} is too large for an AMF0 Number") from None


def _encode_str(value: str, out: bytearray) -> None:
    raw = value.encode("utf-8")
    n = len(raw)
    out += _SHORT_STR(0x02, n) if n <= 0xFFFF else _LONG_STR(0x0C, n)
    out += raw


def _encode_props(mapping: Mapping[Any, Any], out: bytearray, depth: int) -> None:
    for key, item in mapping.items():
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"AMF0 property names must be str, not {type(key).__name__}")
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("AMF0 property name longer than 65535 bytes")
        out += _KEY_LEN(len(raw))
        out += raw
        _encode(item, out, depth)
    out += _OBJ_END


def _encode(value: Any, out: bytearray, depth: int) -> None:
    # Exact-type checks first: they are the common case and cheaper than isinstance.
    t = type(value)
    if t is str:
        _encode_str(value, out)
    elif t is float:
        out += _NUMBER(0x00, value)
    elif t is bool:
        out += _TRUE if value else _FALSE
    elif t is int:
        out += _NUMBER(0x00, _int_to_number(value))
    elif value is None:
        out += _NULL
    elif t is dict:
        if depth >= _ENCODE_MAX_DEPTH:
            raise ValueError("structure nested too deeply (cyclic?)")
        out += _OBJECT
        _encode_props(value, out, depth + 1)
    elif t is list or t is tuple:
        if depth >= _ENCODE_MAX_DEPTH:
            raise ValueError("structure nested too deeply (cyclic?)")
        out += _LONG_STR(0x0A, len(value))  # same layout: marker + u32 count
        for item in value:
            _encode(item, out, depth + 1)
    else:
        _encode_other(value, out, depth)


def _encode_other(value: Any, out: bytearray, depth: int) -> None:
    """Markers that are rare in replies, and subclasses of the common types."""
    if value is UNDEFINED:
        out += _UNDEF
    elif isinstance(value, bool):
        out += _TRUE if value else _FALSE
    elif isinstance(value, int):
        out += _NUMBER(0x00, _int_to_number(value))
    elif isinstance(value, float):
        out += _NUMBER(0x00, value)
    elif isinstance(value, str):
        _encode_str(value, out)  # str.encode uses the string data, not __str__
    elif isinstance(value, AMFDate):
        if not -0x8000 <= value.timezone <= 0x7FFF:
            raise ValueError("AMFDate.timezone must fit in a signed 16-bit int")
        out += _DATE(0x0B, float(value.milliseconds), value.timezone)
    elif depth >= _ENCODE_MAX_DEPTH:
        raise ValueError("structure nested too deeply (cyclic?)")
    elif isinstance(value, ECMAArray):
        out += _LONG_STR(0x08, len(value))  # marker + u32 count hint
        _encode_props(value, out, depth + 1)
    elif isinstance(value, TypedObject):
        name = value.class_name.encode("utf-8")
        if len(name) > 0xFFFF:
            raise ValueError("AMF0 class name longer than 65535 bytes")
        out += _SHORT_STR(0x10, len(name))
        out += name
        _encode_props(value.values, out, depth + 1)
    elif isinstance(value, Mapping):
        out += _OBJECT
        _encode_props(value, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        out += _LONG_STR(0x0A, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")
