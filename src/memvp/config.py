"""Config helpers every method's config and the training config share: a JSON round trip that
refuses unknown keys, and type / choice checks that name the key at fault."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_SIMPLE_TYPES = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "dict": "a mapping (key: value pairs)",
}


def check_field_types(instance: Any, owner: str = "") -> None:
    """Check (and where YAML needs it, convert) the dataclass fields typed with simple types: int,
    float, bool, str, dict, each optionally ``| None``. Other annotations are left to the owner's
    own checks. A wrong type is a ValueError naming the key, not a TypeError deep in training."""
    for f in dataclasses.fields(instance):
        parts = [p.strip() for p in str(f.type).split("|")]
        optional = "None" in parts
        kinds = [p for p in parts if p != "None"]
        if len(kinds) != 1 or kinds[0] not in _SIMPLE_TYPES:
            continue
        kind, value = kinds[0], getattr(instance, f.name)
        if value is None and optional:
            continue
        if kind == "float" and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
                setattr(instance, f.name, value)
            except ValueError:
                pass
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "dict": isinstance(value, dict),
        }[kind]
        if not ok:
            hint = " or null" if optional else ""
            raise ValueError(
                f"{owner + '.' if owner else ''}{f.name} must be {_SIMPLE_TYPES[kind]}{hint}, got {value!r}"
            )


class DictConfig:
    """JSON round trip for the config dataclasses; unknown keys are an error, not ignored."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


def check_choice(name: str, value: Any, choices: tuple[str, ...], owner: str = "MemVPConfig") -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


__all__ = ["DictConfig", "check_choice", "check_field_types"]
