"""ENC: credentials (AES-256-GCM) and loading API accounts from hg_trading_api_config.

The encrypted vectors are produced here with the ``cryptography`` package directly (nonce ‖
ciphertext ‖ tag, base64, ``ENC:`` prefix), independently of the code under test.
"""

from __future__ import annotations

import base64
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import ConfigError
from reconcile.records import Secret
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_api_config
from reconcile.sync.accounts import AccountNotFound, load_account
from reconcile.sync.credentials import (
    AesKey,
    aes_key_from_environment,
    decrypt_value,
    encrypt_value,
)

KEY_TEXT = "toogo-hotgo-aes-secret"  # 22 bytes: zero-padded to 32


def hotgo_encrypt(plaintext: str, secret: bytes, nonce: bytes | None = None) -> str:
    """What hotgo stores: ENC: + base64(12-byte nonce ‖ ciphertext ‖ 16-byte tag)."""
    key = secret[:32].ljust(32, b"\0")
    nonce = nonce or os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), None)  # ciphertext ‖ tag
    return "ENC:" + base64.b64encode(nonce + sealed).decode()


@pytest.mark.parametrize(
    ("secret", "plaintext"),
    [
        (KEY_TEXT.encode(), "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"),
        (b"k", "short key, padded"),
        (b"0123456789abcdef0123456789abcdef-and-more", "long key, truncated to 32 bytes"),
        ("密钥-ключ".encode(), "密码 — unicode both ways"),
    ],
)
def test_decrypts_what_hotgo_encrypts(secret: bytes, plaintext: str) -> None:
    stored = hotgo_encrypt(plaintext, secret)
    value = decrypt_value(stored, AesKey(secret), field="api_key")
    assert isinstance(value, Secret) and value.get() == plaintext
    assert plaintext not in repr(value)


def test_truncation_means_only_the_first_32_bytes_count() -> None:
    stored = hotgo_encrypt("x", b"A" * 32 + b"ignored")
    assert decrypt_value(stored, AesKey("A" * 32), field="f").get() == "x"


def test_plaintext_passes_through_without_a_key() -> None:
    assert decrypt_value("plain-api-key", None, field="api_key").get() == "plain-api-key"
    assert decrypt_value("", None, field="passphrase").get() == ""


def test_encrypt_value_matches_the_format() -> None:
    key = AesKey(KEY_TEXT)
    stored = encrypt_value("secret!", key, nonce=b"\x01" * 12)
    assert stored == hotgo_encrypt("secret!", KEY_TEXT.encode(), nonce=b"\x01" * 12)
    assert decrypt_value(stored, key, field="f").get() == "secret!"


@pytest.mark.parametrize(
    ("stored", "key", "message"),
    [
        (hotgo_encrypt("s3cr3t", b"right"), None, "no AES key is configured: set TOOGO_AES_KEY"),
        (hotgo_encrypt("s3cr3t", b"right"), AesKey("wrong"), "wrong AES key or corrupted"),
        ("ENC:!!!not-base64!!!", AesKey("k"), "not valid base64"),
        ("ENC:" + base64.b64encode(b"short").decode(), AesKey("k"), "too short"),
    ],
)
def test_errors_name_the_field_never_the_value(
    stored: str, key: AesKey | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        decrypt_value(stored, key, field="hg_trading_api_config 12 secret_key")
    text = str(caught.value)
    assert "hg_trading_api_config 12 secret_key" in text
    assert stored not in text and "s3cr3t" not in text


def test_tampered_ciphertext_is_refused() -> None:
    stored = hotgo_encrypt("s3cr3t", b"key")
    blob = bytearray(base64.b64decode(stored[4:]))
    blob[14] ^= 0x01
    with pytest.raises(ConfigError, match="corrupted"):
        decrypt_value("ENC:" + base64.b64encode(bytes(blob)).decode(), AesKey("key"), field="f")


def test_key_from_environment_or_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "aes_key").write_bytes(b"from-file\n")
    stored = hotgo_encrypt("v", b"from-file")
    file_key = aes_key_from_environment({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert file_key is not None and decrypt_value(stored, file_key, field="f").get() == "v"
    env_key = aes_key_from_environment(
        {"TOOGO_AES_KEY": "from-env", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert env_key is not None and env_key.bytes() == b"from-env".ljust(32, b"\0")
    assert aes_key_from_environment({}) is None
    assert aes_key_from_environment({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    assert "from-env" not in repr(env_key) and "from-env" not in str(env_key)


# --- load_account on the real databases ---------------------------------------------------------


async def _insert(db: Database, **row: Any) -> int:
    # api_name and base_url are NOT NULL without a default in upstream's DDL
    row = {"api_name": "main", "base_url": "", **row}

    async def run(conn: AsyncConnection) -> int:
        result = await conn.execute(insert(trading_api_config).values(**row))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    return await db.transaction(run, what="insert api config")


async def test_load_account_decrypts_credentials(any_db: Database) -> None:
    secret = KEY_TEXT.encode()
    account_id = await _insert(
        any_db,
        user_id=42,
        platform="OKX",
        base_url="http://127.0.0.1:9999",
        api_key=hotgo_encrypt("okx-key", secret),
        secret_key=hotgo_encrypt("okx-secret", secret),
        passphrase=hotgo_encrypt("okx-pass", secret),
        status=1,
    )
    account = await load_account(any_db, account_id, aes_key=AesKey(KEY_TEXT))
    assert (account.id, account.user_id, account.platform) == (account_id, 42, "okx")
    assert account.base_url == "http://127.0.0.1:9999" and account.enabled
    assert account.api_key.get() == "okx-key" and account.secret.get() == "okx-secret"
    assert account.passphrase is not None and account.passphrase.get() == "okx-pass"
    for text in (repr(account), str(account)):
        assert "okx-key" not in text and "okx-secret" not in text and "okx-pass" not in text
        assert "ENC:" not in text


async def test_load_account_plaintext_disabled_and_key_from_env(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no passphrase: NULL in upstream's MySQL DDL, '' in its PostgreSQL DDL (NOT NULL there)
    row = {
        "api_key": "k",
        "secret_key": "s",
        "passphrase": "" if any_db.dialect.is_postgresql else None,
    }
    plain = await _insert(any_db, user_id=1, platform="binance", base_url="", status=2, **row)
    account = await load_account(any_db, plain)
    assert account.base_url is None and account.passphrase is None and not account.enabled
    assert (account.api_key.get(), account.secret.get()) == ("k", "s")

    encrypted = await _insert(
        any_db,
        user_id=1,
        platform="gate",
        api_key=hotgo_encrypt("gk", b"env-key"),
        secret_key=hotgo_encrypt("gs", b"env-key"),
    )
    monkeypatch.delenv("TOOGO_AES_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=f"hg_trading_api_config {encrypted} api_key"):
        await load_account(any_db, encrypted)
    monkeypatch.setenv("TOOGO_AES_KEY", "env-key")
    assert (await load_account(any_db, encrypted)).secret.get() == "gs"


async def test_missing_or_deleted_accounts(any_db: Database) -> None:
    row = {"api_key": "k", "secret_key": "s", "deleted_at": datetime(2026, 1, 1)}
    deleted = await _insert(any_db, user_id=1, platform="bybit", **row)
    for account_id in (deleted, 987654):
        with pytest.raises(AccountNotFound, match=str(account_id)):
            await load_account(any_db, account_id)
