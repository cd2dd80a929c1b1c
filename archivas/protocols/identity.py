"""A node's identity on the peer network: a persistent Ed25519 key, its node id
(sha256 of the public key), and the handshake proof that binds a connection to it.

Each side's HELLO carries its public key and a fresh nonce; each side then answers with
HELLO_ACK, a signature over the other side's nonce (and its own, and the genesis), so a
node id cannot be claimed by a peer that merely replays another node's HELLO.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from archivas.chain import keys
from archivas.chain.encoding import sha256
from archivas.protocols import entropy

KEY_FILE = "node.key"
HELLO_DOMAIN = b"archivas-hello-v2\x00"
NONCE_BYTES = 32


def node_id_of(public_key: bytes) -> bytes:
    return sha256(public_key)


def proof_message(genesis_hash: bytes, challenger_nonce: bytes, prover_nonce: bytes, prover_key: bytes,
                  tls_fingerprint: Optional[bytes] = None) -> bytes:
    """What a prover signs: the nonce the other side chose for this connection, bound to the
    chain, its own nonce, its own key and (on TLS) the certificate it presents."""
    return (HELLO_DOMAIN + genesis_hash + challenger_nonce + prover_nonce + prover_key
            + (b"tls" + tls_fingerprint if tls_fingerprint is not None else b""))


def check_proof(prover_key: bytes, genesis_hash: bytes, challenger_nonce: bytes, prover_nonce: bytes,
                signature: bytes, tls_fingerprint: Optional[bytes] = None) -> bool:
    message = proof_message(genesis_hash, challenger_nonce, prover_nonce, prover_key, tls_fingerprint)
    return keys.verify(prover_key, message, signature)


def fresh_nonce() -> bytes:
    return entropy.token_bytes(NONCE_BYTES)


class NodeIdentity:
    def __init__(self, key: keys.PrivateKey) -> None:
        self.key = key
        self.public_key = key.public_key
        self.node_id = node_id_of(key.public_key)

    @classmethod
    def ephemeral(cls) -> "NodeIdentity":
        """A key for this process only (tests, simulations)."""
        return cls(keys.PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> "NodeIdentity":
        """The key in `directory/node.key` (mode 0600), made on first start."""
        path = Path(directory) / KEY_FILE
        if not path.exists():
            keys.PrivateKey.generate().save(path)
        return cls(keys.PrivateKey.load(path))

    def prove(self, genesis_hash: bytes, challenger_nonce: bytes, own_nonce: bytes,
              tls_fingerprint: Optional[bytes] = None) -> bytes:
        return self.key.sign(proof_message(genesis_hash, challenger_nonce, own_nonce, self.public_key,
                                           tls_fingerprint))
