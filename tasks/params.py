"""params.yaml read into one validated `Config`, with `-S key=value` overrides.

Overrides use DVC's `-S key=value` syntax everywhere (the CLI and the flow's
`overrides` parameter); the value is read as YAML, as DVC reads it. Unknown keys
and bad values fail at once with the key's dotted name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tasks.config import Config
from tasks.errors import StepError

PARAMS_FILE = "params.yaml"


class ConfigError(StepError):
    """A params file or override that cannot be used; the message names the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=5` -> (["train", "epochs"], 5); the value is read as YAML, like DVC."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    params = yaml.safe_load(yaml.safe_dump(params))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = params
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return params


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}"


def validate(params: dict[str, Any], origin: str = PARAMS_FILE) -> Config:
    try:
        return Config.model_validate(params)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        if len(problems) == 1:
            raise ConfigError(f"{origin}: {problems[0]}") from None
        raise ConfigError(f"{origin}: invalid params\n" + "\n".join(f"  {p}" for p in problems)) from None


def read_params(params_file: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def load_config(params_file: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Config:
    """Read, override and validate; raises ConfigError naming the bad key."""
    params = apply_overrides(read_params(params_file), list(overrides or []))
    return validate(params, origin=str(params_file))
