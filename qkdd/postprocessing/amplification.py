"""Privacy amplification by Toeplitz hashing, computed exactly with real FFTs.

The hash is y = T·x over GF(2), where x is the reconciled key (n bits), y the
secret key (ℓ bits) and T the ℓ×n Toeplitz matrix

    T[i, j] = seed[i − j + n − 1],   0 ≤ i < ℓ, 0 ≤ j < n,

fixed by a seed of n + ℓ − 1 bits. Toeplitz matrices with a uniform seed form
a 2-universal family (Krawczyk 1994), which is what the leftover-hash lemma
needs. The caller draws the seed fresh per block from the node's random source,
after Bob's detection report, and sends it authenticated (DESIGN §4); this
module only computes the product.

Row i of T·x is entry i + n − 1 of the integer convolution seed ⊛ x, so one
real FFT convolution of length ≥ n + ℓ − 1 gives every output bit: each entry
is an integer ≤ n, and float64 FFTs reproduce it with an error many orders of
magnitude below ½ (the residual is checked, not assumed). Blocks longer than
the piece size are computed in exact pieces (block-Toeplitz): the matrix
is cut into B×B sub-matrices, each itself Toeplitz with its own slice of the
same seed; contributions to one output piece are summed in the frequency
domain and rounded once. The result is bit-for-bit the same product — never
independent hashes of sub-blocks, which would need their own entropy bounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft

Bits = npt.NDArray[np.uint8]

#: Side B of the block-Toeplitz pieces up to about 10^7 bits: FFTs of 2B points
#: stay in cache and run ~1.5x faster per point than one FFT of 10^6 points.
SMALL_PIECE_BITS = 1 << 17
#: Side B above that, where the spectra of all pieces no longer fit in memory
#: (a single float64 FFT of 10^8 points would need gigabytes).
LARGE_PIECE_BITS = 1 << 22
#: Memory budget for cached spectra and accumulators of the piecewise product.
_CACHE_BYTES = 256 << 20
#: Largest accepted distance of a convolution value from its integer; the true
#: values are integers, so anything near ½ would mean the FFT lost exactness.
_ROUNDING_MARGIN = 0.25


class AmplificationError(ValueError):
    """The inputs cannot define the requested hash (lengths, seed, values)."""


def toeplitz_seed_bits(n: int, ell: int) -> int:
    """Seed length n + ℓ − 1 of the ℓ×n Toeplitz hash."""
    if n <= 0 or ell <= 0:
        raise AmplificationError(f"need n > 0 and ell > 0, got n={n}, ell={ell}")
    return n + ell - 1


def seed_bits_from_bytes(data: bytes, nbits: int) -> Bits:
    """The first ``nbits`` bits of random bytes (MSB first), as a 0/1 array."""
    if len(data) * 8 < nbits:
        raise AmplificationError(f"{len(data)} random bytes give fewer than {nbits} seed bits")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=nbits)


def toeplitz_matrix(seed: Bits, n: int, ell: int) -> Bits:
    """The dense ℓ×n matrix T[i, j] = seed[i − j + n − 1] (small sizes; for tests)."""
    _check_seed(seed, n, ell)
    i = np.arange(ell)[:, None]
    j = np.arange(n)[None, :]
    return np.ascontiguousarray(seed[i - j + n - 1], dtype=np.uint8)


def toeplitz_hash(
    key: Bits,
    seed: Bits,
    ell: int,
    *,
    piece_bits: int | None = None,
) -> Bits:
    """Exact Toeplitz hash T·x mod 2 of ``key`` (n bits) to ``ell`` bits.

    ``seed`` holds n + ℓ − 1 bits (see :func:`toeplitz_seed_bits`). Keys up to
    ``piece_bits`` (default: chosen from n + ℓ) take one FFT convolution; longer
    ones are hashed as exact block-Toeplitz pieces of that size, which is also
    faster at 10^6 bits (cache-sized FFTs) and bounds memory above 10^7.
    """
    key = _as_bits(key, "key")
    n = int(key.size)
    seed = _as_bits(seed, "seed")
    _check_seed(seed, n, ell)
    piece = default_piece_bits(n, ell) if piece_bits is None else piece_bits
    if piece <= 0:
        raise AmplificationError("piece_bits must be positive")
    if n <= piece and ell <= piece:
        return _toeplitz_whole(key, seed, ell)
    return _toeplitz_pieces(key, seed, ell, piece)


def default_piece_bits(n: int, ell: int) -> int:
    """Piece side B: cache-sized while all piece spectra fit the memory budget."""
    if 16 * (n + ell + 2 * SMALL_PIECE_BITS) <= _CACHE_BYTES:
        return SMALL_PIECE_BITS
    return LARGE_PIECE_BITS


def modified_toeplitz_seed_bits(n: int, ell: int) -> int:
    """Seed length n − 1 of the modified Toeplitz hash (I | T′)."""
    if not 0 < ell < n:
        raise AmplificationError(f"need 0 < ell < n, got n={n}, ell={ell}")
    return n - 1


def modified_toeplitz_hash(key: Bits, seed: Bits, ell: int) -> Bits:
    """Modified Toeplitz hash (I | T′)·x with T′ of size ℓ×(n − ℓ), seed n − 1 bits.

    Also 2-universal (Hayashi & Tsurumaru, IEEE TIT 62, 2213 (2016)); its FFT is
    shorter (n − 1 instead of n + ℓ − 1).
    """
    key = _as_bits(key, "key")
    n = int(key.size)
    expected = modified_toeplitz_seed_bits(n, ell)
    seed = _as_bits(seed, "seed")
    if seed.size != expected:
        raise AmplificationError(f"modified Toeplitz seed needs {expected} bits, got {seed.size}")
    tail = toeplitz_hash(key[ell:], seed, ell)
    return np.bitwise_xor(key[:ell], tail)


def _as_bits(a: npt.ArrayLike, what: str) -> Bits:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise AmplificationError(f"{what} must be a 1-D bit array")
    out = arr.astype(np.uint8, copy=False)
    if out.size and int(out.max()) > 1:
        raise AmplificationError(f"{what} must hold only 0 and 1")
    return out


def _check_seed(seed: Bits, n: int, ell: int) -> None:
    expected = toeplitz_seed_bits(n, ell)
    if seed.size != expected:
        raise AmplificationError(
            f"Toeplitz seed needs n + ell - 1 = {expected} bits, got {seed.size}"
        )


def _round_mod2(values: npt.NDArray[np.float64]) -> Bits:
    rounded = np.rint(values)
    if values.size and float(np.max(np.abs(values - rounded))) > _ROUNDING_MARGIN:
        # Cannot happen for the sizes we accept; refuse rather than emit a wrong key.
        raise AmplificationError("FFT convolution lost exactness; use smaller pieces")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def _toeplitz_whole(key: Bits, seed: Bits, ell: int) -> Bits:
    n = key.size
    size = scipy.fft.next_fast_len(n + ell - 1, real=True)
    spectrum = scipy.fft.rfft(key.astype(np.float64), size)
    spectrum *= scipy.fft.rfft(seed.astype(np.float64), size)
    conv = scipy.fft.irfft(spectrum, size)
    return _round_mod2(conv[n - 1 : n + ell - 1])


def _seed_slice(seed: Bits, start: int, length: int) -> npt.NDArray[np.float64]:
    """seed[start : start + length] as floats, zero outside the seed.

    Zeros stand for entries of the padded matrix that only ever meet padded
    (zero) key bits or discarded output rows, so they never change the result.
    """
    out = np.zeros(length, dtype=np.float64)
    lo = max(start, 0)
    hi = min(start + length, seed.size)
    if hi > lo:
        out[lo - start : hi - start] = seed[lo:hi]
    return out


def _toeplitz_pieces(key: Bits, seed: Bits, ell: int, piece: int) -> Bits:
    """Block-Toeplitz product: the same T·x, summed over B×B Toeplitz pieces.

    Piece (r, c) is Toeplitz, T[rB + i′, cB + j′] = s′[i′ − j′ + B − 1] with
    s′ = seed[(r − c)B + n − B :][: 2B − 1], so its spectrum depends only on
    d = r − c and is computed once per d while memory allows. Output pieces
    are processed in groups so the frequency-domain accumulators stay bounded.
    """
    if piece <= 0:
        raise AmplificationError("piece_bits must be positive")
    n = key.size
    size = scipy.fft.next_fast_len(2 * piece - 1, real=True)
    bins = size // 2 + 1
    in_pieces = -(-n // piece)
    out_pieces = -(-ell // piece)
    spectrum_bytes = 16 * bins
    cache_seed = (in_pieces + out_pieces) * spectrum_bytes <= _CACHE_BYTES
    cache_key = in_pieces * spectrum_bytes <= _CACHE_BYTES
    group = max(1, min(out_pieces, _CACHE_BYTES // spectrum_bytes))
    seed_spectra: dict[int, npt.NDArray[np.complex128]] = {}
    key_spectra: dict[int, npt.NDArray[np.complex128]] = {}
    # Batched 2-D FFTs are markedly faster than one call per piece.
    if cache_key:
        padded = np.zeros(in_pieces * piece, dtype=np.float64)
        padded[:n] = key
        key_spectra = dict(enumerate(scipy.fft.rfft(padded.reshape(in_pieces, piece), size)))
    if cache_seed:
        ds = range(1 - in_pieces, out_pieces)
        slices = np.stack([_seed_slice(seed, d * piece + n - piece, 2 * piece - 1) for d in ds])
        seed_spectra = dict(zip(ds, scipy.fft.rfft(slices, size), strict=True))

    def key_spectrum(c: int) -> npt.NDArray[np.complex128]:
        if c in key_spectra:
            return key_spectra[c]
        chunk = np.zeros(piece, dtype=np.float64)
        part = key[c * piece : (c + 1) * piece]
        chunk[: part.size] = part
        spec: npt.NDArray[np.complex128] = scipy.fft.rfft(chunk, size)
        if cache_key:
            key_spectra[c] = spec
        return spec

    def seed_spectrum(d: int) -> npt.NDArray[np.complex128]:
        if d in seed_spectra:
            return seed_spectra[d]
        local = _seed_slice(seed, d * piece + n - piece, 2 * piece - 1)
        spec: npt.NDArray[np.complex128] = scipy.fft.rfft(local, size)
        if cache_seed:
            seed_spectra[d] = spec
        return spec

    out = np.empty(out_pieces * piece, dtype=np.uint8)
    for first in range(0, out_pieces, group):
        rows = range(first, min(first + group, out_pieces))
        acc = np.zeros((len(rows), bins), dtype=np.complex128)
        for c in range(in_pieces):
            x_spec = key_spectrum(c)
            for g, r in enumerate(rows):
                acc[g] += x_spec * seed_spectrum(r - c)
        for g, r in enumerate(rows):
            conv = scipy.fft.irfft(acc[g], size)
            out[r * piece : (r + 1) * piece] = _round_mod2(conv[piece - 1 : 2 * piece - 1])
    return out[:ell]
