"""The pytest side: options and hooks (``entry``), fixtures, pair generation and the session-end results."""

__all__: list[str] = []
