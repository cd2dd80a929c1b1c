"""The chain: keys, transactions, proofs, consensus, fork choice and storage.

Plain synchronous Python with no reactor, so every rule can be called from a test, a
thread or a protocol alike.
"""
