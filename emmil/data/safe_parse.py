"""Parse user-supplied JSON and YAML without memory or stack bombs (issue 15, item 3).

- `load_json`: UTF-8 only (an error names the file and the byte offset otherwise), duplicate keys in an
  object refused (json's default silently keeps the last one, dropping annotations), nesting bounded
  by MAX_DEPTH (a 100k-deep `[[[...]]]` used to end in RecursionError), NaN/Infinity parsed as NaN
  so that the callers' finiteness checks name the field.
- `load_yaml`: the same for YAML, plus aliases (`*a`) refused: an alias bomb (`a: &a [x, x]`,
  `b: &b [*a, *a]`, ... ) is a few hundred bytes that expand to gigabytes when walked or printed;
  tags SafeLoader cannot build (`!!python/object:...`) refused by name, and duplicate keys refused.
  Errors are one line: `FILE: not valid YAML (<problem> at line L column C)`.
- `short_repr`: a bounded repr for error messages (a value from a file can be arbitrarily large).
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from emmil.errors import DataError

MAX_DEPTH = 32  # the ActivityNet JSON formats nest 5-6 deep, config/experiment YAML 3-4
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxlong = 40


def short_repr(value: Any, limit: int = 200) -> str:
    """repr(value), abbreviated with '...' to at most `limit` characters (never walks all of it)."""
    try:
        text = _SHORT.repr(value)
    except RecursionError:  # pragma: no cover - reprlib stops at maxlevel
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path, what: str, error=DataError) -> str:
    """The file's text, decoded as UTF-8; `error` (a DataError/ConfigError class) names the path."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a directory, expected a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
                    f"{exc.start})") from None


class _Repeated(dict):
    """A parsed JSON object that repeated a key (`key`): held until the walk can say where it is."""

    key: Any = None


def _location(chain) -> str:
    """`['database']['video_1']['annotations'][0]` from a (parent chain, key) link list; "top level" if empty."""
    keys = []
    while chain is not None:
        chain, key = chain
        keys.append(key)
    return "".join(f"[{k!r}]" for k in reversed(keys)) or "the top level"


def _fault(value: Any, limit: int) -> str | None:
    """The first fault met walking down from the top: containers nested deeper than `limit`, or an
    object with a repeated key (and where it is). Iterative: no recursion on hostile input; only
    containers are pushed (the leaves of a 400k-prediction file are most of its nodes)."""
    containers = (dict, list, tuple)
    stack = [(value, 1, None)]  # (container, depth, chain to it: (parent chain, key) or None)
    while stack:
        v, d, chain = stack.pop()
        if not isinstance(v, containers):
            continue
        if d > limit:
            return f"JSON nested more than {limit} levels deep"
        if isinstance(v, _Repeated):
            return (f"duplicate key {short_repr(v.key)} in one JSON object (at {_location(chain)}; a second "
                    "entry would silently replace the first)")
        items = v.items() if isinstance(v, dict) else enumerate(v)
        stack.extend((c, d + 1, (chain, k)) for k, c in items if isinstance(c, containers))
    return None


def load_json(path, what: str = "JSON", *, error=DataError, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON file strictly (see the module docstring); every error names `path`, and a
    duplicate key also where it is (e.g. `['database']` for a video listed twice)."""
    text = read_text(path, what, error)

    def pairs(items: list) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                repeated = _Repeated(out)
                repeated.key = key
                return repeated
            out[key] = value
        return out

    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_constant=lambda c: float("nan"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested more than {max_depth} levels deep") from None
    fault = _fault(doc, max_depth)
    if fault is not None:
        raise error(f"{path}: {fault}")
    return doc


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and bounds nesting while composing (before anything is built)."""

    max_depth = MAX_DEPTH

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refused (anchors/aliases are not allowed in these files: "
                "a few aliased lines can expand to gigabytes)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(None, None, f"nested more than {self.max_depth} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):  # a repeated key: SafeLoader keeps the last one silently
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key)} (a second entry would silently replace the "
                        "first)", key_node.start_mark)
                seen.add(key)
        return mapping

    def construct_refused_tag(self, node):
        # SafeLoader's message ("could not determine a constructor") does not say this is deliberate
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} refused (only plain YAML: mappings, lists, strings, numbers, booleans, "
            "null; python/* tags would build arbitrary objects)", node.start_mark)


_StrictLoader.add_constructor(None, _StrictLoader.construct_refused_tag)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own text spans several lines with a source excerpt)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        return "; ".join(x for x in (exc.context, exc.problem) if x) + where
    return " ".join(str(exc).split())


def parse_yaml(text: str, where: str, *, error=DataError) -> Any:
    """yaml.safe_load of `text` without aliases and with bounded nesting; errors name `where`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:  # pragma: no cover - compose_node stops at max_depth first
        raise error(f"{where}: YAML nested more than {MAX_DEPTH} levels deep") from None


def load_yaml(path, what: str = "YAML", *, error=DataError) -> Any:
    """Parse a YAML file (UTF-8, no aliases, bounded nesting); every error names `path`."""
    return parse_yaml(read_text(path, what, error), str(path), error=error)
