"""Where a block's VDF starts: a class-group element hashed from the block's seed.

Blocks of one discriminant epoch share a discriminant (vdf.py), so each block's VDF must
start from an element of its own, or a fork could reuse another chain's VDF. The element
is a prime form (a, b, c) of the discriminant D: a is drawn from the seed (62 bits, so
about 2^53 of them are possible starts), b is a square root of D modulo a, and c follows
from b^2 - 4ac = D. No one knows how it relates to the generator or to any other start
(that is a discrete logarithm in a class group of unknown order).

The element goes to chiavdf in its compressed encoding (chiavdf's bqfc: a, and t with
a*x + b*t < sqrt(a) from a partial extended gcd). chiavdf refuses any encoding that is not
the canonical one of its form, so tests/test_classgroup.py round-trips these through
`chiavdf.bqfc_deserialize`.
"""

from __future__ import annotations

import math

from archivas.chain.encoding import sha256

FORM_SIZE = 100  # bytes of a serialized element, at every discriminant size (chiavdf's)
A_BITS = 62  # bits of the form's a: one machine word, and about 2^53 admissible values
MAX_TRIES = 10_000  # candidates for a before giving up (about 43 are needed on average)
SIEVE_LIMIT = 1000  # a candidate with a prime factor below this is passed over unpowered
_DOMAIN = b"archivas-vdf-origin\x00"


def _odd_primes_product(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(sieve[i * i::i]))
    return math.prod(i for i in range(3, limit) if sieve[i])


# One gcd with this drops most composite candidates before their modular power (a 62-bit
# power is most of an origin's cost, and it runs holding the GIL in the verify threads).
_SMALL_PRIMES = _odd_primes_product(SIEVE_LIMIT)


class NoForm(ValueError):
    """No candidate in MAX_TRIES gave a form (odds below 2^-300: a broken discriminant)."""


def prime_form(discriminant: int, seed: bytes) -> tuple[int, int]:
    """(a, b) of the reduced form drawn from `seed`: the first counter whose a (62 bits,
    a = 3 mod 4, no odd prime factor below SIEVE_LIMIT) has b = (D mod a)^((a+1)/4) mod a
    with b^2 = D mod a; b is taken odd.

    a need not be prime: the square root is checked, not assumed, and with D prime every
    such form is primitive. With 0 < b < a and c about |D|/4a far above a, it is reduced."""
    if discriminant >= 0 or discriminant % 8 != 1:
        raise ValueError("a VDF discriminant is negative and 1 mod 8")
    for counter in range(MAX_TRIES):
        h = int.from_bytes(sha256(_DOMAIN, seed, counter.to_bytes(4, "big")), "big")
        a = (h >> (256 - A_BITS)) | (1 << (A_BITS - 1)) | 3
        if math.gcd(a, _SMALL_PRIMES) != 1:
            continue
        r = discriminant % a
        b = pow(r, (a + 1) // 4, a)
        if b == 0 or b * b % a != r:
            continue
        if b % 2 == 0:
            b = a - b
        return a, b  # b odd and D = 1 mod 8: 4a divides b^2 - D
    raise NoForm(f"no form for this discriminant in {MAX_TRIES} tries")


def compress(a: int, b: int, discriminant_bits: int) -> bytes:
    """The canonical compressed encoding of the reduced form (a, b, .), as chiavdf reads it.

    Layout (d = discriminant_bits rounded up to 32): a flags byte (bit 0: b < 0, bit 1:
    t < 0), the byte size of g minus one (gs), then little-endian a/g in d/16 - gs bytes,
    |t|/g in d/32 - gs bytes, g and b0 = b // (a/g) in gs + 1 bytes each; zeros to
    FORM_SIZE. (Only for a above 2, not the identity's or the generator's special bytes.)"""
    if not 0 < abs(b) < a or a.bit_length() > A_BITS:
        raise ValueError("compress takes a reduced form with a of at most A_BITS bits")
    negative_b = b < 0
    # Euclid on (a, |b|) until the remainder falls to sqrt(a), keeping b's cofactor. (chiavdf
    # runs Lehmer's version of it, which on single-word numbers takes exactly these steps.)
    bound = math.isqrt(a)
    r2, r1, co2, co1 = a, abs(b), 0, -1
    while r1 != 0 and r1 > bound:
        q, r = divmod(r2, r1)
        r2, r1 = r1, r
        co2, co1 = co1, co2 - q * co1
    t = -co1
    g = math.gcd(a, t)
    if g == 1:
        a_out, b0 = a, 0
    else:
        a_out, t = a // g, t // g
        b0 = abs(b) // a_out
    d = (discriminant_bits + 31) // 32 * 32
    gs = (max(g.bit_length(), 1) + 7) // 8 - 1
    out = b"".join((
        bytes([int(negative_b) | int(t < 0) << 1, gs]),
        a_out.to_bytes(d // 16 - gs, "little"),
        abs(t).to_bytes(d // 32 - gs, "little"),
        g.to_bytes(gs + 1, "little"),
        b0.to_bytes(gs + 1, "little"),
    ))
    return out + bytes(FORM_SIZE - len(out))
