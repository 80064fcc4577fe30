"""Storage: one SQLite file per store.

- :mod:`.storage`: the connection factory (pragmas), transactions, migrations;
- :mod:`.schema`: the numbered migrations;
- :mod:`.reads`: memories as readers see them (get, range, counts, persona, the change feed's rows);
- :mod:`.access`: access statistics, recorded off the hot path.

Nothing here knows about ops, search or replication; those layers build on it.
"""
