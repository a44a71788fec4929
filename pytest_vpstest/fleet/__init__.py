"""How the harness reaches nodes: SSH sessions, service managers, build, deploy and the probe contract."""

__all__: list[str] = []
