"""The energy ledger, in the SQLite file it shares with the store-and-forward outbox.

One file so that a session record and the outbox row that will carry it to the aggregator are
written in the same transaction: a power cut leaves both or neither.
"""
