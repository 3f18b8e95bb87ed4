"""The events process (`python -m events`): consumer groups (lifecycle counts, ledger, audit chain) and the
sweeper (lapsed leases, dead holds, finished windows of failed authentications)."""
