"""Password hashing with argon2id.

hasher = Argon2Hasher()
stored = hasher.hash("correct horse")
hasher.verify(stored, "correct horse")  # True
"""

from __future__ import annotations

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Argon2Hasher:
    """argon2id with the library's recommended parameters."""

    def __init__(self) -> None:
        self._impl = _Argon2()

    def hash(self, password: str) -> str:
        return str(self._impl.hash(password))

    def verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self._impl.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
