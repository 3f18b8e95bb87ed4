"""The Redis store: the keyspace, the clients, the Lua scripts and their typed calls, lenient field decoding."""
