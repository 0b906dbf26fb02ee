"""Faults a technician or a test can inject into the simulated vehicle, changeable at run time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FaultInjection:
    """What the simulated vehicle does wrong. Every field defaults to "behave".

    ``silence``: stop sending altogether (the link must time out).
    ``silence_demand``: stop only the current-demand message (CHAdeMO 0x102, GB/T BCL).
    ``garbage``: send the current-demand ID with an implausible payload (all 0xFF).
    ``wrong_dlc``: send the current-demand message one byte short.
    ``stop_request``: ask for a normal stop (CHAdeMO 0x102.5 bit0 = 0, GB/T BST).
    ``over_temperature``: report the pack as too hot (CHAdeMO 0x102.4 bit3, GB/T BSM).
    ``bms_fault_bits``: CHAdeMO 0x102 byte 4 bits to set.
    ``tp_drop_packets``: GB/T transport packets (numbers) dropped on first transmission.
    ``tp_reorder``: GB/T transport packets sent last-first on first transmission.
    ``open_contactor``: CHAdeMO: open the vehicle contactor during transfer (0x102.5 bit3 = 1).
    ``not_in_park``: CHAdeMO: report the shift lever out of Park (0x102.5 bit1 = 1).
    ``charging_forbidden``: GB/T: BSM says charging forbidden (byte 7 bits 5-6 = 00), all normal.
    ``bro_silent``: GB/T: the BMS goes silent in the parameter phase (no BRO) the first N times.
    """

    silence: bool = False
    silence_demand: bool = False
    garbage: bool = False
    wrong_dlc: bool = False
    stop_request: bool = False
    over_temperature: bool = False
    bms_fault_bits: int = 0
    tp_drop_packets: frozenset[int] = field(default_factory=frozenset)
    tp_reorder: bool = False
    open_contactor: bool = False
    not_in_park: bool = False
    charging_forbidden: bool = False
    bro_silent: int = 0
