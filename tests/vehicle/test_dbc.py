"""The DBC files load strictly and decode recorded frames to the values a person reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cantools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import ProtocolError, VehicleLinkError
from controller.vehicle.dbc import (
    CHADEMO_DBC,
    GBT27930_DBC,
    REPO_DBC_DIR,
    SYSTEM_DBC_DIR,
    DbcCodec,
    ImplausibleValueError,
    SignalSpec,
    dbc_search_path,
    find_dbc,
)
from controller.vehicle.frames import CanFrame

from .fixtures import recorded as rec

CHADEMO = DbcCodec.chademo()
GBT = DbcCodec.gbt27930()


def decode(codec: DbcCodec, frame: CanFrame) -> dict[str, float]:
    """Decode a recorded frame by its ID."""
    return codec.decode_frame(frame.arbitration_id, frame.data).signals


def test_dbc_files_load_with_strict_checking() -> None:
    """Both DBC files load in cantools with strict checking."""
    for path in (CHADEMO_DBC, GBT27930_DBC):
        db = cantools.database.load_file(str(path), strict=True)
        assert isinstance(db, cantools.database.can.Database)
        assert db.messages


def test_chademo_0x102_leaf_ze0_charging() -> None:
    """0x102 02 9A 01 0E 00 C1 49 00: protocol 2, 410 V, 14 A, no faults, enabled, V2H, SoC 73."""
    s = decode(CHADEMO, rec.ZE0_102_CHARGING)
    assert s["ProtocolNumber"] == 2
    assert s["TargetBatteryVoltage"] == 410
    assert s["ChargingCurrentRequest"] == 14
    assert [s[k] for k in s if k.startswith("Fault")] == [0, 0, 0, 0, 0]
    assert s["StatusChargingEnabled"] == 1
    assert s["StatusContactorOpen"] == 0
    assert s["StatusBit6Undocumented"] == 1
    assert s["StatusDischargeCompatible"] == 1
    assert s["ChargedRate"] == 73


def test_chademo_0x102_leaf_ze1() -> None:
    """0x102 02 9A 01 1F 00 81 48 00: request 31 A, SoC 72, enabled, not bit 6."""
    s = decode(CHADEMO, rec.ZE1_102)
    assert (s["ChargingCurrentRequest"], s["ChargedRate"]) == (31, 72)
    assert (s["StatusChargingEnabled"], s["StatusBit6Undocumented"]) == (1, 0)


def test_chademo_0x100_and_0x101() -> None:
    """0x100 gives min current, max voltage 435 V and reference 100; 0x101 time and capacity."""
    s = decode(CHADEMO, rec.ZE1_100)
    assert s == {
        "MinChargeCurrent": 6,
        "MinBatteryVoltage": 0,
        "MaxBatteryVoltage": 435,
        "ChargedRateReference": 100,
    }
    t = decode(CHADEMO, rec.ZE1_101)
    assert t["MaxChargingTime10s"] == 2550  # 0xFF: use byte 2
    assert t["MaxChargingTimeMin"] == 80
    assert t["RatedBatteryCapacity"] == 35.4
    assert decode(CHADEMO, rec.ZE0_101_EARLY)["RatedBatteryCapacity"] == 24.0


def test_chademo_0x200_discharge_limits() -> None:
    """0x200 F0 .. FA 00 43 B2: 15 A max discharge (inverted), 250 V minimum discharge voltage."""
    s = decode(CHADEMO, rec.ZE0_200)
    assert s["MaxDischargeCurrent"] == 15
    assert s["MinDischargeVoltage"] == 250
    assert s["MinDischargeLevel"] == 0x43
    z = decode(CHADEMO, rec.ZE1_200)
    assert (z["MaxDischargeCurrent"], z["MinDischargeLevel"]) == (0, 10)
    assert z["MaxRemainingCapacityForCharging"] == 100


def test_chademo_charger_frames() -> None:
    """0x108, 0x109, 0x208 and 0x209 decode to the recorded charger's values."""
    assert decode(CHADEMO, rec.ZE0_108) == {
        "WeldingDetectionSupported": 1,
        "AvailableOutputVoltage": 500,
        "AvailableOutputCurrent": 15,
        "ThresholdVoltage": 435,
    }
    s = decode(CHADEMO, rec.ZE0_109_CHARGING)
    assert (s["PresentOutputVoltage"], s["PresentOutputCurrent"]) == (377, 14)
    assert (s["DischargeCompatible"], s["StatusCharging"], s["StatusConnectorLocked"]) == (1, 1, 1)
    assert (s["StatusStopControl"], s["RemainingTime10s"], s["RemainingTimeMin"]) == (0, 2550, 60)
    assert decode(CHADEMO, rec.ZE0_208) == {
        "PresentDischargeCurrent": 0,
        "AvailableInputVoltage": 500,
        "AvailableInputCurrent": 15,
        "LowerThresholdVoltage": 250,
    }
    assert decode(CHADEMO, rec.ZE1_09_208)["AvailableInputVoltage"] == 170
    assert decode(CHADEMO, rec.ZE0_209) == {"SequenceControlNumber": 2, "RemainingDischargeTime": 5}


def test_chademo_extended_and_automaker() -> None:
    """0x110 bit 0 is dynamic control; 0x700 byte 0 is the automaker code."""
    assert decode(CHADEMO, rec.ZE1_110)["DynamicControl"] == 1
    assert decode(CHADEMO, rec.ZE1_700)["AutomakerCode"] == 1


def test_gbt_bcl_current_sign() -> None:
    """BCL A5 10 D8 0E 02: 426.1 V, -20.0 A (charging, standard's sign), constant current."""
    assert decode(GBT, rec.GBT_BCL) == {
        "VoltageDemand": 426.1,
        "CurrentDemand": -20.0,
        "ChargeMode": 2,
    }


def test_gbt_handshake_and_limits() -> None:
    """CHM is version 1.1, BHM 426.1 V, CRM recognised, CML 950/38 V and -250/0 A."""
    assert decode(GBT, rec.GBT_CHM) == {"ProtocolVersionMinor": 1, "ProtocolVersionMajor": 1}
    assert decode(GBT, rec.GBT_BHM) == {"MaxChargeVoltage": 426.1}
    crm = decode(GBT, rec.GBT_CRM_AA)
    assert crm["RecognitionResult"] == 0xAA
    assert int(crm["RegionCode"]).to_bytes(3, "little") == b"123"
    assert decode(GBT, rec.GBT_CML) == {
        "MaxOutputVoltage": 950.0,
        "MinOutputVoltage": 38.0,
        "MaxOutputCurrent": -250.0,
        "MinOutputCurrent": 0.0,
    }
    assert decode(GBT, rec.GBT_BRO_AA) == {"BmsReady": 0xAA}


def test_gbt_ccs_bsm() -> None:
    """CCS F0 0E 76 0E 00 00 FD reads 382.4 V (0x0EF0), -29.8 A, allowed; BSM 4/3 degC, allowed."""
    assert decode(GBT, rec.GBT_CCS) == {
        "OutputVoltage": 382.4,
        "OutputCurrent": -29.8,
        "ChargingTime": 0,
        "ChargingAllowed": 1,
    }
    s = decode(GBT, rec.GBT_BSM)
    assert (s["MaxCellVoltageNumber"], s["MaxTemperature"], s["MinTemperature"]) == (31, 4, 3)
    assert s["ChargingAllowed"] == 1
    statuses = ("CellVoltageStatus", "SocStatus", "OverCurrentStatus", "TemperatureStatus")
    assert [s[k] for k in statuses] == [0, 0, 0, 0]


def test_gbt_stop_statistics_and_errors() -> None:
    """CST manual stop, BST charger stopped, BSD/CSD statistics, BEM CRM-0xAA timeout."""
    cst = decode(GBT, rec.GBT_CST)
    assert (cst["StopManual"], cst["StopFault"], cst["FaultOther"]) == (1, 0, 0)
    bst = decode(GBT, rec.GBT_BST)
    assert (bst["StopByCharger"], bst["StopSocReached"], bst["FaultOther"]) == (1, 0, 0)
    assert decode(GBT, rec.GBT_BSD) == {
        "StopSoc": 77,
        "MinCellVoltage": 3.33,
        "MaxCellVoltage": 3.34,
        "MinTemperature": 3,
        "MaxTemperature": 4,
    }
    assert decode(GBT, rec.GBT_CSD)["EnergyOutput"] == 0.1
    bem = decode(GBT, rec.GBT_BEM_CRM_AA_TIMEOUT)
    assert (bem["TimeoutCrm00"], bem["TimeoutCrmAA"], bem["TimeoutCtsCml"]) == (0, 1, 0)


def test_gbt_transport_payloads() -> None:
    """The BCP and BCS payloads carried by TP decode to the recorded battery values."""
    bcp = GBT.decode("BCP", bytes.fromhex("7201DA052A02A510730803C60E"))
    assert bcp.signals == {
        "MaxCellVoltage": 3.70,
        "MaxChargeCurrent": -250.2,
        "NominalEnergy": 55.4,
        "MaxChargeVoltage": 426.1,
        "MaxTemperature": 65,
        "StateOfCharge": 77.6,
        "PresentVoltage": 378.2,
    }
    bcs = GBT.decode("BCS", bytes.fromhex("C50EA00F4C614D0000"))
    assert bcs.signals == {
        "MeasuredVoltage": 378.1,
        "MeasuredCurrent": 0.0,
        "MaxCellVoltage": 3.32,
        "MaxCellGroup": 6,
        "StateOfCharge": 77,
        "RemainingTime": 0,
    }


def test_gbt_tp_connection_management_in_dbc() -> None:
    """The DBC's multiplexed TP.CM decodes the recorded RTS, CTS and abort."""
    rts = decode(GBT, rec.GBT_BRM_TRANSFER[0])
    assert rts == {
        "ControlByte": 0x10,
        "RtsTotalSize": 49,
        "RtsPackets": 7,
        "RtsMaxPacketsPerCts": 0xFF,
        "Pgn": 0x0200,
    }
    cts = decode(GBT, rec.GBT_BRM_TRANSFER[1])
    assert (cts["CtsPackets"], cts["CtsNextPacket"], cts["Pgn"]) == (7, 1, 0x0200)
    assert decode(GBT, rec.GBT_TP_ABORT)["ControlByte"] == 0xFF


def test_short_frame_is_malformed() -> None:
    """A payload shorter than its message is rejected as malformed, not implausible."""
    with pytest.raises(ProtocolError) as info:
        CHADEMO.decode_frame(0x102, bytes(7))
    assert not isinstance(info.value, ImplausibleValueError)


def test_padding_beyond_length_is_accepted_only_as_padding() -> None:
    """GB/T BHM padded to 8 bytes with 0xFF decodes; with other bytes it is rejected."""
    assert GBT.decode_frame(0x182756F4, bytes.fromhex("A510FFFFFFFFFFFF")).signals == {
        "MaxChargeVoltage": 426.1
    }
    with pytest.raises(ProtocolError):
        GBT.decode_frame(0x182756F4, bytes.fromhex("A5100000"))


def test_out_of_range_value_is_implausible() -> None:
    """A target voltage of 0xFFFF V is outside the DBC range: ImplausibleValueError."""
    with pytest.raises(ImplausibleValueError):
        CHADEMO.decode_frame(0x102, bytes.fromhex("02FFFF0E00C14900"))


def test_unknown_id_is_rejected() -> None:
    """An ID the DBC does not describe raises ProtocolError."""
    with pytest.raises(ProtocolError):
        GBT.decode_frame(rec.GBT_NOISE.arbitration_id, rec.GBT_NOISE.data)


def _multiplexed(path: Path) -> set[str]:
    """The multiplexed messages of a DBC file (TP.CM): each frame carries only some signals."""
    db = cantools.database.load_file(str(path), strict=True)
    assert isinstance(db, cantools.database.can.Database)
    return {str(m.name) for m in db.messages if m.is_multiplexed()}


# Recorded frames cover these (test_gbt_tp_connection_management_in_dbc).
MULTIPLEXED = _multiplexed(CHADEMO_DBC) | _multiplexed(GBT27930_DBC)


@pytest.mark.parametrize("codec", [CHADEMO, GBT], ids=["chademo", "gbt27930"])
@given(data=st.data())
def test_valid_frames_decode_and_any_payload_decodes_or_raises_protocol_error(
    codec: DbcCodec, data: st.DataObject
) -> None:
    """A well-formed frame decodes to its values; any 0-8 bytes decode in range or are refused."""
    name = data.draw(st.sampled_from(codec.message_names), label="message")
    frame_id = codec.frame_id(name)
    approx: Callable[[float], object] = pytest.approx
    if name not in MULTIPLEXED and data.draw(st.booleans(), label="well-formed"):
        values = data.draw(_signal_strategy(codec, name), label="values")
        decoded = codec.decode_frame(frame_id, codec.encode(name, values))
        assert decoded.name == name
        assert decoded.signals == {k: approx(v) for k, v in values.items()}
        return
    payload = data.draw(st.binary(min_size=0, max_size=8), label="payload")
    try:
        decoded = codec.decode_frame(frame_id, payload)
    except ProtocolError:
        return
    assert decoded.name == name
    assert len(payload) >= codec.length(name)
    for signal in codec.signals(name):
        if signal.name in decoded.signals:
            assert signal.minimum <= decoded.signals[signal.name] <= signal.maximum


def _signal_strategy(codec: DbcCodec, name: str) -> st.SearchStrategy[dict[str, float]]:
    """Values for every signal of a message, drawn on the raw grid inside the DBC range."""
    fields: dict[str, st.SearchStrategy[float]] = {}
    for signal in codec.signals(name):
        ends = sorted(
            (
                round((signal.minimum - signal.offset) / signal.scale),
                round((signal.maximum - signal.offset) / signal.scale),
            )
        )
        # Up to 2**53: a float holds every integer to there, so a raw value of a 56-bit signal
        # (J1939 TP.DT data) cannot round up past the signal's maximum on its way to encode.
        lo, hi = max(ends[0], 0), min(ends[1], 2**signal.length_bits - 1, 2**53)

        def to_phys(raw: int, s: SignalSpec = signal) -> float:
            return s.offset + raw * s.scale

        fields[signal.name] = st.integers(lo, hi).map(to_phys)
    return st.fixed_dictionaries(fields)


CHARGER_MESSAGES: list[tuple[DbcCodec, str]] = [
    (CHADEMO, "CHG_108_Capability"),
    (CHADEMO, "CHG_109_Status"),
    (CHADEMO, "CHG_208_DischargeStatus"),
    (CHADEMO, "CHG_209_DischargeSequence"),
    *[(GBT, n) for n in ("CHM", "CRM", "CTS", "CML", "CRO", "CCS", "CST", "CSD", "CEM")],
]


@pytest.mark.parametrize(("codec", "name"), CHARGER_MESSAGES, ids=[n for _, n in CHARGER_MESSAGES])
@given(data=st.data())
def test_charger_messages_round_trip(codec: DbcCodec, name: str, data: st.DataObject) -> None:
    """Every message the charger sends encodes and decodes back to the same values."""
    values = data.draw(_signal_strategy(codec, name))
    payload = codec.encode(name, values)
    assert len(payload) == codec.length(name)
    decoded = codec.decode(name, payload).signals
    approx: Callable[[float], object] = pytest.approx
    assert decoded == {k: approx(v) for k, v in values.items()}


def test_dbc_search_prefers_the_explicit_directory(tmp_path: Path) -> None:
    """An explicit directory is the only place searched: its file, or an error naming it."""
    (tmp_path / "chademo.dbc").write_bytes(CHADEMO_DBC.read_bytes())
    assert find_dbc("chademo.dbc", dbc_search_path(tmp_path)) == tmp_path / "chademo.dbc"
    with pytest.raises(VehicleLinkError, match=str(tmp_path / "gbt27930.dbc")):
        find_dbc("gbt27930.dbc", dbc_search_path(tmp_path))
    assert DbcCodec.chademo(tmp_path).frame_id("CHG_109_Status") == 0x109


def test_dbc_search_falls_back_to_the_system_directory(tmp_path: Path) -> None:
    """Without a repository dbc/ the installed /usr/share copy is used."""
    system = tmp_path / "usr-share"
    system.mkdir()
    (system / "gbt27930.dbc").write_text("")
    search = dbc_search_path(repository=tmp_path / "absent", system=system)
    assert find_dbc("gbt27930.dbc", search) == system / "gbt27930.dbc"


def test_dbc_not_found_names_every_place_tried(tmp_path: Path) -> None:
    """A file found nowhere is a VehicleLinkError listing each path tried and the fix."""
    search = dbc_search_path(repository=tmp_path / "repo", system=tmp_path / "share")
    with pytest.raises(VehicleLinkError) as info:
        find_dbc("chademo.dbc", search)
    message = str(info.value)
    assert str(tmp_path / "repo" / "chademo.dbc") in message
    assert str(tmp_path / "share" / "chademo.dbc") in message
    assert "vehicle.dbc_dir" in message


def test_default_search_is_repository_then_usr_share() -> None:
    """With no directory given, the source tree's dbc/ comes before /usr/share/v2g-controller."""
    assert dbc_search_path() == (REPO_DBC_DIR, SYSTEM_DBC_DIR)
    assert str(SYSTEM_DBC_DIR) == "/usr/share/v2g-controller/dbc"
    assert find_dbc("chademo.dbc") == CHADEMO_DBC


def test_decode_checked_keeps_out_of_range_signals_apart() -> None:
    """decode_checked returns in-range values and a reason for each out-of-range signal."""
    frame = rec.ZE0_102_CHARGING
    data = bytearray(frame.data)
    data[1:3] = (2000).to_bytes(2, "little")  # TargetBatteryVoltage 2000 V, DBC maximum 1000
    values, rejected = CHADEMO.decode_checked(0x102, bytes(data))
    assert "TargetBatteryVoltage" not in values.signals
    assert values.signals["ChargingCurrentRequest"] == 14
    assert set(rejected) == {"TargetBatteryVoltage"}
    assert "2000 above 1000" in rejected["TargetBatteryVoltage"]
    with pytest.raises(ImplausibleValueError):
        CHADEMO.decode_frame(0x102, bytes(data))
