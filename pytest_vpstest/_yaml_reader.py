"""Typed, line-aware reading of the harness's YAML files (project config and inventory).

Files are read with ``yaml.compose`` (SafeLoader) so that every value keeps its line; the schema
functions in ``config`` and ``inventory`` walk the node tree through ``Reader``, which checks keys,
types and ranges. Every problem becomes one ConfigError naming file, line and key.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

import yaml

from pytest_vpstest.errors import ConfigError

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "MAX_FILE_BYTES",
    "NULL",
    "SAFE_NAME_PATTERN",
    "STR",
    "Reader",
    "describe",
    "is_safe_name",
    "printable",
    "read_text",
]

SAFE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN + r"\Z")
# Aliases can make a small file expand to a huge tree ("billion laughs"); no real config comes close.
_MAX_NODES = 20_000
_T = TypeVar("_T")

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
_TAG_NAMES = {
    STR: "a string",
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "a boolean",
    NULL: "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
    "tag:yaml.org,2002:binary": "binary data",
}


def is_safe_name(name: str) -> bool:
    """True for names safe in paths and shell words: ``[A-Za-z0-9][A-Za-z0-9._-]*`` without ``..``."""
    return bool(_SAFE_NAME.match(name)) and ".." not in name


# Config and inventory files are a few kilobytes; anything this big is a mistake, refused before reading.
MAX_FILE_BYTES = 1024 * 1024


def read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"file is {size / 1024 / 1024:.1f} MiB; config and inventory files are limited to "
                f"{MAX_FILE_BYTES // 1024 // 1024} MiB", path=path
            )
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", path=path) from None


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so messages stay one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")


class Reader:
    """Typed accessors over a composed YAML tree; each failure is a ConfigError with file, line, key."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(
        self, node: yaml.Node | None, key: str | None, message: str, allowed: Sequence[str] | None = None
    ) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark is not None else None
        return ConfigError(
            message,
            path=printable(self.label),
            line=line,
            key=printable(key) if key else None,
            allowed=tuple(allowed) if allowed else None,
        )

    def document(self, text: str, what: str) -> yaml.Node:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
            raise ConfigError(f"YAML syntax error: {problem}", path=self.label, line=line) from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
            raise ConfigError(
                f"character {char} is not allowed in YAML", path=self.label, line=line
            ) from None
        except yaml.YAMLError as e:
            detail = " ".join(str(e).split())
            raise ConfigError(f"YAML error: {detail}", path=self.label) from None
        except RecursionError:
            raise ConfigError("YAML nesting is too deep", path=self.label) from None
        if root is None:
            raise ConfigError(f"the {what} is empty; expected a mapping", path=self.label, line=1)
        self._check_size(root)
        return root

    def _check_size(self, root: yaml.Node) -> None:
        count, stack = 0, [root]
        while stack:
            node = stack.pop()
            count += 1
            if count > _MAX_NODES:
                raise self.fail(
                    root, None, f"the document expands to more than {_MAX_NODES} values (aliases?)"
                )
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    stack += [k, v]
            elif isinstance(node, yaml.SequenceNode):
                stack += node.value

    def schema_version(self, m: dict[str, yaml.Node]) -> None:
        if "schema_version" in m:
            self.integer(m["schema_version"], "schema_version", 1, 1)

    def entries(self, node: yaml.Node, key: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        """The (key node, value node) pairs of a mapping with string keys, no duplicates.

        Merge keys (``<<: *anchor``) are applied as YAML does: the mapping's own keys win.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, f"expected a mapping, got {describe(node)}")
        seen: dict[str, int] = {}
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == STR:
                if k.value in seen:
                    name = f"{key}.{k.value}" if key else k.value
                    raise self.fail(k, name, f"duplicate key (first at line {seen[k.value]})")
                seen[k.value] = k.start_mark.line + 1
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as e:
            raise self.fail(node, key, f"bad merge ('<<'): {' '.join(str(e).split())}") from None
        merged: dict[str, tuple[yaml.ScalarNode, yaml.Node]] = {}
        for k, v in node.value:
            if not (isinstance(k, yaml.ScalarNode) and k.tag == STR):
                raise self.fail(k, key or None, f"keys must be strings, got {describe(k)}")
            merged[k.value] = (k, v)  # later pairs (the mapping's own) override merged ones
        return list(merged.values())

    def mapping(
        self,
        node: yaml.Node,
        key: str,
        allowed: Sequence[str] | None,
        required: Sequence[str] = (),
    ) -> dict[str, yaml.Node]:
        """A mapping's values by key; unknown keys (when ``allowed`` is given) and missing ones are errors."""
        pairs = self.entries(node, key)
        for k, _ in pairs:
            if allowed is not None and k.value not in allowed:
                name = f"{key}.{k.value}" if key else k.value
                raise self.fail(k, name, "unknown key", allowed)
        values = {k.value: v for k, v in pairs}
        for name in required:
            if name not in values:
                full = f"{key}.{name}" if key else name
                raise self.fail(node, full, "missing required key")
        return values

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, f"expected a list, got {describe(node)}")
        return list(node.value)

    def _scalar(self, node: yaml.Node, key: str, tags: tuple[str, ...], expected: str) -> object:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            raise self.fail(node, key, f"expected {expected}, got {describe(node)}")
        if node.tag == STR:
            return node.value
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            raise self.fail(node, key, f"bad {expected}: {' '.join(str(e).split())}") from None

    def string(self, node: yaml.Node, key: str) -> str:
        value = cast(str, self._scalar(node, key, (STR,), "a string"))
        if not value.strip():
            raise self.fail(node, key, "must not be empty")
        return value

    def opt_string(self, node: yaml.Node, key: str) -> str | None:
        if self.is_null(node):
            return None
        return self.string(node, key)

    def string_list(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(self.sequence(node, key)))

    def safe_name(self, node: yaml.Node, key: str, *, is_key: bool = False) -> str:
        value = node.value if is_key and isinstance(node, yaml.ScalarNode) else self.string(node, key)
        if not is_safe_name(value):
            raise self.fail(
                node,
                key,
                f"{value!r} is not a safe name: use letters, digits, '.', '_' and '-', starting with a "
                f"letter or digit, without '..' ({SAFE_NAME_PATTERN})",
            )
        return value

    def matching(self, node: yaml.Node, key: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.string(node, key)
        if not pattern.match(value):
            raise self.fail(node, key, f"{value!r} is not {what} (no spaces or shell characters)")
        return value

    def opt(self, m: dict[str, yaml.Node], name: str, read: Callable[[yaml.Node], _T]) -> _T | None:
        """``read`` the value of ``name`` in ``m``; None when the key is absent or null."""
        node = m.get(name)
        if node is None or self.is_null(node):
            return None
        return read(node)

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == NULL

    def template(self, node: yaml.Node, key: str, placeholders: Sequence[str]) -> str:
        """A command template: ``{name}`` placeholders from ``placeholders`` only, ``{{``/``}}`` literal."""
        value = self.string(node, key)
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as e:
            raise self.fail(
                node, key, f"malformed template (use {{{{ and }}}} for literal braces): {e}"
            ) from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in placeholders or spec or conversion:
                shown = (
                    "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
                raise self.fail(node, key, f"unknown placeholder {printable(shown)}", placeholders)
        return value

    def choice(self, node: yaml.Node, key: str, allowed: Sequence[str]) -> str:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == STR and node.value in allowed):
            shown = node.value if isinstance(node, yaml.ScalarNode) else describe(node)
            raise self.fail(node, key, f"unknown value {shown!r}", allowed)
        return cast(str, node.value)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        return cast(bool, self._scalar(node, key, (BOOL,), "true or false"))

    def integer(
        self, node: yaml.Node, key: str, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = cast(int, self._scalar(node, key, (INT,), "an integer"))
        if minimum is not None and value < minimum:
            raise self.fail(node, key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(node, key, f"must be at most {maximum}, got {value}")
        return value

    def number(
        self, node: yaml.Node, key: str, *, positive: bool = False, non_negative: bool = False
    ) -> float:
        value = float(cast(float, self._scalar(node, key, (INT, FLOAT), "a number")))
        if math.isnan(value) or math.isinf(value):
            raise self.fail(node, key, f"must be a finite number, got {value}")
        if positive and value <= 0:
            raise self.fail(node, key, f"must be greater than 0, got {value:g}")
        if non_negative and value < 0:
            raise self.fail(node, key, f"must not be negative, got {value:g}")
        return value

    def url(self, node: yaml.Node, key: str) -> str:
        value = self.string(node, key)
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise self.fail(node, key, f"expected an http:// or https:// URL, got {value!r}")
        return value

    def path(self, node: yaml.Node, key: str, base: Path) -> Path:
        """A file system path: ``~`` expanded, relative paths taken from ``base``."""
        text = self.string(node, key)
        try:
            p = Path(text).expanduser()
        except RuntimeError:
            raise self.fail(node, key, f"cannot expand '~' in {text!r}") from None
        return Path(os.path.normpath(p if p.is_absolute() else base / p))

    def opt_path(self, node: yaml.Node, key: str, base: Path) -> Path | None:
        if self.is_null(node):
            return None
        return self.path(node, key, base)

    def abs_path_text(self, node: yaml.Node, key: str) -> str:
        """A path on the nodes (not on this machine): must be absolute; kept as written."""
        value = self.string(node, key)
        if not value.startswith("/"):
            raise self.fail(node, key, f"must be an absolute path on the node, got {value!r}")
        return value

    def plain_setting(self, node: yaml.Node, key: str) -> object:
        """A suite-specific setting: a scalar, or a list of scalars (returned as a tuple)."""
        scalar_tags = (STR, INT, FLOAT, BOOL, NULL)
        if isinstance(node, yaml.SequenceNode):
            return tuple(
                self._scalar(item, f"{key}[{i}]", scalar_tags, "a plain value")
                for i, item in enumerate(node.value)
            )
        return self._scalar(node, key, scalar_tags, "a plain value or a list of them")
