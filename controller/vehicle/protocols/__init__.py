"""Protocol facts: what the standards say about the wire, in one place per protocol.

* ``chademo`` — CHAdeMO (with the V2H frames): CAN ids, the 100 ms period, the sequence's limits;
* ``gbt27930`` — GB/T 27930-2015: addresses, CAN ids, PGNs, periods, timeouts;
* ``j1939`` — SAE J1939-21 transport: PDU formats, priority and the T1..T4/Th timers.

The charger's sessions (``controller/vehicle/chademo.py``, ``gbt27930.py``, ``j1939_tp.py``) and
the simulated vehicles (``hil/vehicle/``) both take their constants from here, never from each
other: a value the simulator borrowed from the session under test would be wrong on both sides
at once and no test could see it. What here can be checked against an independent source is:
``tests/vehicle/test_protocol_facts.py`` ties every CAN id and PGN to the message of the same name
in ``dbc/``. Each value cites where it comes from; project choices stay in the session modules.
"""
