"""CHAdeMO facts (with the V2H discharge frames): CAN ids, the period and the sequence's limits.

CAN at 500 kbit/s, 11-bit ids, DLC 8. CHAdeMO 1.x is published as IEEE 2030.1.1; the V2H
guideline adds 0x200/0x201 and 0x208/0x209. The sequence limits are those public charger-side
code implements (the full specification is not public). The names are those of
dbc/chademo.dbc; tests/vehicle/test_protocol_facts.py checks each id here against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Vehicle -> charger.
BATTERY_LIMITS_ID = 0x100  # CHAdeMO 0x100: minimum current, battery voltage range
CHARGING_TIME_ID = 0x101  # CHAdeMO 0x101: maximum / estimated charging time, capacity
VEHICLE_STATUS_ID = 0x102  # CHAdeMO 0x102: current request, fault flags, status, SoC
EXTENDED_FUNCTIONS_ID = 0x110  # CHAdeMO 2.0 0x110: dynamic / high-current / high-voltage control
DISCHARGE_LIMITS_ID = 0x200  # CHAdeMO V2H 0x200: maximum discharge current, minimum voltage
DISCHARGE_INFO_ID = 0x201  # CHAdeMO V2H 0x201: sequence control number, available energy
AUTOMAKER_ID = 0x700  # CHAdeMO 0x700: automaker code
# Charger -> vehicle.
CHARGER_CAPABILITY_ID = 0x108  # CHAdeMO 0x108: available output voltage and current
CHARGER_STATUS_ID = 0x109  # CHAdeMO 0x109: present output, status flags, remaining time
DISCHARGE_STATUS_ID = 0x208  # CHAdeMO V2H 0x208: present discharge current, input limits
DISCHARGE_SEQUENCE_ID = 0x209  # CHAdeMO V2H 0x209: sequence control number

# dbc/chademo.dbc's name for each id above.
DBC_NAMES: Mapping[int, str] = MappingProxyType(
    {
        BATTERY_LIMITS_ID: "VEH_100_BatteryLimits",
        CHARGING_TIME_ID: "VEH_101_ChargingTime",
        VEHICLE_STATUS_ID: "VEH_102_Status",
        EXTENDED_FUNCTIONS_ID: "VEH_110_ExtendedFunctions",
        DISCHARGE_LIMITS_ID: "VEH_200_DischargeLimits",
        DISCHARGE_INFO_ID: "VEH_201_DischargeInfo",
        AUTOMAKER_ID: "VEH_700_Automaker",
        CHARGER_CAPABILITY_ID: "CHG_108_Capability",
        CHARGER_STATUS_ID: "CHG_109_Status",
        DISCHARGE_STATUS_ID: "CHG_208_DischargeStatus",
        DISCHARGE_SEQUENCE_ID: "CHG_209_DischargeSequence",
    }
)
VEHICLE_IDS = frozenset(
    {
        BATTERY_LIMITS_ID,
        CHARGING_TIME_ID,
        VEHICLE_STATUS_ID,
        EXTENDED_FUNCTIONS_ID,
        DISCHARGE_LIMITS_ID,
        DISCHARGE_INFO_ID,
        AUTOMAKER_ID,
    }
)
CHARGER_IDS = frozenset(
    {CHARGER_CAPABILITY_ID, CHARGER_STATUS_ID, DISCHARGE_STATUS_ID, DISCHARGE_SEQUENCE_ID}
)

PERIOD_S = 0.1  # CHAdeMO: every id is sent every 100 ms, by either side
CURRENT_REQUEST_TIMEOUT_S = 1.0  # CHAdeMO: stop if the 0x102 current request is older than 1 s
VEHICLE_RESPONSE_S = 8.0  # CHAdeMO: k and 0x102.5 bit0 within 8 s of d1
D2_AFTER_D1_S = 20.0  # CHAdeMO: d2 on within 20 s (of d1)
VEHICLE_CONTACTOR_S = 4.0  # CHAdeMO: 0x102.5 bit3 = 0 within 4 s of d2
FIRST_REQUEST_S = 4.0  # CHAdeMO: first current request within 4 s more
STOP_CURRENT_S = 0.5  # CHAdeMO: after k drops, current <= 5 A within 0.5 s
STOP_CURRENT_A = 5.0  # CHAdeMO: 0x109.5 bit0 cleared, the contactor opens, at <= 5 A
# CHAdeMO: the vehicle reports 0x102.5 bit3 = 1 (welding detection done) within 4 s of the current
# falling to 5 A (the limit public charger code cites from the specification).
WELDING_DETECTION_S = 4.0
D2_TO_D1_S = 0.5  # CHAdeMO: wait 500 ms between d2 off and d1 off
UNLOCK_VOLTAGE_V = 10.0  # CHAdeMO 0x109.5 bit2: "connector locked / energising (> 10 V)"
