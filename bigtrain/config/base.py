"""The schema's building blocks: a section that forbids unknown keys, dict merging, one-line errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_serializer


class Section(BaseModel):
    # Unknown keys are errors, values are not silently coerced across types (e.g. "abc" -> int).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartialSection(Section):
    """Some keys of a section (a stage's overrides): dumps only the keys that were given."""

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def partial(cls: type[Section]) -> type[PartialSection]:
    """`cls` with every key optional: names and types are checked when the recipe loads, the section merged
    with the recipe's is validated whole afterwards (its ranges and cross-field checks)."""
    fields: dict[str, Any] = {name: (f.annotation | None, None) for name, f in cls.model_fields.items()}
    return create_model(f"Partial{cls.__name__}", __base__=PartialSection, __doc__=cls.__doc__, **fields)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key {loc!r}"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {loc}: {msg}{shown}"
