"""Calls as the embedded chain carries them: :class:`ComposedCall` and its normalization.

``LocalSubstrate.compose`` turns whatever the SDK hands it (an intent's call,
a ``(module, function, params)`` tuple, a nested call inside ``Sudo.sudo``)
into a :class:`ComposedCall` with plain JSON-able parameters: bytes become
0x-hex and nested calls become call dicts, which is what the runtime
dispatches and what receipts record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ComposedCall:
    """A chain-ready call: what ``compose`` returns and ``submit`` accepts."""

    module: str
    function: str
    params: dict
    data: bytes = field(repr=False, default=b"")

    @property
    def call_module(self) -> str:
        return self.module

    @property
    def call_function(self) -> str:
        return self.function

    @property
    def value(self) -> dict:
        return {
            "call_module": self.module,
            "call_function": self.function,
            "call_args": [{"name": k, "value": v} for k, v in self.params.items()],
        }

    def as_dict(self) -> dict:
        return {"module": self.module, "function": self.function, "params": self.params}


def normalize(value: Any) -> Any:
    """Plain JSON-able call parameters; nested calls become call dicts."""
    if isinstance(value, ComposedCall):
        return value.as_dict()
    if hasattr(value, "module") and hasattr(value, "function") and hasattr(value, "params"):
        return compose_call(value).as_dict()
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


def compose_call(call: Any) -> ComposedCall:
    if isinstance(call, ComposedCall):
        return call
    if isinstance(call, tuple) and len(call) == 3:
        module, function, params = call
    else:
        module, function, params = call.module, call.function, call.params
    params = {str(k): normalize(v) for k, v in dict(params or {}).items()}
    data = json.dumps([module, function, params], sort_keys=True, separators=(",", ":")).encode()
    return ComposedCall(module, function, params, data)


def as_call(composed: Any) -> ComposedCall:
    if isinstance(composed, ComposedCall):
        return composed
    return compose_call(composed)
