"""Exchange API accounts (``hg_trading_api_config``) with their credentials decrypted.

Accounts are the exchange port's :class:`~reconcile.records.ApiAccount` (credentials as
:class:`~reconcile.records.Secret`; the ``repr`` shows the id, user, platform and base URL only):
this module only reads them from the database.
See docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import ConfigError, PermanentError
from reconcile.records import ApiAccount, Proxy
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    table_names,
    trading_api_config,
    trading_proxy_config,
)
from reconcile.storage.streams import STATUS_DISABLED, STATUS_NORMAL
from reconcile.sync.credentials import AesKey, aes_key_from_environment, decrypt_value, is_encrypted


class AccountNotFound(PermanentError):
    """No live (not deleted) ``hg_trading_api_config`` row has this id."""

    def __init__(self, account_id: int) -> None:
        super().__init__(f"API account {account_id} not found in hg_trading_api_config")
        self.account_id = account_id


async def load_account(
    db: Database, account_id: int, *, aes_key: AesKey | None = None
) -> ApiAccount:
    """The account with its credentials decrypted; :class:`AccountNotFound` if absent or deleted.

    The AES key is read from the environment (``TOOGO_AES_KEY`` or the systemd credential) only
    when a value is encrypted and no key is given. A disabled account (status 2) is returned
    with ``enabled=False``; the caller decides.
    """
    t = trading_api_config

    async def read(conn: AsyncConnection) -> ApiAccount | None:
        row = (
            await conn.execute(
                select(
                    t.c.id,
                    t.c.user_id,
                    t.c.platform,
                    t.c.base_url,
                    t.c.api_key,
                    t.c.secret_key,
                    t.c.passphrase,
                    t.c.status,
                ).where(t.c.id == account_id, t.c.deleted_at.is_(None))
            )
        ).one_or_none()
        if row is None:
            return None
        stored = {"api_key": row.api_key or "", "secret_key": row.secret_key or ""}
        passphrase = row.passphrase or ""
        key = aes_key
        if key is None and any(is_encrypted(v) for v in (*stored.values(), passphrase)):
            key = aes_key_from_environment()
        where = f"hg_trading_api_config {row.id}"
        return ApiAccount(
            id=int(row.id),
            user_id=int(row.user_id),
            platform=str(row.platform).strip().lower(),
            base_url=(row.base_url or "").strip() or None,
            api_key=decrypt_value(stored["api_key"], key, field=f"{where} api_key"),
            secret=decrypt_value(stored["secret_key"], key, field=f"{where} secret_key"),
            passphrase=(
                decrypt_value(passphrase, key, field=f"{where} passphrase") if passphrase else None
            ),
            enabled=int(row.status) == STATUS_NORMAL,
        )

    account = await db.transaction(read, what="load API account", account_id=account_id)
    if account is None:
        raise AccountNotFound(account_id)
    return account


async def load_proxy(db: Database, *, aes_key: AesKey | None = None) -> Proxy | None:
    """The engine's global proxy, read as the engine reads it (upstream
    ``server/internal/logic/toogo/exchange_manager.go`` 130-170): the ``hg_trading_proxy_config``
    row with user_id 0, tenant_id 0 and enabled 1 (the lowest id if several); ``proxy_address``
    is ``host:port``; username and password only when ``auth_enabled`` is 1 and a username is
    set, the password decrypted like the API keys. None when there is no such row or no table.

    Unlike the engine, a password that does not decrypt is an error (:class:`ConfigError`)
    rather than an empty password, and an address without a port is refused.
    """
    t = trading_proxy_config

    async def read(conn: AsyncConnection) -> Any:
        if t.name not in await table_names(conn):
            return None
        stmt = (
            select(
                t.c.id,
                t.c.proxy_type,
                t.c.proxy_address,
                t.c.auth_enabled,
                t.c.username,
                t.c.password,
            )
            .where(t.c.user_id == 0, t.c.tenant_id == 0, t.c.enabled == 1)
            .order_by(t.c.id)
            .limit(1)
        )
        return (await conn.execute(stmt)).one_or_none()

    row = await db.transaction(read, what="read the engine's proxy")
    if row is None:
        return None
    where = f"hg_trading_proxy_config {row.id}"
    kind = str(row.proxy_type or "socks5").strip().lower()
    if kind not in ("socks5", "http"):
        raise ConfigError(f"{where}: proxy_type {kind!r} is neither socks5 nor http")
    host, port = parse_address(str(row.proxy_address or ""), field=f"{where} proxy_address")
    username = str(row.username or "").strip()
    password = None
    if int(row.auth_enabled or 0) == 1 and username:
        stored = str(row.password or "")
        key = aes_key
        if key is None and is_encrypted(stored):
            key = aes_key_from_environment()
        password = decrypt_value(stored, key, field=f"{where} password")
    else:
        username = ""
    return Proxy(
        kind="socks5" if kind == "socks5" else "http",
        host=host,
        port=port,
        username=username or None,
        password=password,
        origin=where,
    )


def parse_address(address: str, *, field: str) -> tuple[str, int]:
    """``host:port`` as the engine splits it (at the first colon); the port must be 1-65535."""
    host, sep, port_text = address.strip().partition(":")
    if not host or not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{field}: {address!r} is not host:port")
    return host, int(port_text)


__all__ = [
    "STATUS_DISABLED",
    "STATUS_NORMAL",
    "AccountNotFound",
    "ApiAccount",
    "load_account",
    "load_proxy",
    "parse_address",
]
