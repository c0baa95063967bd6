"""Exchange API accounts (``hg_trading_api_config``) with their credentials decrypted.

Accounts are the exchange port's :class:`~reconcile.records.ApiAccount` (credentials as
:class:`~reconcile.records.Secret`; the ``repr`` shows the id, user, platform and base URL only):
this module only reads them from the database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.credentials import AesKey, aes_key_from_environment, decrypt_value, is_encrypted
from reconcile.db import Database
from reconcile.errors import PermanentError
from reconcile.records import ApiAccount
from reconcile.schema import stream_cursor, trading_api_config, trading_robot

STATUS_NORMAL = 1
STATUS_DISABLED = 2


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


__all__ = ["STATUS_DISABLED", "STATUS_NORMAL", "AccountNotFound", "ApiAccount", "load_account"]


def polled(running_status: int) -> Any:
    """EXISTS, correlated to toogo_reconcile_cursor: the history sync still polls that stream
    (its own choice): a running robot, not deleted, on an enabled account, trades that symbol."""
    c, r, a = stream_cursor.c, trading_robot.c, trading_api_config.c
    return (
        select(r.id)
        .join_from(trading_robot, trading_api_config, a.id == r.api_config_id)
        .where(
            r.api_config_id == c.account_id,
            r.symbol == c.symbol,
            r.status == running_status,
            r.deleted_at.is_(None),
            a.status == STATUS_NORMAL,
            a.deleted_at.is_(None),
        )
        .exists()
    )
