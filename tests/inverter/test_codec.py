"""Register codec: every type, scale factor and word order round-trips; sentinels read as None."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import ProtocolError
from controller.inverter.codec import (
    EncodingError,
    RegType,
    WordOrder,
    check_scale_factor,
    decode,
    encode,
    not_implemented,
    scaled,
    toward_zero,
    unscaled,
    words_of,
)

INTEGER_RANGES = {
    RegType.U16: (0, 0xFFFF),
    RegType.I16: (-0x8000, 0x7FFF),
    RegType.U32: (0, 0xFFFF_FFFF),
    RegType.I32: (-0x8000_0000, 0x7FFF_FFFF),
    RegType.U64: (0, 2**64 - 1),
    RegType.I64: (-(2**63), 2**63 - 1),
    RegType.ACC32: (0, 0xFFFF_FFFF),
    RegType.ENUM16: (0, 0xFFFF),
    RegType.BITFIELD32: (0, 0xFFFF_FFFF),
    RegType.BITFIELD64: (0, 2**64 - 1),
    RegType.SUNSSF: (-0x8000, 0x7FFF),
}


@st.composite
def typed_integers(draw: st.DrawFn) -> tuple[RegType, int]:
    reg_type = draw(st.sampled_from(sorted(INTEGER_RANGES, key=lambda t: t.value)))
    low, high = INTEGER_RANGES[reg_type]
    return reg_type, draw(st.integers(low, high))


@given(typed_integers(), st.sampled_from(list(WordOrder)))
def test_integers_round_trip(typed: tuple[RegType, int], order: WordOrder) -> None:
    """Every integer type round-trips in either word order."""
    reg_type, value = typed
    registers = encode(value, reg_type, order)
    assert len(registers) == words_of(reg_type)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(registers, reg_type, order) == value


@given(st.floats(width=32, allow_nan=False), st.sampled_from(list(WordOrder)))
def test_float32_round_trips(value: float, order: WordOrder) -> None:
    """float32 round-trips exactly for every representable value."""
    assert decode(encode(value, RegType.F32, order), RegType.F32, order) == value


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-10, 10))
def test_scale_factor_round_trip(raw: int, sf: int) -> None:
    """Scaling then unscaling gives back the raw register value for every SunSpec SF."""
    assert unscaled(scaled(raw, sf), sf) == raw


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=32))
def test_strings_round_trip(text: str) -> None:
    """Strings round-trip through NUL-padded registers."""
    registers = encode(text, RegType.STRING, string_words=16)
    assert len(registers) == 16
    assert decode(registers, RegType.STRING) == text


def test_word_order_matters() -> None:
    """0x12345678 is [0x1234, 0x5678] high-first and [0x5678, 0x1234] low-first."""
    assert encode(0x12345678, RegType.U32, WordOrder.HIGH_FIRST) == [0x1234, 0x5678]
    assert encode(0x12345678, RegType.U32, WordOrder.LOW_FIRST) == [0x5678, 0x1234]
    assert decode([0xFFFF, 0xFFFE], RegType.I32) == -2


@pytest.mark.parametrize(
    "reg_type",
    [
        RegType.I16,
        RegType.U16,
        RegType.SUNSSF,
        RegType.I32,
        RegType.U32,
        RegType.ACC32,
        RegType.U64,
        RegType.F32,
        RegType.ENUM16,
        RegType.BITFIELD32,
        RegType.BITFIELD64,
        RegType.F64,
        RegType.IPADDR,
        RegType.IPV6ADDR,
        RegType.EUI48,
    ],
)
def test_not_implemented_reads_as_none(reg_type: RegType) -> None:
    """SunSpec's not-implemented sentinel of every type reads as None, never as a number."""
    registers = not_implemented(reg_type)
    assert decode(registers, reg_type, sunspec_sentinels=True) is None


def test_empty_string_is_not_implemented() -> None:
    """An all-NUL SunSpec string is 'not implemented'."""
    assert decode([0] * 8, RegType.STRING, sunspec_sentinels=True) is None


def test_sentinels_only_when_asked() -> None:
    """Outside SunSpec, 0x8000 is a real -32768."""
    assert decode([0x8000], RegType.I16) == -32768


@st.composite
def register_lists(draw: st.DrawFn) -> tuple[list[int], RegType]:
    """A register type with either well-formed registers for it or an arbitrary list."""
    reg_type = draw(st.sampled_from(list(RegType)))
    if draw(st.booleans()):
        count = draw(st.integers(1, 6)) if reg_type is RegType.STRING else words_of(reg_type)
        words = st.integers(0, 0xFFFF)
        return draw(st.lists(words, min_size=count, max_size=count)), reg_type
    return draw(st.lists(st.integers(-(2**20), 2**20), max_size=6)), reg_type


@given(register_lists())
def test_decode_accepts_well_formed_and_rejects_malformed_registers(
    case: tuple[list[int], RegType],
) -> None:
    """Well-formed registers decode to their value; a wrong count or non-word is ProtocolError."""
    registers, reg_type = case
    words_ok = all(0 <= r <= 0xFFFF for r in registers)
    count_ok = reg_type is RegType.STRING or len(registers) == words_of(reg_type)
    if not (words_ok and count_ok):
        with pytest.raises(ProtocolError):
            decode(registers, reg_type, sunspec_sentinels=True)
        return
    value = decode(registers, reg_type, sunspec_sentinels=True)
    if reg_type is RegType.STRING:  # None only for a blank string
        assert value is None or (isinstance(value, str) and value)
    elif value is None:  # only SunSpec's "not implemented" reads as None
        if reg_type in (RegType.F32, RegType.F64):
            raw = decode(registers, reg_type)
            assert isinstance(raw, float)
            assert math.isnan(raw)
        elif reg_type is RegType.EUI48:  # all ones (SunSpec) or all zeros (pysunspec2)
            assert registers[1:] in ([0, 0, 0], [0xFFFF] * 3)
        else:
            assert registers == not_implemented(reg_type)
    elif reg_type is RegType.PAD:
        assert value == 0
    elif reg_type is RegType.EUI48:  # the first (pad) word carries nothing
        assert encode(value, reg_type)[1:] == registers[1:]
    else:
        assert encode(value, reg_type) == registers


def test_encode_refuses_what_does_not_fit() -> None:
    """Out-of-range values are refused, not wrapped."""
    with pytest.raises(ValueError, match="does not fit"):
        encode(70000, RegType.U16)
    with pytest.raises(ValueError, match="does not fit"):
        encode(-1, RegType.U32)
    with pytest.raises(ValueError, match="whole number"):
        encode(1.5, RegType.I16)


def test_scale_factor_range() -> None:
    """A scale factor outside -10..10 or not implemented is a protocol error."""
    assert check_scale_factor(-2) == -2
    with pytest.raises(ProtocolError):
        check_scale_factor(11)
    with pytest.raises(ProtocolError):
        check_scale_factor(None)


@given(st.floats(allow_nan=False), st.sampled_from(list(WordOrder)))
def test_float64_round_trips(value: float, order: WordOrder) -> None:
    """float64 (4 registers) round-trips exactly; its NaN sentinel reads as None."""
    registers = encode(value, RegType.F64, order)
    assert len(registers) == 4
    assert decode(registers, RegType.F64, order) == value


@given(st.ip_addresses(v=4))
def test_ipv4_addresses_round_trip(address: object) -> None:
    """ipaddr is 2 registers and decodes to dotted form (models 12 and 14)."""
    registers = encode(str(address), RegType.IPADDR)
    assert len(registers) == words_of(RegType.IPADDR) == 2
    assert decode(registers, RegType.IPADDR) == str(address)


@given(st.ip_addresses(v=6))
def test_ipv6_addresses_round_trip(address: object) -> None:
    """ipv6addr is 8 registers and decodes to the compressed form."""
    registers = encode(str(address), RegType.IPV6ADDR)
    assert len(registers) == words_of(RegType.IPV6ADDR) == 8
    assert decode(registers, RegType.IPV6ADDR) == str(address)


@given(st.binary(min_size=6, max_size=6))
def test_eui48_round_trips(octets: bytes) -> None:
    """eui48 is 4 registers, a pad word then the 6 bytes (models 11, 16), "AA:BB:..:FF"."""
    mac = ":".join(f"{b:02X}" for b in octets)
    registers = encode(mac, RegType.EUI48)
    assert len(registers) == 4
    assert registers[0] == 0
    expected = None if octets in (bytes(6), b"\xff" * 6) else mac
    assert decode(registers, RegType.EUI48, sunspec_sentinels=True) == expected
    assert decode(registers, RegType.EUI48) == mac


def test_eui48_wire_layout() -> None:
    """02:00:5E:10:00:01 is [0x0000, 0x0200, 0x5E10, 0x0001]; a pad word is ignored."""
    assert encode("02:00:5E:10:00:01", RegType.EUI48) == [0x0000, 0x0200, 0x5E10, 0x0001]
    assert decode([0x1234, 0x0200, 0x5E10, 0x0001], RegType.EUI48) == "02:00:5E:10:00:01"
    assert decode([0, 0x0200, 0x5E10, 0x0001], RegType.EUI48) == "02:00:5E:10:00:01"


ANY_VALUE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.floats(width=32),
    st.text(max_size=40),
    st.sampled_from(["192.168.0.1", "fe80::1", "02:00:5E:10:00:01", "0x10", "1_0"]),
)


@given(st.sampled_from(list(RegType)), ANY_VALUE, st.integers(1, 8))
def test_encode_refuses_only_with_a_protocol_error(
    reg_type: RegType, value: int | float | str, string_words: int
) -> None:
    """Any value for any type is either encoded into words of the type's size, or refused with
    EncodingError, a ProtocolError: never an OverflowError, TypeError or bare ValueError."""
    try:
        registers = encode(value, reg_type, string_words=string_words)
    except EncodingError:
        return
    assert len(registers) == words_of(reg_type, string_words)
    assert all(0 <= r <= 0xFFFF for r in registers)


@pytest.mark.parametrize(
    ("value", "reg_type"),
    [
        (1e39, RegType.F32),  # beyond float32: struct raised OverflowError
        ("W", RegType.I16),  # not a number: encode raised TypeError
        (math.nan, RegType.I32),
        (math.inf, RegType.U16),
        ("300.1.1.1", RegType.IPADDR),
        ("02:00:5E", RegType.EUI48),
    ],
)
def test_encode_refusals_are_protocol_errors(value: int | float | str, reg_type: RegType) -> None:
    """What used to escape as OverflowError, TypeError or ValueError is a ProtocolError."""
    with pytest.raises(ProtocolError):
        encode(value, reg_type)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_unscaled_refuses_non_finite_values(value: float) -> None:
    """Nothing to write for NaN or infinity: EncodingError, not ValueError / OverflowError."""
    with pytest.raises(EncodingError, match="not a finite number"):
        unscaled(value, -2)


@pytest.mark.parametrize(
    ("value", "sf", "raw"),
    [
        (7450.0, 2, 74),  # 7400 W, not 7500 W
        (-7450.0, 2, -74),
        (7500.0, 3, 7),  # 7000 W, not 8000 W
        (7392.0, -1, 73920),
        (0.3, -1, 3),  # the float 0.3 is 0.29999...: its decimal form is what was asked
        (49.99, 0, 49),
        (-0.0, 0, 0),
    ],
)
def test_toward_zero_never_exceeds_the_value(value: float, sf: int, raw: int) -> None:
    """Issue 16, item 9: an encoded setpoint is never larger in magnitude than the command."""
    assert toward_zero(value, sf) == raw


@given(st.floats(-1e9, 1e9, allow_nan=False), st.integers(-10, 10))
def test_toward_zero_is_the_largest_magnitude_within_the_value(value: float, sf: int) -> None:
    """raw x 10^sf never exceeds the value's magnitude, and is less than one step below it."""
    exact = Fraction(repr(value))
    raw = toward_zero(value, sf)
    step = Fraction(10) ** sf
    assert abs(raw * step) <= abs(exact)
    assert abs(exact) - abs(raw * step) < step
    assert raw == 0 or (raw > 0) == (value > 0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_toward_zero_refuses_non_finite_values(value: float) -> None:
    """Nothing to write for NaN or infinity: EncodingError, never ValueError / OverflowError."""
    with pytest.raises(EncodingError, match="not a finite number"):
        toward_zero(value, 0)
