"""Types of JSON documents, for what ``json.loads`` returns and ``json.dumps`` takes.

:data:`Json` is any JSON value; :data:`JsonObject` a JSON object.  A document
read from outside is ``object`` until checked (``isinstance``); these types
are for documents this code builds or has checked.
"""

from __future__ import annotations

from typing import TypeAlias

#: A JSON value of any kind.
Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
#: A JSON object.
JsonObject: TypeAlias = "dict[str, Json]"

__all__ = ["Json", "JsonObject"]
