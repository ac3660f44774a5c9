from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from sparkml_prod.core.config import GenerateConfig, load_config
from sparkml_prod.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Window:
    name: str
    days: int


@dataclasses.dataclass(frozen=True)
class Example:
    table: str
    windows: list[Window]
    rate: float = 0.5
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    as_of: dt.date | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_loads_nested_dataclasses_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "table: events\nwindows:\n  - {name: week, days: 7}\nrate: 1\nas_of: 2024-06-01\n",
    )
    assert load_config(path, Example) == Example(
        table="events",
        windows=[Window("week", 7)],
        rate=1.0,
        tags={},
        as_of=dt.date(2024, 6, 1),
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.yaml", Example)
    assert str(err.value) == f"Config file {tmp_path / 'absent.yaml'} does not exist."


def test_unknown_key_is_named_with_the_expected_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "table: events\nwindows: []\nwindow: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Example)
    assert str(err.value) == (
        f"{path}: unknown key 'window'; expected one of: as_of, rate, table, tags, windows."
    )


def test_missing_required_nested_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "table: events\nwindows:\n  - {name: week}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Example)
    assert str(err.value) == f"{path}: missing required key 'windows[0].days' (an integer)."


def test_wrong_type_is_named_with_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, "table: events\nwindows: []\nrate: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Example)
    assert str(err.value) == f"{path}: key 'rate' must be a number, got str 'fast'."
    path = write(tmp_path, "table: events\nwindows: []\nas_of: yesterday\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Example)
    assert str(err.value) == (
        f"{path}: key 'as_of' must be a date (YYYY-MM-DD) or null, got str 'yesterday'."
    )


def test_a_boolean_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path, "table: events\nwindows:\n  - {name: week, days: true}\n")
    with pytest.raises(
        ConfigError, match="key 'windows\\[0\\].days' must be an integer, got bool True"
    ):
        load_config(path, Example)


def test_malformed_yaml_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "table: [events\n")
    with pytest.raises(ConfigError, match=f"Config file {path} is not valid YAML"):
        load_config(path, Example)


def test_shipped_generate_config_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "conf" / "generate.yaml", GenerateConfig)
    assert config.events_table == "demo-output/tables/events"
    assert config.seed == 42
