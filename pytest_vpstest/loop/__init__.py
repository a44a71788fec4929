"""The autonomous loop: the pure state machine, the runner that acts on it, notifications and the fixer."""

__all__: list[str] = []
