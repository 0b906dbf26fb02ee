"""The SQLite file the ledger and the aggregator's store-and-forward outbox share.

``db`` opens it (WAL, synchronous FULL, one transaction helper) and ``writer`` is the one storage
thread every write goes through, so a slow SD card never blocks the control loop. Neither the
ledger nor the aggregator link owns this package: both use it, and neither imports the other.
"""
