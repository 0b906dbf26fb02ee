"""SAE J1939-21 transport facts (connection mode, RTS/CTS), as GB/T 27930 uses them.

Identifiers are PDU1: ``priority << 26 | PF << 16 | destination << 8 | source``.
"""

from __future__ import annotations

TP_CM_PF = 0xEC  # J1939-21 5.10: TP.CM (connection management), PGN 0xEC00
TP_DT_PF = 0xEB  # J1939-21 5.10: TP.DT (data transfer), PGN 0xEB00
TP_PRIORITY = 7  # J1939-21: default priority of TP.CM and TP.DT

# J1939-21 5.10.2.4 timeouts. (Tr, 200 ms, bounds a node's answer to a data or flow-control
# message, and Th, 500 ms, is how often a receiver holding with CTS(0) repeats it: the charger's
# receiver answers at once and never holds, so no timer needs either.)
T1_S = 0.75  # T1, receiver: longest time between two data packets
T2_S = 1.25  # T2, receiver: after sending a CTS, until its first data packet
T3_S = 1.25  # T3, sender: after the last data packet (or RTS), until CTS / EndOfMsgAck
T4_S = 1.05  # T4, sender: after a CTS(0) hold, until the next CTS

# J1939-21 5.10.3.2 (TP.CM_CTS): "recommended not to use more than 2 retransmit requests"; at the
# limit the receiver aborts with reason 5.
MAX_RETRANSMIT_REQUESTS = 2

BYTES_PER_PACKET = 7  # J1939-21 5.10.3.3: TP.DT carries a sequence number and 7 data bytes
MAX_TP_SIZE = 1785  # J1939-21 5.10.3: at most 255 packets of 7 bytes


def pdu1_id(priority: int, pf: int, destination: int, source: int) -> int:
    """29-bit J1939 PDU1 identifier (J1939-21 5.2: PF < 0xF0 carries a destination address)."""
    return priority << 26 | pf << 16 | destination << 8 | source
