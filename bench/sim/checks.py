"""The invariants, read with plain SQL in one consistent snapshot (REPEATABLE READ, ``START
TRANSACTION WITH CONSISTENT SNAPSHOT``) and checked in Python with Decimal - independently of the
code under test, as kits/seed.py does.

``always`` holds at any moment, faults or not (every writer commits its rows in one transaction);
``final`` once the faults stopped and the daemons caught up. Each returns (check name, problems)
pairs; an empty list of problems is a check passed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pymysql

from bench.sim.engine import LEGACY_REMARK, Close, remark_fields
from bench.sim.world import DB_NAME

Result = list[tuple[str, list[str]]]
MAX_SHOWN = 5


@dataclass
class Snapshot:
    consumes: list[Any]  # id, user_id, order_id, consume_power
    ledger: list[Any]  # id, user_id, change_type, change_amount, before, after, related_id, remark
    wallets: dict[int, tuple[Decimal, Decimal, Decimal]]  # power, total_power_consume, gift
    orders: dict[int, Any]  # id -> id, user_id, order_sn, status, realized_profit, flag, amount
    bindings: list[Any]  # platform, account_id, record_key, order_id, primary_order_id, kind

    def overwrites(self) -> dict[int, Decimal]:
        """Ledger id -> what the Go-style write overwrote (current − what it had read), for the
        Go writes that overwrote something."""
        found = {}
        for row in self.ledger:
            fields = remark_fields(row[7] or "")
            if fields is not None and fields[1] != row[4]:
                found[row[0]] = fields[1] - row[4]
        return found


def read(port: int) -> Snapshot:
    conn = pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        database=DB_NAME,
        connect_timeout=5,
        read_timeout=120,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute("SELECT id, user_id, order_id, consume_power FROM hg_toogo_power_consume")
            consumes = list(cur.fetchall())
            cur.execute(
                "SELECT id, user_id, change_type, change_amount, before_amount,"
                " after_amount, related_id, remark FROM hg_toogo_wallet_log"
                " WHERE account_type = 'power' ORDER BY id"
            )
            ledger = list(cur.fetchall())
            cur.execute(
                "SELECT user_id, power, total_power_consume, gift_power FROM hg_toogo_wallet"
            )
            wallets = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
            cur.execute(
                "SELECT id, user_id, order_sn, status, realized_profit, power_consumed,"
                " power_amount FROM hg_trading_order"
            )
            orders = {r[0]: r for r in cur.fetchall()}
            cur.execute(
                "SELECT platform, account_id, record_key, order_id, primary_order_id, kind"
                " FROM toogo_reconcile_binding"
            )
            bindings = list(cur.fetchall())
            conn.commit()
    finally:
        conn.close()
    return Snapshot(consumes, ledger, wallets, orders, bindings)


def _shown(problems: list[str]) -> list[str]:
    more = len(problems) - MAX_SHOWN
    return problems[:MAX_SHOWN] + ([f"... and {more} more"] if more > 0 else [])


def always(snap: Snapshot, initial: dict[int, Decimal], served: set[tuple[int, str]]) -> Result:
    """What holds at any moment. ``initial``: each user's power at the start (0: no wallet);
    ``served``: (account, record key) of every close the exchanges reported so far."""
    results: Result = []

    def check(name: str, problems: list[str]) -> None:
        results.append((name, _shown(problems)))

    pairs = Counter((c[1], c[2]) for c in snap.consumes)
    check(
        "one consume row per order",
        [f"user {u} order {o}: {n} rows" for (u, o), n in pairs.items() if n > 1],
    )
    wrong = []
    for _, user, order_id, _ in snap.consumes:
        o = snap.orders.get(order_id)
        if o is None or o[1] != user or o[3] != 2 or not o[4] > 0:
            wrong.append(f"order {order_id} (user {user}) charged but not closed and profitable")
    check("charges only for closed profitable orders", wrong)

    debits: dict[tuple[int, int], list[Decimal]] = defaultdict(list)
    for row in snap.ledger:
        if row[2] == "power_consume":
            debits[(row[1], row[6])].append(row[3])
    consumed: dict[int, Decimal] = defaultdict(Decimal)
    unmatched = []
    for _, user, order_id, amount in snap.consumes:
        consumed[user] += amount
        if debits.get((user, order_id)) != [-amount]:
            unmatched.append(
                f"order {order_id}: consume {amount}, ledger {debits.get((user, order_id))}"
            )
    consume_pairs = set(pairs)
    unmatched += [
        f"ledger debit of order {o} (user {u}) without a consume row"
        for u, o in debits
        if (u, o) not in consume_pairs
    ]
    check("each consume row has exactly its ledger debit", unmatched)
    logged: dict[int, Decimal] = defaultdict(Decimal)
    for row in snap.ledger:
        if row[2] == "power_consume":
            logged[row[1]] += row[3]
    check(
        "per user: sum consume_power = -sum power_consume ledger",
        [
            f"user {u}: consumed {consumed[u]}, ledger {-logged[u]}"
            for u in sorted(set(consumed) | set(logged))
            if consumed[u] != -logged[u]
        ],
    )
    # the same for the daemon's own entries alone: without the legacy path's rows
    legacy = {(r[1], r[6]) for r in snap.ledger if r[7] == LEGACY_REMARK}
    own_consumed: dict[int, Decimal] = defaultdict(Decimal)
    own_logged: dict[int, Decimal] = defaultdict(Decimal)
    for _, user, order_id, amount in snap.consumes:
        if (user, order_id) not in legacy:
            own_consumed[user] += amount
    for row in snap.ledger:
        if row[2] == "power_consume" and row[7] != LEGACY_REMARK:
            own_logged[row[1]] += row[3]
    check(
        "per user, the daemon's own: sum consume_power = -sum ledger",
        [
            f"user {u}: consumed {own_consumed[u]}, ledger {-own_logged[u]}"
            for u in sorted(set(own_consumed) | set(own_logged))
            if own_consumed[u] != -own_logged[u]
        ],
    )

    amounts = {(c[1], c[2]): c[3] for c in snap.consumes}
    check(
        "power_consumed = 1 only with its consume row",
        [
            f"order {o[0]}: flag set, amount {o[6]}, consume row {amounts.get((o[1], o[0]))}"
            for o in snap.orders.values()
            if o[5] == 1 and amounts.get((o[1], o[0])) != o[6]
        ],
    )

    check(
        "ledger rows: after - before = change",
        [f"wallet_log {r[0]}" for r in snap.ledger if r[5] - r[4] != r[3]],
    )
    overwrites = snap.overwrites()
    breaks = set()
    last: dict[int, Decimal] = {}
    for row in snap.ledger:
        previous = last.get(row[1], initial.get(row[1], Decimal(0)))
        if previous != row[4]:
            breaks.add(row[0])
        last[row[1]] = row[5]
    check(
        "ledger chains break exactly where a Go-style write overwrote",
        [
            *(
                f"wallet_log {i}: chain broken, no overwrite"
                for i in sorted(breaks - set(overwrites))
            ),
            *(
                f"wallet_log {i}: overwrite, chain not broken"
                for i in sorted(set(overwrites) - breaks)
            ),
        ],
    )

    changes: dict[int, Decimal] = defaultdict(Decimal)
    for row in snap.ledger:
        changes[row[1]] += row[3]
    lost: dict[int, Decimal] = defaultdict(Decimal)
    by_id = {row[0]: row for row in snap.ledger}
    for log_id, overwrote in overwrites.items():
        lost[by_id[log_id][1]] += overwrote
    bad_wallets = []
    for user, (power, total, gift) in sorted(snap.wallets.items()):
        expected = initial.get(user, Decimal(0)) + changes[user] - lost[user]
        if power != expected:
            bad_wallets.append(f"user {user}: power {power}, expected {expected}")
        if total != consumed[user]:
            bad_wallets.append(f"user {user}: total_power_consume {total} != {consumed[user]}")
        if gift != Decimal(5) and user in initial:
            bad_wallets.append(f"user {user}: gift_power touched ({gift})")
    check("wallet = start + ledger changes - what overwrites lost", bad_wallets)

    bound = Counter(b[4] for b in snap.bindings if b[4] is not None)
    check(
        "bindings: one record per order, each order exists, each record served",
        [
            *(f"order {o} bound by {n} records" for o, n in bound.items() if n > 1),
            *(
                f"binding {b[:3]} -> order {b[3]} missing"
                for b in snap.bindings
                if b[3] not in snap.orders
            ),
            *(f"binding {b[:3]}: kind {b[5]}" for b in snap.bindings if b[5] != "order"),
            *(
                f"binding {b[:3]}: no such close on the exchange"
                for b in snap.bindings
                if (b[1], b[2]) not in served
            ),
        ],
    )
    return results


def final(snap: Snapshot, closes: list[Close], engine_orders: int) -> Result:
    """Once converged: every exchange close has exactly one local order, closed, and exactly one
    consume row if profitable (none if not); every closed order is an exchange close; nothing
    eligible is left uncharged."""
    binding = {(b[1], b[2]): b for b in snap.bindings}
    charges = Counter(c[2] for c in snap.consumes)
    missing, wrong = [], []
    for close in closes:
        b = binding.get((close.account_id, close.record_key))
        order = snap.orders.get(b[3]) if b is not None else None
        if b is None or order is None:
            missing.append(
                f"{close.platform} account {close.account_id} {close.record_key}"
                f" ({close.kind}): no local order"
            )
            continue
        if order[3] != 2 or (order[4] > 0) != close.profitable:
            wrong.append(
                f"order {order[0]} of {close.record_key}: status {order[3]},"
                f" profit {order[4]}, exchange profitable {close.profitable}"
            )
        want = 1 if close.profitable else 0
        if charges[order[0]] != want or order[5] != want:
            rows = charges[order[0]]
            wrong.append(
                f"order {order[0]} of {close.record_key} ({close.kind}): {rows}"
                f" consume rows, flag {order[5]}, want {want}"
            )
    bound = {b[3] for b in snap.bindings}
    closed = [o for o in snap.orders.values() if o[3] == 2]
    inserted = sum(1 for c in closes if c.kind == "hand_only")
    strays = [
        f"order {o[0]} closed but no exchange close is bound to it"
        for o in closed
        if o[0] not in bound
    ]
    if len(snap.orders) != engine_orders + inserted:
        strays.append(
            f"{len(snap.orders)} orders, want {engine_orders} engine orders +"
            f" {inserted} closed by hand without one"
        )
    uncharged = [
        f"order {o[0]} eligible, not charged" for o in closed if o[4] > 0 and charges[o[0]] != 1
    ]
    return [
        ("every exchange close has exactly one local order", _shown(missing)),
        ("every profitable close charged exactly once, no loss charged", _shown(wrong)),
        ("every closed local order is an exchange close", _shown(strays)),
        ("no eligible order left uncharged", _shown(uncharged)),
    ]


def audit_agrees(report: dict[str, Any], overwrites: dict[int, Decimal]) -> Result:
    """``toogo-reconcile audit --json`` reports exactly the overwritten chain links, nothing
    else."""
    problems = []
    for check in report["checks"]:
        if check["name"] == "ledger_chain":
            if check["violations"] != len(overwrites):
                problems.append(
                    f"ledger_chain: {check['violations']} violations, {len(overwrites)} overwrites"
                )
            for ex in check["examples"]:
                if ex.get("problem") != "chain broken" or ex.get("wallet_log_id") not in overwrites:
                    problems.append(f"ledger_chain example not an overwrite: {ex}")
        elif check["violations"]:
            problems.append(
                f"{check['name']}: {check['violations']} violations ({check['examples'][:2]})"
            )
    if report["ok"] != (not overwrites):
        problems.append(f"audit ok={report['ok']} with {len(overwrites)} overwrites")
    return [("audit reports exactly the Go-style overwrites", _shown(problems))]
