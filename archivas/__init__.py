"""Archivas: a Proof-of-Space-and-Time blockchain node built on Twisted."""

__version__ = "0.1.0"
