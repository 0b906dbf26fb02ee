"""The energy ledger and the store-and-forward outbox, in one SQLite file.

One file so that a session record and the outbox row that will carry it to the aggregator are
written in the same transaction: a power cut leaves both or neither.
"""
