"""The op log: every change is a signed op in a hash-linked graph, and the state is derived from it.

Bottom up: :mod:`.codec` (canonical encoding, ids, signatures, wire form) and
:mod:`.fields` (what an op's fields may hold), :mod:`.clock` (hybrid logical
clock), :mod:`.identity` (this replica's key), :mod:`.graph` (effective clocks
and ancestry), :mod:`.materialize` (merge rules: ops to tables), and
:mod:`.log` (local commits and remote ops, the one path into the log).
"""
