"""Encryption of secrets at rest (GitHub access tokens), keyed from the app's secret."""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from foundry.errors import Unauthorized


@functools.lru_cache(maxsize=4)
def _fernet(secret: str) -> Fernet:
    # A dedicated key derived from the app secret, so rotating cookie signing and token encryption
    # stays one setting and neither key is used for two purposes.
    digest = hashlib.sha256(b"foundry/token-encryption/v1\x00" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(secret: str, plaintext: str) -> str:
    """Encrypt and authenticate ``plaintext``."""
    return _fernet(secret).encrypt(plaintext.encode()).decode()


def decrypt(secret: str, token: str) -> str:
    """Decrypt a value made by `encrypt`; a wrong key or tampering raises `Unauthorized`."""
    try:
        return _fernet(secret).decrypt(token.encode()).decode()
    except InvalidToken:
        raise Unauthorized("stored GitHub credentials cannot be decrypted; sign in again") from None
