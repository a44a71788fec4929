"""The embedded lab: a replica of the seed fleet in network namespaces (or on loopback)."""
