"""What a run leaves behind: the state store and its lease, the SQLite history and the proof document."""

__all__: list[str] = []
