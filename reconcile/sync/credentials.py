"""Decryption of the API credentials hotgo stores in ``hg_trading_api_config``.

A stored value is either plaintext (passed through) or ``ENC:`` + base64(nonce ‖ ciphertext ‖ tag)
with AES-256-GCM: a 12-byte nonce, a 16-byte tag, no associated data. The key is the configured
secret's UTF-8 bytes, zero-padded or truncated to 32 bytes, read from the environment variable
``TOOGO_AES_KEY`` or the systemd credential file ``$CREDENTIALS_DIRECTORY/aes_key`` - never from
config.yaml. Errors are :class:`~reconcile.errors.ConfigError` naming the field, never the value.
See docs/configuration.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconcile.errors import ConfigError
from reconcile.records import Secret

PREFIX = "ENC:"
KEY_ENV = "TOOGO_AES_KEY"
KEY_FILE = "aes_key"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


class AesKey:
    """The 32-byte AES-256 key; never shows itself in ``repr``/``str``."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise ConfigError("the AES key is empty")
        self._key = raw[:KEY_BYTES].ljust(KEY_BYTES, b"\0")

    def bytes(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return "AesKey('**********')"

    __str__ = __repr__


#: the key upstream Toogo ships in its config and - since it never loads the configured one -
#: encrypts every install's credentials with (docs/architecture.md, "How upstream's engine writes
#: its tables")
UPSTREAM_DEFAULT_KEY = "toogo_secure_key_2024_change_me!"


def is_upstream_default(key: AesKey) -> bool:
    """Whether ``key`` is upstream's published default (compared as the cipher sees it)."""
    return hmac.compare_digest(key.bytes(), AesKey(UPSTREAM_DEFAULT_KEY).bytes())


def aes_key_from_environment(environ: Mapping[str, str] | None = None) -> AesKey | None:
    """The key from ``TOOGO_AES_KEY``, else ``$CREDENTIALS_DIRECTORY/aes_key``, else None.

    One trailing newline of the credential file is dropped (``echo secret > aes_key``).
    """
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV)
    if value:
        return AesKey(value)
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / KEY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the AES key file {path}: {exc.strerror}") from exc
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return AesKey(data)
    return None


def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


def encrypt_value(plaintext: str, key: AesKey, nonce: bytes | None = None) -> str:
    """``ENC:`` form of ``plaintext`` (for tools and tests; the daemon only decrypts)."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError("the nonce must be 12 bytes")
    sealed = AESGCM(key.bytes()).encrypt(nonce, plaintext.encode("utf-8"), None)
    return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_value(value: str, key: AesKey | None, *, field: str) -> Secret:
    """The plaintext of a stored credential as a :class:`Secret`.

    ``field`` names the value in error messages (e.g. ``hg_trading_api_config 12 secret_key``).
    """
    if not is_encrypted(value):
        return Secret(value)
    if key is None:
        raise ConfigError(
            f"{field} is encrypted (ENC:) but no AES key is configured: set {KEY_ENV} or the "
            f"systemd credential {KEY_FILE}"
        )
    try:
        blob = base64.b64decode(value[len(PREFIX) :].strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{field}: the ENC: value is not valid base64") from exc
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ConfigError(f"{field}: the ENC: value is too short to hold a nonce and a tag")
    nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
    try:
        plain = AESGCM(key.bytes()).decrypt(nonce, sealed, None)
    except InvalidTag as exc:
        raise ConfigError(
            f"{field}: cannot decrypt the ENC: value (wrong AES key or corrupted value)"
        ) from exc
    try:
        return Secret(plain.decode("utf-8"))
    except UnicodeDecodeError:
        # not chained: the UnicodeDecodeError holds the decrypted bytes
        raise ConfigError(f"{field}: the decrypted value is not UTF-8 text") from None
