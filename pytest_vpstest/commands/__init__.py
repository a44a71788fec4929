"""The ``vpstest`` subcommands, one module per group; ``pytest_vpstest.cli`` builds the parser.

``loading`` finds the config, the inventory and the state directory for every command;
``loops`` has status, stop and logs (the state files of the loops); ``nodes`` has nodes and
diagnose (the fleet, over SSH). ``start`` and the detached runner stay in ``cli``.
"""

__all__: list[str] = []
