"""Reading YAML that an operator (or an attacker) wrote, into plain str/list/dict/None.

PyYAML's loaders implement YAML 1.1: ``0123`` becomes 83, ``on`` becomes True, ``1:30`` becomes 90,
an extension key ``0777`` becomes 511, and hostile input ends in a traceback (an unhashable key, a
5,000-deep nesting, an alias bomb). Here only the composer is PyYAML's; the tags and the Python
values are ours:

- ``text`` (declarative files): every scalar is the text written, except null (``~``, ``null``,
  empty). Types come later, from the models and the database, which see what the operator wrote.
- ``core`` (scenario files): YAML 1.2's core schema: null, ``true``/``false``, decimal integers
  and floats; a number with a leading zero (a phone number) stays text. No YAML 1.1 octal,
  sexagesimal or yes/no booleans.

Every refusal is a :class:`ConfigError` of one line that names the line and the rule and never
quotes a value (it may be a password).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from pbx_base.errors import InvalidInput

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_SCALAR", "ConfigError", "Schema", "decode_utf8", "load_yaml", "shorten"]

Schema = Literal["text", "core"]

# Deep enough for any declarative file or scenario (theirs is < 12); shallow enough that nothing
# recursive downstream (the models, the checks) can reach Python's recursion limit.
MAX_DEPTH = 64
# No option, name or domain Asterisk accepts comes near this; it bounds what a refusal must handle.
MAX_SCALAR = 4096
MAX_FILE_BYTES = 16 * 1024 * 1024

_TAG = "tag:yaml.org,2002:"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ConfigError(InvalidInput, ValueError):
    """A refused declarative file; the message is one line naming the object and the rule."""


class _TextResolver(BaseResolver):
    pass


_TextResolver.add_implicit_resolver(_TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _CoreResolver(BaseResolver):
    pass


# YAML 1.2.2's core schema (section 10.3.2), except that a number written with a leading zero
# stays text, as in declarative files: scenario files hold phone numbers (0800111, 0049...).
_CoreResolver.add_implicit_resolver(_TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_CoreResolver.add_implicit_resolver(_TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_CoreResolver.add_implicit_resolver(_TAG + "int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_CoreResolver.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:0|[1-9][0-9]*)?\.[0-9]+(?:[eE][-+]?[0-9]+)?|[-+]?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?[eE][-+]?[0-9]+"
        r"|[-+]?(?:0|[1-9][0-9]*)\.|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


class _BoundedComposer(Reader, Scanner, Parser, Composer):
    """PyYAML's composer with a depth limit and without aliases (an alias bomb expands
    exponentially in whatever walks the result; declarative files have templates for sharing)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        self._depth = 0

    def _line(self) -> int:
        return int(self.peek_event().start_mark.line)  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            raise ConfigError(f"line {self._line() + 1}: an alias (rule: anchors and aliases are not accepted)")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(
                f"line {self._line() + 1}: nested deeper than {MAX_DEPTH} levels (rule: nesting depth is limited)"
            )
        try:
            node: Node | None = super().compose_node(parent, index)
            assert node is not None  # only the document level can be empty
            return node
        finally:
            self._depth -= 1


class _TextComposer(_BoundedComposer, _TextResolver):
    def __init__(self, text: str) -> None:
        _BoundedComposer.__init__(self, text)
        _TextResolver.__init__(self)


class _CoreComposer(_BoundedComposer, _CoreResolver):
    def __init__(self, text: str) -> None:
        _BoundedComposer.__init__(self, text)
        _CoreResolver.__init__(self)


def shorten(value: object, limit: int = 60) -> str:
    """A name from the input as a refusal quotes it: cut to ``limit`` characters, and as a Python
    literal when it holds something unprintable (the message stays one line)."""
    text = str(value)
    if not text.isprintable():
        text = repr(text)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def decode_utf8(data: bytes, source: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(data)} bytes (rule: files are at most {MAX_FILE_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: byte {exc.start} is not UTF-8 (rule: files are UTF-8)") from None


def load_yaml(text: str, source: str = "<input>", schema: Schema = "core") -> Any:
    """One YAML document as str/int/float/bool/None/list/dict (``text``: str/None/list/dict)."""
    composer: _BoundedComposer | None = None
    try:
        composer = _TextComposer(text) if schema == "text" else _CoreComposer(text)
        node = composer.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {_describe_yaml_error(exc)}") from None
    except yaml.YAMLError as exc:
        # Reader errors (a non-printable character) carry no mark; their text quotes no value.
        raise ConfigError(f"{source}: malformed YAML: {' '.join(str(exc).split())}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    finally:
        if composer is not None:
            composer.dispose()
    if node is None:
        return None
    try:
        return _build(node, schema)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    # PyYAML's own str() adds a snippet of the offending line: it may hold a password.
    mark = exc.problem_mark or exc.context_mark
    parts = [p for p in (exc.context, exc.problem) if p]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(" ".join(parts).split())


def _build(node: Node, schema: Schema) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, ScalarNode):
        return _scalar(node, schema, line)
    if isinstance(node, SequenceNode):
        if node.tag != _TAG + "seq":
            raise ConfigError(f"line {line}: tag {node.tag} (rule: only plain YAML lists are accepted)")
        return [_build(item, schema) for item in node.value]
    assert isinstance(node, MappingNode)
    if node.tag != _TAG + "map":
        raise ConfigError(f"line {line}: tag {node.tag} (rule: only plain YAML mappings are accepted)")
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a list or mapping used as a key (rule: keys are scalars)"
            )
        key = _scalar(key_node, schema, key_node.start_mark.line + 1)
        if key in out:
            raise ConfigError(
                f"duplicate key {shorten(key)!r} at line {key_node.start_mark.line + 1} (rule: keys must be unique)"
            )
        out[key] = _build(value_node, schema)
    return out


def _scalar(node: ScalarNode, schema: Schema, line: int) -> Any:
    value: str = node.value
    if len(value) > MAX_SCALAR:
        raise ConfigError(f"line {line}: a value of {len(value)} characters (rule: values are at most {MAX_SCALAR})")
    # Declarative values end up in SIP headers and dialplan; a scenario's prose may span lines.
    m = _CONTROL.search(value) if schema == "text" else None
    if m:
        raise ConfigError(
            f"line {line}: control character U+{ord(m.group()):04X} in a value "
            "(rule: control characters and line breaks are refused)"
        )
    tag = node.tag
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "str":
        return value
    if schema == "core":
        if tag == _TAG + "bool":
            return value.lower() == "true"
        if tag == _TAG + "int":
            return int(value)
        if tag == _TAG + "float":
            special = value.lstrip("+-").lower()
            if special in (".inf", ".nan"):
                return float(value.lower().replace(".", "", 1))
            return float(value)
    raise ConfigError(f"line {line}: tag {tag} (rule: only plain YAML scalars are accepted)")
