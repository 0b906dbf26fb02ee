"""The vehicle link as the config describes it (``controller.app`` calls ``build_vehicle_link``)."""

from __future__ import annotations

from pathlib import Path

from controller.config import (
    BmsProfile,
    ChargerRatingsConfig,
    LinesConfig,
    VehicleConfig,
    bms_profile_error,
    load_bms_profile,
)
from controller.errors import ProtocolError
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import ChargerLines
from controller.vehicle.gbt27930 import GbtChargerConfig
from controller.vehicle.lines import GpioLines, SharedFileLines, UnwiredLines
from controller.vehicle.link import CanVehicleLink
from controller.vehicle.profile import DbcProfileSession, profile_problems


def build_vehicle_link(vehicle: VehicleConfig) -> CanVehicleLink:
    """The CAN link, its session and the board's lines.

    Raises ``ConfigError`` for a BMS profile that is wrong, ``VehicleLinkError`` for DBC files that
    cannot be found, ``ProtocolError`` for a DBC file that does not load.
    """
    config = CanLinkConfig(
        interface=vehicle.can.interface,
        channel=vehicle.can.channel,
        protocol=vehicle.protocol,
        bitrate_bps=vehicle.can.bitrate_bps,
        reconnect_delay_s=vehicle.can.reconnect_delay_s,
    )
    lines = build_lines(vehicle.lines)
    if vehicle.protocol == "dbc":
        assert vehicle.profile is not None  # noqa: S101  the config model requires it
        session = DbcProfileSession(*load_profile(vehicle.profile))
        return CanVehicleLink(config, lines, session=session)
    charger: ChademoChargerConfig | GbtChargerConfig
    if vehicle.protocol == "chademo":
        charger = chademo_charger(vehicle.charger)
    else:
        charger = gbt_charger(vehicle.charger)
    return CanVehicleLink(config, lines, charger=charger, dbc_dir=vehicle.dbc_dir)


def load_profile(path: str | Path) -> tuple[BmsProfile, DbcCodec]:
    """Read a BMS profile and its DBC file (relative to the profile); ConfigError names every
    problem at its line in the profile, including message and signal names the DBC does not
    have."""
    profile_path = Path(path)
    profile = load_bms_profile(profile_path)
    dbc_path = Path(profile.dbc_file)
    if not dbc_path.is_absolute():
        dbc_path = profile_path.parent / dbc_path
    try:
        codec = DbcCodec(dbc_path, padding_byte=None)
    except ProtocolError as exc:
        raise bms_profile_error(profile_path, [(("dbc_file",), str(exc))]) from None
    problems = profile_problems(profile, codec)
    if problems:
        raise bms_profile_error(profile_path, problems)
    return profile, codec


def build_lines(lines: LinesConfig | None) -> ChargerLines:
    """The board's lines: GPIO, a shared file for simulation, or none."""
    if lines is None:
        return UnwiredLines()
    if lines.kind == "simulated":
        assert lines.path is not None  # noqa: S101  the config model requires it
        return SharedFileLines(lines.path, side="charger")
    assert lines.chip is not None  # noqa: S101  the config model requires it
    assert lines.offsets is not None  # noqa: S101  the config model requires it
    return GpioLines(lines.chip, lines.offsets.wired(), active_low=lines.active_low)


def chademo_charger(ratings: ChargerRatingsConfig) -> ChademoChargerConfig:
    """What a CHAdeMO charger announces in 0x108/0x109 and 0x208/0x209."""
    return ChademoChargerConfig(
        available_output_voltage_v=ratings.max_output_voltage_v,
        available_output_current_a=ratings.max_output_current_a,
        threshold_voltage_v=ratings.max_output_voltage_v,
        discharge_offered=ratings.discharge_offered,
        available_input_voltage_v=ratings.min_output_voltage_v,
        available_input_current_a=ratings.max_discharge_current_a,
        lower_threshold_voltage_v=ratings.min_output_voltage_v,
        insulation_test_s=ratings.insulation_test_s,
        insulation_timeout_s=ratings.insulation_timeout_s,
    )


def gbt_charger(ratings: ChargerRatingsConfig) -> GbtChargerConfig:
    """What a GB/T 27930 charger announces in CRM and CML."""
    return GbtChargerConfig(
        max_output_voltage_v=float(ratings.max_output_voltage_v),
        min_output_voltage_v=float(ratings.min_output_voltage_v),
        max_output_current_a=float(ratings.max_output_current_a),
        min_output_current_a=float(ratings.min_output_current_a),
        charger_number=ratings.charger_number,
        region_code=ratings.region_code,
        discharge_offered=ratings.discharge_offered,
        insulation_test_s=ratings.insulation_test_s,
        insulation_timeout_s=ratings.insulation_timeout_s,
        pause_limit_s=ratings.pause_limit_s,
    )
