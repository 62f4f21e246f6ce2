"""Perl's `crypt`: the system crypt(3), through libcrypt.

Perl's `crypt` calls the C library's crypt(3), so calling the same library
gives the same result for every salt form. That is traditional DES for a
two-character salt, `$1$`, `$5$`, `$6$`, `$y$` and the others libcrypt
supports, and the failure token `*0` for an invalid salt. The stdlib
`crypt` module wraps the same call but is gone from Python 3.13, so this
module calls the thread-safe `crypt_r` with ctypes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

# glibc's struct crypt_data is about 128 KiB and libxcrypt's 32 KiB; a larger
# zeroed buffer fits both.
_DATA_SIZE = 256 * 1024

_library: ctypes.CDLL | None = None
_load_lock = threading.Lock()
_local = threading.local()


class CryptUnavailable(RuntimeError):
    """The system has no libcrypt to compute `crypt` with."""


def _crypt_r() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    # ctypes is imported on the first call, not on every start.
    import ctypes
    import ctypes.util

    global _library
    with _load_lock:
        if _library is None:
            name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
            try:
                _library = ctypes.CDLL(name, use_errno=True)
            except OSError as error:
                raise CryptUnavailable(f"libcrypt not found: {error}") from None
            function = _library.crypt_r
            function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            function.restype = ctypes.c_char_p
    return _library.crypt_r


def perl_crypt(word: str, salt: str) -> str | None:
    """Return `crypt(word, salt)` as Perl computes it; None when libcrypt fails.

    Text is passed to the C library as UTF-8, as the bytes of an agent file
    reached FleetConf.

    Raises:
        CryptUnavailable: no libcrypt on this system.
        ValueError: `word` or `salt` contains a NUL character.
    """
    if "\0" in word or "\0" in salt:
        raise ValueError("crypt arguments cannot contain NUL characters")
    function = _crypt_r()
    import ctypes

    buffer = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = ctypes.create_string_buffer(_DATA_SIZE)
        _local.buffer = buffer
    ctypes.memset(buffer, 0, _DATA_SIZE)
    result = function(word.encode("utf-8"), salt.encode("utf-8"), buffer)
    if result is None:
        return None
    return result.decode("utf-8", "surrogateescape")
