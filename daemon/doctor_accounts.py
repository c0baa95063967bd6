"""``doctor``'s check of the API accounts' credentials: which accounts are examined (those of
running robots, or every enabled one), and whether the AES key is needed (only when some value is
``ENC:``) and decrypts all of them. The key and the decrypted values are never shown. See
docs/operations.md ("Checking an installation").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from daemon.config import Config
from daemon.doctor_report import Mark, Report, listed_ids
from reconcile.errors import ConfigError
from reconcile.records import Secret
from reconcile.storage.db import Database
from reconcile.sync.accounts import ApiAccount
from reconcile.sync.credentials import (
    KEY_ENV,
    KEY_FILE,
    AesKey,
    aes_key_from_environment,
    decrypt_value,
    is_encrypted,
    is_upstream_default,
)
from reconcile.views.status import stored_accounts

_EXAMPLES = 3


@dataclass
class CheckedAccount:
    """An account as stored (credentials maybe ``ENC:``), and its robots' symbols; ``account``
    carries the decrypted credentials once :func:`credentials` has read them."""

    account: ApiAccount
    stored: dict[str, str]
    symbols: list[str] = field(default_factory=list)


async def accounts(db: Database, config: Config, *, all_accounts: bool) -> list[CheckedAccount]:
    running_status = config.robots.running_status
    return [
        CheckedAccount(account=a.account, stored=dict(a.stored), symbols=list(a.symbols))
        for a in await stored_accounts(db, running_status=running_status)
        if all_accounts or a.has_running_robots
    ]


def credentials(report: Report, accounts: list[CheckedAccount] | None, scope: str) -> None:
    if accounts is None:
        return
    encrypted = [
        (acct, name, value)
        for acct in accounts
        for name, value in acct.stored.items()
        if is_encrypted(value)
    ]
    try:
        key = aes_key_from_environment()
        key_error = None
    except ConfigError as exc:
        key, key_error = None, str(exc)
    where = f"{len(accounts)} {scope}"
    if key is not None and is_upstream_default(key):
        report.emit(
            Mark.WARN,
            "credentials",
            "the AES key is upstream Toogo's published default: anyone with read access to "
            "hg_trading_api_config can decrypt every API key and secret. Rotate it in hotgo "
            "(re-encrypt the accounts) and give this daemon the new one",
        )
    if not encrypted:
        state = "not configured"
        if key_error:
            state = f"unusable: {key_error}"
        elif key is not None:
            state = f"configured ({_key_source()})"
        report.emit(
            Mark.OK, "credentials", f"{where}, no ENC: values: AES key not needed ({state})"
        )
        for acct in accounts:
            acct.account = _with_secrets(acct, None)
        return
    owners = sorted({acct.account.id for acct, _, _ in encrypted})
    if key is None:
        report.emit(
            Mark.FAIL,
            "credentials",
            f"{len(encrypted)} ENC: value(s) in account(s) {listed_ids(owners)} but "
            + (key_error or f"no AES key: set {KEY_ENV} or the systemd credential {KEY_FILE}"),
        )
        return
    problems: list[str] = []
    for acct in accounts:
        try:
            acct.account = _with_secrets(acct, key)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - _EXAMPLES} more)" if len(problems) > _EXAMPLES else ""
        report.emit(
            Mark.FAIL,
            "credentials",
            f"the AES key ({_key_source()}) fails: " + "; ".join(problems[:_EXAMPLES]) + more,
        )
    else:
        report.emit(
            Mark.OK,
            "credentials",
            f"{where}: the AES key ({_key_source()}) decrypts all {len(encrypted)} ENC: value(s)",
        )


def _with_secrets(acct: CheckedAccount, key: AesKey | None) -> ApiAccount:
    where = f"hg_trading_api_config {acct.account.id}"
    stored = acct.stored

    def value(name: str) -> Secret:
        return decrypt_value(stored[name], key, field=f"{where} {name}")

    return acct.account.with_credentials(
        api_key=value("api_key"),
        secret=value("secret_key"),
        passphrase=value("passphrase") if stored["passphrase"] else None,
    )


def _key_source() -> str:
    return KEY_ENV if os.environ.get(KEY_ENV) else f"$CREDENTIALS_DIRECTORY/{KEY_FILE}"
