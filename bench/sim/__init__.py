"""The seeded fault simulation behind ``bench/simulate.py`` (issue 14, items 4 and 5).

- ``schedule``: the fault schedule, drawn from the seed alone (the same seed, the same faults);
- ``world``: the planted secrets, the private database's seed, the fake exchanges;
- ``engine``: hotgo's engine and its Go wallet writer, as threads writing the way upstream does;
- ``daemons``: three ``toogo-reconcile run`` processes, signalled and restarted;
- ``checks``: the invariants, read from the database with plain SQL in one snapshot.
"""
