"""Typed AMP calls and typed reads of their answers.

Twisted's ``AMP.callRemote`` carries no annotations, and an answer is a
plain dict whose values the command's ``response`` schema has already
parsed (``amp.Unicode`` gives ``str``, ``amp.Float`` ``float``, ...).
:func:`call_remote` is ``callRemote`` with a type: its answer is an
:data:`AmpAnswer`, read with :func:`text`, :func:`number` and the other
accessors, which check the value's type and raise :class:`AnswerError`
when a command's schema and the code reading it disagree.

:func:`one_way` guards the responder of a command that has no answer: an
error AMP is left with closes the connection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import ParamSpec

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp

log = Logger(namespace="cryptify.protocols.amp")
_P = ParamSpec("_P")

#: An AMP command's answer: argument names to parsed values.
AmpAnswer = dict[str, object]


class AnswerError(TypeError):
    """An answer lacks a value, or holds one of another type than its reader expects."""


def call_remote(
    proto: amp.BoxDispatcher, command: type[amp.Command], **arguments: object
) -> Deferred[AmpAnswer]:
    """``proto.callRemote(command, **arguments)``, typed."""
    answer: Deferred[AmpAnswer] = proto.callRemote(command, **arguments)
    return answer


def one_way(
    what: str,
) -> Callable[[Callable[_P, dict[str, object]]], Callable[_P, dict[str, object]]]:
    """A responder of a command without an answer (``requiresAnswer =
    False``) whose error is logged (``what``, with the traceback) and goes
    no further: left to AMP, it would close the connection, and with it
    whatever else goes over it.  Put it under the command's ``responder``."""

    def guard(responder: Callable[_P, dict[str, object]]) -> Callable[_P, dict[str, object]]:
        @functools.wraps(responder)
        def respond(*args: _P.args, **kwargs: _P.kwargs) -> dict[str, object]:
            try:
                return responder(*args, **kwargs)
            except Exception:
                log.failure(what)
                return {}

        return respond

    return guard


def _value(answer: Mapping[str, object], name: str) -> object:
    try:
        return answer[name]
    except KeyError:
        raise AnswerError(f"the answer has no {name}") from None


def _wrong(name: str, value: object, what: str) -> AnswerError:
    return AnswerError(f"{name} is a {type(value).__name__}, not {what}")


def text(answer: Mapping[str, object], name: str) -> str:
    """The string ``name`` of an answer."""
    value = _value(answer, name)
    if not isinstance(value, str):
        raise _wrong(name, value, "a string")
    return value


def integer(answer: Mapping[str, object], name: str) -> int:
    """The integer ``name`` of an answer."""
    value = _value(answer, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(name, value, "an integer")
    return value


def number(answer: Mapping[str, object], name: str) -> float:
    """The number (integer or float) ``name`` of an answer."""
    value = _value(answer, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _wrong(name, value, "a number")
    return value


def optional_text(answer: Mapping[str, object], name: str) -> str | None:
    """The string ``name`` of an answer, None when absent (an optional argument)."""
    return None if answer.get(name) is None else text(answer, name)


def optional_number(answer: Mapping[str, object], name: str) -> float | None:
    """The number ``name`` of an answer, None when absent (an optional argument)."""
    return None if answer.get(name) is None else number(answer, name)


__all__ = [
    "AmpAnswer",
    "AnswerError",
    "call_remote",
    "integer",
    "number",
    "one_way",
    "optional_number",
    "optional_text",
    "text",
]
