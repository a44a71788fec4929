"""The run's closed choices besides the focus: criteria modes and proof levels.

Imports nothing, so the pytest plugin can offer them as option choices without loading the config
machinery (YAML) in test runs that never configure it.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CRITERIA", "PROOFS", "Criteria", "Proof"]

Criteria = Literal["all-pass", "threshold", "improvement", "custom"]
CRITERIA: tuple[Criteria, ...] = ("all-pass", "threshold", "improvement", "custom")
Proof = Literal["logs", "metrics", "manual-verify", "all-evidence"]
PROOFS: tuple[Proof, ...] = ("logs", "metrics", "manual-verify", "all-evidence")
