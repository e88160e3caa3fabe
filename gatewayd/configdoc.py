"""Renders the commented example configuration (``config/gatewayd.toml``) from the settings schema, so
the example cannot drift from the code: every option appears with its description as a comment."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from gatewayd.settings import Settings

# What the bundled example differs in from the built-in defaults: it runs from a checkout (make run).
EXAMPLE_OVERRIDES: dict[str, Any] = {
    "spool.path": "var/spool",
    "storage.url": "sqlite+aiosqlite:///var/gatewayd.db",
    "imap.listen": ["127.0.0.1:1143"],
}

HEADER = """\
# gatewayd configuration. Generated from the settings schema by `gatewayd example-config`;
# every option is shown with its default (or the value this example uses) and what it does.
# Any option can also be set from the environment: GATEWAYD_<SECTION>__<KEY>, nested with "__",
# e.g. GATEWAYD_SMTP__UPSTREAM__PORT=2525. Durations accept 30s, 5m, 2h, 5d.
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")


def _section(model: type[BaseModel], prefix: str, defaults: BaseModel, out: list[str]) -> None:
    subsections = []
    lines = []
    for name, field in model.model_fields.items():
        value = getattr(defaults, name)
        dotted = f"{prefix}.{name}" if prefix else name
        if isinstance(value, BaseModel):
            subsections.append((type(value), dotted, value))
            continue
        value = EXAMPLE_OVERRIDES.get(dotted, value)
        for line in (field.description or "").splitlines():
            lines.append(f"# {line}")
        lines.append(f"{name} = {_toml(value)}")
    if prefix and lines:
        out.append(f"\n[{prefix}]")
        out.extend(lines)
    for sub_model, dotted, sub_defaults in subsections:
        _section(sub_model, dotted, sub_defaults, out)


def render() -> str:
    out = [HEADER.rstrip("\n")]
    _section(Settings, "", Settings(), out)
    return "\n".join(out) + "\n"
