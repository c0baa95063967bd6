"""What the simulation runs against: the cast, the planted secrets, the private database's
schema and seed, and the five fake exchanges serving every account's closed positions.

Secrets are planted where production keeps them (issue 14, item 5): the database user has a
password (``sim``, handed to the daemons by environment or systemd credential), every API
account its own key, secret and passphrase, and half the accounts store theirs as ``ENC:``
ciphertexts under an AES key the daemons get the same two ways. The simulation greps every
output for each of them at the end.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pymysql
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.bench_history import AccountBooks, Book
from kits.databases import open_database
from kits.fake_exchanges import FAKES, FakeExchange, Fault
from reconcile.storage.schema import toogo_user, trading_api_config, trading_robot, wallet
from reconcile.sync.credentials import AesKey, encrypt_value

PLATFORMS = ("binance", "okx", "gate", "bitget", "bybit")
DB_NAME = "toogo"
DB_USER = "sim"
#: hotgo's Go application writes DATETIMEs in its deploy zone (docs/architecture.md, "How upstream's
#: engine writes its tables")
ZONE = "Asia/Shanghai"
POWER = {"consume_rate": "0.10", "min_consume": "0.01"}
RATE = Decimal("0.10")


@dataclass(frozen=True)
class Account:
    id: int
    user_id: int
    platform: str
    robot_id: int
    symbol: str  # as hotgo spells it on the robot
    encrypted: bool
    api_key: str
    secret: str
    passphrase: str


@dataclass
class Cast:
    accounts: list[Account]
    users: list[int]
    #: users with a wallet row at the start, and its power (the others get one from the daemon)
    initial_power: dict[int, Decimal]
    discounts: dict[int, Decimal]
    db_password: str
    aes_key: str

    def planted(self) -> dict[str, str]:
        """Every secret by name: none may appear in any output."""
        found = {"db password": self.db_password, "AES key": self.aes_key}
        for a in self.accounts:
            how = "ENC plaintext" if a.encrypted else "plaintext"
            found[f"account {a.id} api_key ({how})"] = a.api_key
            found[f"account {a.id} secret_key ({how})"] = a.secret
            found[f"account {a.id} passphrase ({how})"] = a.passphrase
        return found


def make_cast(seed: int, accounts: int = 10, users: int = 6) -> Cast:
    """Accounts round-robin over the platforms, one robot each; users own one or two accounts;
    the last user has no wallet row; two have a VIP discount. Secrets come from the seed too."""
    rnd = random.Random(f"cast-{seed}")

    def secret(prefix: str) -> str:
        return f"{prefix}-{rnd.getrandbits(96):024x}"

    user_ids = [5001 + n for n in range(users)]
    cast_accounts = [
        Account(
            id=101 + n,
            user_id=user_ids[n % users],
            platform=PLATFORMS[n % len(PLATFORMS)],
            robot_id=1101 + n,
            symbol=("BTC_USDT", "BTCUSDT")[n % 2],
            encrypted=n % 2 == 1,
            api_key=secret("simkey"),
            secret=secret("simsecret"),
            passphrase=secret("simpass"),
        )
        for n in range(accounts)
    ]
    power = {u: Decimal(rnd.randint(5000, 50000)) / 100 for u in user_ids[:-1]}
    return Cast(
        accounts=cast_accounts,
        users=user_ids,
        initial_power=power,
        discounts={user_ids[1]: Decimal("20"), user_ids[4]: Decimal("12.50")},
        db_password=secret("simdbpw"),
        aes_key=secret("simaes")[:32],
    )


def create_db_user(admin: pymysql.connections.Connection, password: str) -> None:
    """The daemons' own user, with a password (the private server's root has none). Created for
    'localhost' too: an anonymous ''@'localhost' would otherwise shadow 'sim'@'%'."""
    with admin.cursor() as cur:
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"CREATE USER '{DB_USER}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{DB_NAME}`.* TO '{DB_USER}'@'{host}'")


async def create_schema(root_url: str, cast: Cast, urls: dict[str, str]) -> None:
    """Upstream's DDL plus what `migrate up` adds (kits.databases.open_database), then the cast:
    users, wallets, API accounts (half of them ENC:, ``base_url`` their platform's fake in
    ``urls``) and their running robots."""
    db = await open_database(root_url)
    key = AesKey(cast.aes_key)

    def stored(account: Account, value: str) -> str:
        return encrypt_value(value, key) if account.encrypted else value

    async def seed(conn: AsyncConnection) -> None:
        await conn.execute(
            toogo_user.insert(),
            [
                {
                    "member_id": u,
                    "vip_level": 3 if u in cast.discounts else 1,
                    "power_discount": cast.discounts.get(u, Decimal(0)),
                    "invite_code": f"SIM{u}",
                }
                for u in cast.users
            ],
        )
        await conn.execute(
            wallet.insert(),
            [
                {
                    "user_id": u,
                    "power": p,
                    "gift_power": Decimal(5),
                    "total_power_consume": Decimal(0),
                }
                for u, p in cast.initial_power.items()
            ],
        )
        for a in cast.accounts:
            await conn.execute(
                trading_api_config.insert().values(
                    id=a.id,
                    user_id=a.user_id,
                    platform=a.platform,
                    api_name=f"sim {a.platform}",
                    base_url=urls[a.platform],
                    api_key=stored(a, a.api_key),
                    secret_key=stored(a, a.secret),
                    passphrase=stored(a, a.passphrase),
                    status=1,
                )
            )
            await conn.execute(
                trading_robot.insert().values(
                    id=a.robot_id,
                    tenant_id=1,
                    user_id=a.user_id,
                    api_config_id=a.id,
                    exchange=a.platform,
                    symbol=a.symbol,
                    robot_name=f"sim robot {a.robot_id}",
                    leverage=10,
                    status=2,
                )
            )

    try:
        await db.transaction(seed, what="seed the simulation")
    finally:
        await db.close()


@dataclass
class Exchanges:
    """The five fakes, each serving all its accounts (told apart by API key, as in
    bench_history), with faults injected on the closed-positions endpoint. A delay (``slow``,
    ``timeout``) is served before the fake switches to the request's account: the fakes switch
    accounts per request and must not await in between."""

    fakes: dict[str, FakeExchange] = field(default_factory=dict)
    books: dict[int, Book] = field(default_factory=dict)
    delays: dict[str, deque[float]] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None

    async def start(self, accounts: list[Account]) -> None:
        self.loop = asyncio.get_running_loop()
        for platform in PLATFORMS:
            fake = await FAKES[platform]().start()
            self.fakes[platform] = fake
            switch = AccountBooks(fake)
            for a in (a for a in accounts if a.platform == platform):
                book = Book(a.api_key, a.secret, a.passphrase)
                switch.books[a.api_key] = self.books[a.id] = book
            self.delays[platform] = deque()
            self._delay_first(fake, self.delays[platform])

    @staticmethod
    def _delay_first(fake: FakeExchange, delays: deque[float]) -> None:
        switched = fake._answer

        async def answer(route: Any, request: web.Request) -> web.StreamResponse:
            if route.endpoint == "closed" and delays:
                await asyncio.sleep(delays.popleft())
            return await switched(route, request)

        fake._answer = answer  # type: ignore[method-assign]

    def urls(self) -> dict[str, str]:
        return {p: f.url for p, f in self.fakes.items()}

    def ports(self) -> Iterator[int]:
        return (f.port for f in self.fakes.values())

    def add_record(self, account_id: int, raw: dict[str, Any]) -> None:
        """From any thread: the exchange now reports this closed position."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.books[account_id].records.append, raw)

    def inject(self, platform: str, kind: str, times: int) -> None:
        fake = self.fakes[platform]
        if kind in ("slow", "timeout"):  # the adapters' timeout is 2 s
            self.delays[platform].extend([1.0 if kind == "slow" else 3.0] * times)
            return
        fault = {
            "http_429": Fault.rate_limit("1"),
            "http_5xx": Fault.http((500, 502, 503, 504)[times % 4]),
            "html": Fault.html(),
            "disconnect": Fault.disconnect(),
        }[kind]
        fake.fail(fault, times=times)

    def clear(self) -> None:
        for platform, fake in self.fakes.items():
            fake._faults.clear()
            self.delays[platform].clear()

    async def stop(self) -> None:
        for fake in self.fakes.values():
            await fake.stop()

    def requests(self) -> int:
        return sum(f.count("closed") for f in self.fakes.values())
