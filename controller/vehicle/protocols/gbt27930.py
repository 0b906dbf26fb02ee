"""GB/T 27930-2015 facts: addresses, CAN ids, PGNs, message periods and timeouts.

SAE J1939 over CAN at 250 kbit/s, 29-bit PDU1 identifiers
(``priority << 26 | PF << 16 | destination << 8 | source``); PGN = PF << 8. Messages longer than 8
bytes (BRM, BCP, BCS, and the optional BMV/BMT/BSP) go over J1939-21 transport. The names are
those of dbc/gbt27930.dbc, and tests/vehicle/test_protocol_facts.py checks each id and PGN here
against it (and each period against the DBC's message comments).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

CHARGER_ADDRESS = 0x56  # GB/T 27930-2015 clause 7: the off-board charger
BMS_ADDRESS = 0xF4  # GB/T 27930-2015 clause 7: the BMS

# GB/T 27930-2015 message table (priority, PGN, source and destination): single-frame CAN ids.
CHM_ID = 0x1826F456  # CHM, charger handshake, prio 6
BHM_ID = 0x182756F4  # BHM, BMS handshake, prio 6
CRM_ID = 0x1801F456  # CRM, charger recognition, prio 6
CTS_ID = 0x1807F456  # CTS, charger time sync, prio 6
CML_ID = 0x1808F456  # CML, charger output limits, prio 6
BRO_ID = 0x100956F4  # BRO, BMS ready, prio 4
CRO_ID = 0x100AF456  # CRO, charger ready, prio 4
BCL_ID = 0x181056F4  # BCL, battery charging demand, prio 6
CCS_ID = 0x1812F456  # CCS, charger charging status, prio 6
BSM_ID = 0x181356F4  # BSM, battery status, prio 6
BST_ID = 0x101956F4  # BST, BMS stop, prio 4
CST_ID = 0x101AF456  # CST, charger stop, prio 4
BSD_ID = 0x181C56F4  # BSD, BMS statistics, prio 6
CSD_ID = 0x181DF456  # CSD, charger statistics, prio 6
BEM_ID = 0x081E56F4  # BEM, BMS error, prio 2
CEM_ID = 0x081FF456  # CEM, charger error, prio 2
# J1939-21 transport between the two (prio 7; TP.CM PF 0xEC, TP.DT PF 0xEB), as on the wire.
TP_CM_FROM_BMS = 0x1CEC56F4  # RTS / Abort from the BMS
TP_DT_FROM_BMS = 0x1CEB56F4  # data packets from the BMS
TP_CM_FROM_CHARGER = 0x1CECF456  # CTS / EndOfMsgAck / Abort from the charger

# dbc/gbt27930.dbc's name for each id above.
DBC_NAMES: Mapping[int, str] = MappingProxyType(
    {
        CHM_ID: "CHM",
        BHM_ID: "BHM",
        CRM_ID: "CRM",
        CTS_ID: "CTS",
        CML_ID: "CML",
        BRO_ID: "BRO",
        CRO_ID: "CRO",
        BCL_ID: "BCL",
        CCS_ID: "CCS",
        BSM_ID: "BSM",
        BST_ID: "BST",
        CST_ID: "CST",
        BSD_ID: "BSD",
        CSD_ID: "CSD",
        BEM_ID: "BEM",
        CEM_ID: "CEM",
        TP_CM_FROM_BMS: "TP_CM_BMS",
        TP_DT_FROM_BMS: "TP_DT_BMS",
        TP_CM_FROM_CHARGER: "TP_CM_CHARGER",
    }
)
# What the BMS sends as single frames, and its transport frames: what the charger listens to.
BMS_IDS = frozenset(
    {BHM_ID, BRO_ID, BCL_ID, BSM_ID, BST_ID, BSD_ID, BEM_ID, TP_CM_FROM_BMS, TP_DT_FROM_BMS}
)

# GB/T 27930-2015 message table: PGNs of the messages carried by J1939-21 transport.
PGN_BRM = 0x0200  # BRM, BMS and vehicle identification, 49 bytes on the wire
PGN_BCP = 0x0600  # BCP, battery charging parameters, 13 bytes
PGN_BCS = 0x1100  # BCS, battery charging status, 9 bytes
PGN_BMV = 0x1500  # BMV, cell voltages (optional, no timeout; not in the DBC)
PGN_BMT = 0x1600  # BMT, battery temperatures (optional, no timeout; not in the DBC)
PGN_BSP = 0x1700  # BSP, battery reserved (optional, no timeout; not in the DBC)
TP_MESSAGES: Mapping[int, str] = MappingProxyType({PGN_BRM: "BRM", PGN_BCP: "BCP", PGN_BCS: "BCS"})
OPTIONAL_TP_PGNS = frozenset({PGN_BMV, PGN_BMT, PGN_BSP})

# GB/T 27930-2015 message table: the period of each message (for a transported one, of the whole
# message).
PERIODS_S: Mapping[str, float] = MappingProxyType(
    {
        "CHM": 0.25,
        "BHM": 0.25,
        "CRM": 0.25,
        "BRM": 0.25,
        "BCP": 0.5,
        "CTS": 0.5,
        "CML": 0.25,
        "BRO": 0.25,
        "CRO": 0.25,
        "BCL": 0.05,
        "BCS": 0.25,
        "CCS": 0.05,
        "BSM": 0.25,
        "BST": 0.01,
        "CST": 0.01,
        "BSD": 0.25,
        "CSD": 0.25,
        "BEM": 0.25,
        "CEM": 0.25,
    }
)

DEFAULT_TIMEOUT_S = 5.0  # GB/T 27930 10.2: default timeout 5 s (BRM until CRM 0xAA, CML, CRO, BSM)
BCL_TIMEOUT_S = 1.0  # GB/T 27930 BCL timeout 1 s, then stop at once
CCS_TIMEOUT_S = 1.0  # GB/T 27930 CCS timeout 1 s, then stop at once
BCS_TIMEOUT_S = 5.0  # GB/T 27930 BCS timeout 5 s
BSM_TIMEOUT_S = DEFAULT_TIMEOUT_S  # GB/T 27930: BSM has the default timeout
BRO_READY_S = 60.0  # GB/T 27930 BRO/CRO: 60 s
STATISTICS_TIMEOUT_S = 10.0  # GB/T 27930: 10 s to receive BSD/CSD
STOP_CURRENT_S = 0.1  # GB/T 27930: after CST, output <= 5 A within 100 ms
MAX_RECONNECTS = 3  # GB/T 27930: reconnect 3 times, then abort

# GB/T 27930 CRM byte 1, BRO and CRO: 0x00 not recognised / not ready, 0xAA recognised / ready.
READY = 0xAA
NOT_READY = 0x00
# GB/T 27930 BRM: the standard's table has 41 bytes (up to the VIN); 49 on the wire, the last 8
# the BMS software version.
BRM_TABLE_BYTES = 41
