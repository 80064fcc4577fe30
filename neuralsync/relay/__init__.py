"""The team relay: shared scopes through PostgreSQL, which replicas never have to trust (issue 17)."""
