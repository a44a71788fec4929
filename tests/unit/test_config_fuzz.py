"""Fuzzing the loaders: whatever the input, the result is a valid config/inventory or a ConfigError
with a one-line message naming the file — never any other exception.

Inputs: arbitrary text, YAML-ish text built from YAML's own punctuation and our keys, arbitrary
nested data dumped to YAML, and the shipped examples with one value somewhere replaced by junk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_vpstest.config import (
    INVENTORY_KEYS,
    NODE_KEYS,
    PROJECT_KEYS,
    Inventory,
    ProjectConfig,
    parse_inventory,
    parse_project_config,
)
from pytest_vpstest.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
EXAMPLE_CONFIG = yaml.safe_load((EXAMPLES / "example-config.yaml").read_text())
EXAMPLE_FLEET = yaml.safe_load((EXAMPLES / "example-fleet.yaml").read_text())
CONFIG_PATH = "/fuzz/project/config.yaml"
INVENTORY_PATH = "/fuzz/project/nodes.yaml"

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_both(text: str) -> None:
    for parse, path, kind in (
        (parse_project_config, CONFIG_PATH, ProjectConfig),
        (parse_inventory, INVENTORY_PATH, Inventory),
    ):
        try:
            result = parse(text, path)
        except ConfigError as e:
            message = str(e)
            assert message.startswith(path), message
            assert len(message.splitlines()) == 1, message
        else:
            assert isinstance(result, kind)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["all", "lab", "none", "symmetric", "http://127.0.0.1:1/x", "~", "../x", "/abs", "2025-01-10"]
    ),
)
known_keys = st.sampled_from(
    sorted({*PROJECT_KEYS, *INVENTORY_KEYS, *NODE_KEYS, "command", "binary", "url", "kind"})
)
keys = st.one_of(known_keys, st.text(max_size=8), st.integers(-5, 5))
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
documents = st.one_of(nested, st.dictionaries(known_keys, nested, max_size=8))


@FUZZ
@given(st.text(max_size=300))
def test_any_text_loads_or_raises_config_error(text: str) -> None:
    check_both(text)


yaml_tokens = st.sampled_from(
    [
        *(
            f"{k}:"
            for k in ("project", "workspace", "nodes", "name", "host", "build", "command", "tests", "soak")
        ),
        ": ",
        "- ",
        "\n",
        "\n  ",
        "\n    ",
        " ",
        "\t",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "<<: ",
        "!!str ",
        "!!binary ",
        "!!timestamp ",
        "!!python/object ",
        "!custom ",
        "'",
        '"',
        "? ",
        "|\n",
        ">-\n",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "#",
        "~",
        "null",
        "yes",
        "0x1F",
        "1_000",
        "12:30",
        "-.inf",
        ".nan",
        "2025-13-45",
        "n1",
        "../x",
        "\\u0000",
        "\x00",
        "\ufeff",
    ]
)


@FUZZ
@given(st.lists(yaml_tokens, max_size=40).map("".join))
def test_yaml_ish_text_loads_or_raises_config_error(text: str) -> None:
    check_both(text)


@FUZZ
@given(documents)
def test_arbitrary_data_dumped_to_yaml_loads_or_raises_config_error(data: Any) -> None:
    check_both(yaml.safe_dump(data, allow_unicode=True))


def paths_of(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_of(v, (*prefix, i))
    return out


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (replaced(v, rest, value) if k == head else v) for k, v in doc.items()}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@FUZZ
@given(st.data())
def test_examples_with_one_value_replaced_load_or_raise_config_error(data: st.DataObject) -> None:
    for example in (EXAMPLE_CONFIG, EXAMPLE_FLEET):
        path = data.draw(st.sampled_from(paths_of(example)))
        check_both(yaml.safe_dump(replaced(example, path, data.draw(nested)), allow_unicode=True))


def test_the_unmodified_examples_pass_the_same_check() -> None:
    assert isinstance(parse_project_config(yaml.safe_dump(EXAMPLE_CONFIG), CONFIG_PATH), ProjectConfig)
    assert isinstance(parse_inventory(yaml.safe_dump(EXAMPLE_FLEET), INVENTORY_PATH), Inventory)
