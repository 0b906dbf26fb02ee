"""Modbus register codec: typed values to and from 16-bit registers. Pure, no IO.

Covers the SunSpec point types and the types a vendor register map names. Multi-register values
are big-endian within each register (Modbus); the order of the registers ("word order") is
either high word first (SunSpec, most devices) or low word first (some vendors).

SunSpec marks an unimplemented point with a sentinel (SunSpec Modbus spec, "not implemented"
values); ``decode`` returns None for it when asked to honour sentinels, so a missing reading is
never mistaken for a real 0 or -32768.

Every point type the SunSpec model definitions use is known here (``RegType``), including the
communication-board types of models 10-19 (``eui48``, ``ipaddr``, ``ipv6addr``): a model this
controller never reads must still load, or discovery could not walk past it (issue 16, item 1).
A value that cannot be encoded (out of range, not finite, the wrong kind) is refused with
``EncodingError``, a ``ProtocolError``: never a bare ValueError or OverflowError that the link
does not catch (issue 16, item 4).
"""

from __future__ import annotations

import enum
import ipaddress
import math
import struct
from collections.abc import Sequence
from fractions import Fraction

from controller.errors import ProtocolError


class EncodingError(ProtocolError, ValueError):
    """A value that does not fit its register type; the write is refused.

    A ValueError too, so that callers written against ``encode``'s earlier contract still work."""


class RegType(enum.Enum):
    """The SunSpec point types (the "type" of every point in the SunSpec model JSON) plus
    float64 and bitfield64, which no model shipped by pysunspec2 1.3 uses yet but the SunSpec
    type table names: a newer definition set must not stop the loader."""

    U16 = "uint16"
    I16 = "int16"
    U32 = "uint32"
    I32 = "int32"
    U64 = "uint64"
    I64 = "int64"
    F32 = "float32"
    F64 = "float64"
    ACC16 = "acc16"
    ACC32 = "acc32"
    ACC64 = "acc64"
    ENUM16 = "enum16"
    ENUM32 = "enum32"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    BITFIELD64 = "bitfield64"
    SUNSSF = "sunssf"
    STRING = "string"
    PAD = "pad"
    COUNT = "count"  # SunSpec repeat count: an unsigned 16-bit value
    IPADDR = "ipaddr"  # IPv4 address, 2 registers (models 12, 14: not implemented = 0)
    IPV6ADDR = "ipv6addr"  # IPv6 address, 8 registers (not implemented = all 0)
    EUI48 = "eui48"  # MAC address, 4 registers: a pad word, then 6 bytes (models 11, 16)


class WordOrder(enum.Enum):
    HIGH_FIRST = "high_first"  # SunSpec and most devices: ABCD
    LOW_FIRST = "low_first"  # some vendors: CDAB


_WORDS: dict[RegType, int] = {
    RegType.U16: 1,
    RegType.I16: 1,
    RegType.ENUM16: 1,
    RegType.BITFIELD16: 1,
    RegType.SUNSSF: 1,
    RegType.ACC16: 1,
    RegType.PAD: 1,
    RegType.COUNT: 1,
    RegType.U32: 2,
    RegType.I32: 2,
    RegType.F32: 2,
    RegType.ACC32: 2,
    RegType.ENUM32: 2,
    RegType.BITFIELD32: 2,
    RegType.IPADDR: 2,
    RegType.U64: 4,
    RegType.I64: 4,
    RegType.ACC64: 4,
    RegType.BITFIELD64: 4,
    RegType.F64: 4,
    RegType.EUI48: 4,
    RegType.IPV6ADDR: 8,
}

_SIGNED = {RegType.I16, RegType.SUNSSF, RegType.I32, RegType.I64}

# SunSpec "not implemented" values, by type (SunSpec Modbus specification, data types table).
_NOT_IMPLEMENTED: dict[RegType, int] = {
    RegType.I16: 0x8000,
    RegType.SUNSSF: 0x8000,
    RegType.U16: 0xFFFF,
    RegType.ENUM16: 0xFFFF,
    RegType.BITFIELD16: 0xFFFF,
    RegType.COUNT: 0xFFFF,
    RegType.ACC16: 0,
    RegType.I32: 0x8000_0000,
    RegType.U32: 0xFFFF_FFFF,
    RegType.ENUM32: 0xFFFF_FFFF,
    RegType.BITFIELD32: 0xFFFF_FFFF,
    RegType.ACC32: 0,
    RegType.I64: 0x8000_0000_0000_0000,
    RegType.U64: 0xFFFF_FFFF_FFFF_FFFF,
    RegType.ACC64: 0,
    RegType.BITFIELD64: 0xFFFF_FFFF_FFFF_FFFF,
    RegType.IPADDR: 0,
    RegType.IPV6ADDR: 0,
    # eui48: the 48 address bits all ones (FF:FF:FF:FF:FF:FF); the pad word is not compared.
    RegType.EUI48: 0xFFFF_FFFF_FFFF,
}
_F32_NAN_BITS = 0x7FC0_0000
_F64_NAN_BITS = 0x7FF8_0000_0000_0000
_EUI48_MASK = 0xFFFF_FFFF_FFFF


_FLOAT_FORMATS: dict[RegType, str] = {RegType.F32: ">f", RegType.F64: ">d"}
_FLOAT_NAN_BITS: dict[RegType, int] = {RegType.F32: _F32_NAN_BITS, RegType.F64: _F64_NAN_BITS}


def words_of(reg_type: RegType, string_words: int = 0) -> int:
    """How many registers a value of this type occupies."""
    if reg_type is RegType.STRING:
        if string_words <= 0:
            raise EncodingError("a string needs its length in registers")
        return string_words
    return _WORDS[reg_type]


def _check_registers(registers: Sequence[int], count: int) -> None:
    if len(registers) != count:
        raise ProtocolError(f"expected {count} registers, got {len(registers)}")
    for reg in registers:
        if not 0 <= reg <= 0xFFFF:
            raise ProtocolError(f"register value {reg} is not a 16-bit word")


def _join(registers: Sequence[int], order: WordOrder) -> int:
    words = list(registers) if order is WordOrder.HIGH_FIRST else list(reversed(registers))
    value = 0
    for word in words:
        value = (value << 16) | word
    return value


def _split(value: int, count: int, order: WordOrder) -> list[int]:
    words = [(value >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]
    return words if order is WordOrder.HIGH_FIRST else list(reversed(words))


def _decode_float(unsigned: int, reg_type: RegType, sunspec_sentinels: bool) -> float | None:
    fmt = _FLOAT_FORMATS[reg_type]
    (value,) = struct.unpack(fmt, unsigned.to_bytes(struct.calcsize(fmt), "big"))
    # SunSpec: float32 0x7FC00000 / float64 0x7FF8000000000000 (a quiet NaN) is not implemented;
    # any other NaN is no reading either.
    return None if sunspec_sentinels and math.isnan(value) else float(value)


def _decode_address(unsigned: int, reg_type: RegType, sunspec_sentinels: bool) -> str | None:
    if reg_type is RegType.EUI48:
        unsigned &= _EUI48_MASK  # the first (pad) word carries nothing
        # SunSpec: FF:FF:FF:FF:FF:FF is not implemented; pysunspec2 reads all zeros as no
        # address too, and no device has that MAC.
        if sunspec_sentinels and unsigned in (0, _EUI48_MASK):
            return None
        return ":".join(f"{byte:02X}" for byte in unsigned.to_bytes(6, "big"))
    if sunspec_sentinels and unsigned == 0:  # ipaddr / ipv6addr: 0 is not implemented
        return None
    if reg_type is RegType.IPADDR:
        return str(ipaddress.IPv4Address(unsigned))
    return str(ipaddress.IPv6Address(unsigned))


def decode(  # noqa: PLR0911  one early return per type family reads clearest
    registers: Sequence[int],
    reg_type: RegType,
    order: WordOrder = WordOrder.HIGH_FIRST,
    *,
    sunspec_sentinels: bool = False,
) -> int | float | str | None:
    """Registers to a raw value (before any scale factor).

    Numbers come back as int or float, strings and addresses (``eui48`` "AA:BB:CC:DD:EE:FF",
    ``ipaddr`` "192.0.2.1", ``ipv6addr`` in its compressed form) as str. Returns None for a
    SunSpec not-implemented value when ``sunspec_sentinels`` is set. Raises ProtocolError for a
    wrong register count or a value that is not a 16-bit word.
    """
    if reg_type is RegType.STRING:
        _check_registers(registers, len(registers))
        raw = b"".join(reg.to_bytes(2, "big") for reg in registers)
        text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        return None if sunspec_sentinels and not text else text
    count = _WORDS[reg_type]
    _check_registers(registers, count)
    unsigned = _join(registers, order)
    if reg_type in _FLOAT_FORMATS:
        return _decode_float(unsigned, reg_type, sunspec_sentinels)
    if reg_type in (RegType.EUI48, RegType.IPADDR, RegType.IPV6ADDR):
        return _decode_address(unsigned, reg_type, sunspec_sentinels)
    if reg_type is RegType.PAD:
        return 0
    if sunspec_sentinels and _NOT_IMPLEMENTED.get(reg_type) == unsigned:
        return None
    if reg_type in _SIGNED and unsigned >= 1 << (16 * count - 1):
        return unsigned - (1 << (16 * count))
    return unsigned


def _float_bits(value: int | float | str, reg_type: RegType) -> int:
    if isinstance(value, str):
        raise EncodingError(f"{reg_type.value} needs a number, got {value!r}")
    fmt = _FLOAT_FORMATS[reg_type]
    try:
        packed = struct.pack(fmt, float(value))
    except (OverflowError, struct.error) as exc:  # beyond float32's range (about 3.4e38)
        raise EncodingError(f"{value} does not fit in {reg_type.value}: {exc}") from None
    return int.from_bytes(packed, "big")


def _address_bits(value: int | float | str, reg_type: RegType) -> int:
    if isinstance(value, float):
        raise EncodingError(f"{reg_type.value} needs an address, got {value!r}")
    try:
        if reg_type is RegType.IPADDR:
            return int(ipaddress.IPv4Address(value))
        if reg_type is RegType.IPV6ADDR:
            return int(ipaddress.IPv6Address(value))
        # eui48 "AA:BB:CC:DD:EE:FF" (or with "-"); the pad word stays 0
        number = (
            int.from_bytes(bytes.fromhex(value.replace(":", " ").replace("-", " ")), "big")
            if isinstance(value, str)
            else value
        )
    except ValueError as exc:  # ipaddress.AddressValueError is a ValueError
        raise EncodingError(f"{value!r} is not an {reg_type.value} address: {exc}") from None
    if isinstance(value, str) and len(value.replace(":", "").replace("-", "")) != 12:
        raise EncodingError(f"{value!r} is not an eui48 address (6 bytes)")
    if not 0 <= number <= _EUI48_MASK:
        raise EncodingError(f"{value} does not fit in eui48")
    return number


def _whole(value: int | float | str, reg_type: RegType) -> int:
    if isinstance(value, str):
        raise EncodingError(f"{reg_type.value} needs a number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():  # also NaN and infinities
            raise EncodingError(f"{value} is not a whole number for {reg_type.value}")
        return int(value)
    return value


def encode(
    value: int | float | str,
    reg_type: RegType,
    order: WordOrder = WordOrder.HIGH_FIRST,
    *,
    string_words: int = 0,
) -> list[int]:
    """A raw value (after scaling) to registers.

    Raises EncodingError (a ProtocolError) if it does not fit: out of the type's range, not a
    whole number for an integer type, beyond float32's range, or not an address."""
    if reg_type is RegType.STRING:
        data = str(value).encode("utf-8")
        size = words_of(reg_type, string_words) * 2
        if len(data) > size:
            raise EncodingError(f"string of {len(data)} bytes does not fit in {size}")
        data = data.ljust(size, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, size, 2)]
    count = _WORDS[reg_type]
    if reg_type in _FLOAT_FORMATS:
        return _split(_float_bits(value, reg_type), count, order)
    if reg_type in (RegType.EUI48, RegType.IPADDR, RegType.IPV6ADDR):
        return _split(_address_bits(value, reg_type), count, order)
    integer = _whole(value, reg_type)
    bits = 16 * count
    if reg_type in _SIGNED:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    if not low <= integer <= high:
        raise EncodingError(f"{integer} does not fit in {reg_type.value}")
    return _split(integer & ((1 << bits) - 1), count, order)


def not_implemented(reg_type: RegType, string_words: int = 0) -> list[int]:
    """The registers SunSpec uses to say "this point is not implemented"."""
    if reg_type is RegType.STRING:
        return [0] * words_of(reg_type, string_words)
    count = _WORDS[reg_type]
    if reg_type in _FLOAT_NAN_BITS:
        return _split(_FLOAT_NAN_BITS[reg_type], count, WordOrder.HIGH_FIRST)
    return _split(_NOT_IMPLEMENTED.get(reg_type, 0), count, WordOrder.HIGH_FIRST)


def scaled(raw: int | float, scale_factor: int) -> float:
    """Apply a SunSpec scale factor: value = raw x 10^sf."""
    return float(raw) * (10.0**scale_factor)


def unscaled(value: float, scale_factor: int) -> int:
    """The raw integer that represents ``value`` at this scale factor (rounded half away).

    Raises EncodingError for a value that is not a finite number (nothing to write)."""
    raw = value / (10.0**scale_factor)
    if not math.isfinite(raw):
        raise EncodingError(f"{value} at scale factor {scale_factor} is not a finite number")
    return int(math.copysign(math.floor(abs(raw) + 0.5), raw))


def toward_zero(value: float | Fraction, scale_factor: int) -> int:
    """The raw integer for ``value`` at this scale factor, rounded toward zero: the largest
    magnitude whose scaled value does not exceed ``value``'s (issue 16, item 9).

    A setpoint must never exceed what was asked, nor the core's cap: 7450 W at SF 2 is 74
    (7400 W), never 75 (7500 W). The arithmetic is exact, on a float's shortest decimal form
    (its ``repr``, the number it was written as): in binary floating point 0.3 / 0.1 is
    2.9999999999999996, which truncation would turn into 2. Raises EncodingError for a value
    that is not a finite number."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"{value} at scale factor {scale_factor} is not a finite number")
        value = Fraction(repr(value))
    return math.trunc(value / Fraction(10) ** scale_factor)


def check_scale_factor(sf: int | None) -> int:
    """A SunSpec scale factor must be within -10..10 (SunSpec: sunssf range)."""
    if sf is None:
        raise ProtocolError("scale factor not implemented")
    if not -10 <= sf <= 10:
        raise ProtocolError(f"scale factor {sf} outside -10..10")
    return sf
