"""The configuration reference (``docs/reference.md``), generated from the settings models.

Every table and key comes from walking ``Settings`` and the models it nests; types,
defaults and constraints come from each field's annotation and ``FieldInfo``, and the
description from the field's attribute docstring (or, for models documented the Google
way, the ``Attributes:`` section of the class docstring). Nothing here lists keys by hand,
so a new field shows up in the reference as soon as it exists, and
``tests/unit/test_reference.py`` fails until ``docs/reference.md`` is regenerated::

    python -m coalmine.config.reference > docs/reference.md
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic_core import PydanticUndefined

from coalmine.config.durations import format_duration, parse_duration
from coalmine.config.settings import CONFIG_ENV, ENV_DELIMITER, ENV_PREFIX, Settings

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

COMMAND = "python -m coalmine.config.reference > docs/reference.md"
"""How ``docs/reference.md`` is regenerated."""

NAME = "<name>"
"""Stands for the name of an entry of a table of tables (``[profiles.<name>]``)."""

_SECTION_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:$")
_ATTRIBUTE = re.compile(r"^    (\w+)(?: \([^)]*\))?: ?(.*)$")
_TYPE_NAMES: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
    SecretStr: "secret",
}
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table, as the reference shows it.

    Attributes:
        name: The key as written in the file.
        type: Readable type with its constraints (``integer > 0``, ``duration``).
        default: The default as written in TOML, ``unset`` or ``required``.
        env: The environment variable that sets it, or ``None`` inside arrays of tables.
        description: What it does, one line.
    """

    name: str
    type: str
    default: str
    env: str | None
    description: str


@dataclass(frozen=True, slots=True)
class Table:
    """One TOML table (or array of tables) and its keys.

    Attributes:
        heading: ``[kafka]``, ``[[profiles.<name>.metrics]]``; empty for the top level.
        model: The model the table is validated by.
        depth: 1 for the top level, 2 for its tables, one more per level of nesting.
        intro: Markdown paragraphs from the model's docstring, and notes.
        keys: The model's fields, in declaration order.
    """

    heading: str
    model: type[BaseModel]
    depth: int
    intro: tuple[str, ...]
    keys: tuple[Key, ...]

    @property
    def title(self) -> str:
        """The Markdown heading line: tables of the top level are level 2, nested ones deeper."""
        return f"{'#' * max(2, self.depth)} {self.heading or 'Top-level keys'}"


@dataclass(frozen=True, slots=True)
class _Child:
    """A field whose value is itself a table (or tables) with its own section."""

    model: type[BaseModel]
    headings: tuple[str, ...]
    path: str
    env: tuple[str, ...] | None
    array: bool
    field: FieldInfo
    variant: str = ""


def tables() -> list[Table]:
    """Every table of the configuration, the top level first, each followed by its own."""
    found: list[Table] = []
    _walk(Settings, "", (), 1, found, ())
    return found


def render_reference() -> str:
    """The Markdown of ``docs/reference.md``."""
    parts = [_preamble(), *(_render_table(table) for table in tables())]
    return "\n".join(parts).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- walking


def _walk(  # noqa: PLR0913 - the place of a table in the tree, and what it is
    model: type[BaseModel],
    path: str,
    env: tuple[str, ...] | None,
    depth: int,
    found: list[Table],
    headings: tuple[str, ...],
    notes: tuple[str, ...] = (),
    *,
    variant: str = "",
) -> None:
    """Append the table of ``model`` at ``path`` to ``found``, then its nested tables.

    A table met again (the same model at the same heading, as the tables shared by the
    variants of an array of tables) is listed once.
    """
    heading = ", ".join(f"`{h}`" for h in headings)
    if variant:
        heading += f" with `{variant}`"
    if any(table.model is model and table.heading == heading for table in found):
        return
    keys: list[Key] = []
    children: list[_Child] = []
    documented = _attribute_docs(model)
    for name, field in model.model_fields.items():
        key, nested = _key(name, field, path, env, documented.get(name, ""))
        keys.append(key)
        children.extend(nested)
    intro = (*_intro(model), *notes)
    found.append(Table(heading, model, depth, intro, tuple(keys)))
    for child in _merge_siblings(children):
        child_notes: list[str] = []
        if child.array and env is not None:
            whole = _env_name((*env, child.path.rsplit(".", 1)[-1]), complex_value=False)
            child_notes.append(
                "Keys of an array of tables have no environment variables of their own: "
                f"set the whole array as JSON in {whole}."
            )
        builtin = _builtin_entries(child)
        if builtin:
            child_notes.append(builtin)
        _walk(
            child.model,
            child.path,
            child.env,
            depth + 1,
            found,
            child.headings,
            tuple(child_notes),
            variant=child.variant,
        )


def _key(
    name: str, field: FieldInfo, path: str, env: tuple[str, ...] | None, documented: str
) -> tuple[Key, list[_Child]]:
    """The row of one field, and the tables it opens, if it holds tables."""
    annotation = _unoptional(field.annotation)
    key_path = f"{path}.{name}" if path else name
    key_env = (*env, name) if env is not None else None
    model = _child_model(annotation)
    shape = _shape(annotation)
    type_text = _describe_type(annotation, field)
    nested: _Child | None = None
    if model is not None and shape == "table":
        nested = _Child(model, (f"[{key_path}]",), key_path, key_env, False, field)
    elif model is not None and shape == "array":
        nested = _Child(model, (f"[[{key_path}]]",), key_path, None, True, field)
    elif model is not None:  # a table of tables, by name
        named = f"{key_path}.{NAME}"
        named_env = (*key_env, NAME) if key_env is not None else None
        nested = _Child(model, (f"[{named}]",), named, named_env, False, field)
    variants = _variants(annotation)
    if nested is not None:
        type_text += f": see `{nested.headings[0]}`"
    elif variants:
        type_text += f": see `[[{key_path}]]`"
    key = Key(
        name=name,
        type=type_text,
        default=_describe_default(field),
        env=_env_name(key_env, complex_value=shape is not None),
        description=_one_line(field.description or documented),
    )
    if nested is not None or not variants:
        return key, [nested] if nested is not None else []
    tag = _discriminator(annotation)
    return key, [
        _Child(member, (f"[[{key_path}]]",), key_path, None, True, field, _variant(member, tag))
        for member in variants
    ]


def _merge_siblings(children: list[_Child]) -> list[_Child]:
    """One section for sibling tables of the same model that no variable tells apart."""
    merged: list[_Child] = []
    for child in children:
        twin = next(
            (
                i
                for i, seen in enumerate(merged)
                if seen.model is child.model
                and seen.env is None
                and child.env is None
                and not seen.array
                and not child.array
            ),
            None,
        )
        if twin is None:
            merged.append(child)
        else:
            seen = merged[twin]
            merged[twin] = _Child(
                seen.model,
                seen.headings + child.headings,
                seen.path,
                None,
                False,
                seen.field,
            )
    return merged


def _builtin_entries(child: _Child) -> str:
    """A note on the entries a table of tables has by default (the built-in profile)."""
    if child.field.default_factory is None or not child.path.endswith(f".{NAME}"):
        return ""
    default = child.field.get_default(call_default_factory=True)
    if not isinstance(default, dict) or not default:
        return ""
    entries = []
    base = child.path.removesuffix(f".{NAME}")
    for name, value in default.items():
        if not isinstance(value, BaseModel):
            return ""
        set_keys = value.model_dump(mode="json", exclude_defaults=True)
        body = ", ".join(f"{k} = {_toml(v)}" for k, v in set_keys.items())
        entries.append(f"`[{base}.{name}]` with `{body}`" if body else f"`[{base}.{name}]`")
    return (
        f"Built in, when the configuration defines no `[{base}.*]` table: "
        + "; ".join(entries)
        + ", every other key at its default."
    )


# --------------------------------------------------------------------------- types


def _unoptional(annotation: Any) -> Any:
    """``X`` for ``X | None``; anything else unchanged."""
    if get_origin(annotation) in {Union, UnionType}:
        options = [a for a in get_args(annotation) if a is not NoneType]
        if len(options) == 1:
            return options[0]
    return annotation


def _shape(annotation: Any) -> Literal["table", "array", "named", "list", "map"] | None:
    """What kind of non-scalar value ``annotation`` is, ``None`` for a scalar."""
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    if origin in {list, tuple}:
        found = _child_model(annotation) is not None or _variants(annotation)
        return "array" if found else "list"
    if origin is dict:
        return "named" if _child_model(annotation) is not None else "map"
    return None


def _child_model(annotation: Any) -> type[BaseModel] | None:
    """The model ``annotation`` is, or holds as items or values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in {list, tuple, dict}:
        item = get_args(annotation)[-1 if origin is dict else 0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _variants(annotation: Any) -> tuple[type[BaseModel], ...]:
    """The models of a list of a union of models (tables told apart by a key), else ()."""
    if get_origin(annotation) not in {list, tuple}:
        return ()
    item = get_args(annotation)[0]
    if get_origin(item) is Annotated:
        item = get_args(item)[0]
    if get_origin(item) not in {Union, UnionType}:
        return ()
    models = get_args(item)
    if all(isinstance(m, type) and issubclass(m, BaseModel) for m in models):
        return models
    return ()


def _discriminator(annotation: Any) -> str:
    """The key that tells the variants of a list of a union of models apart."""
    item = get_args(annotation)[0]
    for meta in get_args(item)[1:] if get_origin(item) is Annotated else ():
        tag = getattr(meta, "discriminator", None)
        if isinstance(tag, str):
            return tag
    return "kind"


def _variant(model: type[BaseModel], tag: str) -> str:
    """``kind = "webhook"``: the line that makes a table of the array this variant."""
    values = get_args(model.model_fields[tag].annotation)
    return f"{tag} = {_toml(values[0])}" if values else ""


def _is_duration(field: FieldInfo) -> bool:
    return any(
        isinstance(meta, BeforeValidator) and meta.func is parse_duration for meta in field.metadata
    )


def _describe_type(annotation: Any, field: FieldInfo | None = None) -> str:
    """``integer > 0``, ``one of: `a` | `b` ``, ``duration``, ``list, each ...``."""
    duration = field is not None and _is_duration(field)
    text = "duration" if duration else _base_type(annotation)
    if field is None:
        return text
    constraints = _constraints(field, duration=duration, text=text)
    if not constraints:
        return text
    if len(constraints) == 1 and constraints[0].startswith(("> ", ">= ", "< ", "<= ")):
        return f"{text} {constraints[0]}"
    return f"{text}, {', '.join(constraints)}"


def _base_type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + " | ".join(f"`{value}`" for value in get_args(annotation))
    model = _child_model(annotation)
    if isinstance(annotation, type) and model is annotation:
        return "table"
    if origin in {list, tuple}:
        if model is not None or _variants(annotation):
            return "array of tables"
        item = _base_type(get_args(annotation)[0])
        return f"list, each {item}" if item.startswith("one of") else f"list of {item}"
    if origin is dict:
        if model is not None:
            return "tables by name"
        return f"table of name = {_base_type(get_args(annotation)[-1])}"
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _constraints(field: FieldInfo, *, duration: bool, text: str) -> list[str]:
    """The ``annotated_types`` constraints of ``field``, readable."""
    lower: tuple[str, Any] | None = None
    upper: tuple[str, Any] | None = None
    other: list[str] = []
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Gt | annotated_types.Ge):
            lower = (">", meta.gt) if isinstance(meta, annotated_types.Gt) else (">=", meta.ge)
        elif isinstance(meta, annotated_types.Lt | annotated_types.Le):
            upper = ("<", meta.lt) if isinstance(meta, annotated_types.Lt) else ("<=", meta.le)
        elif isinstance(meta, annotated_types.MinLen):
            one = meta.min_length == 1 and text.startswith(("string", "secret"))
            other.append("not empty" if one else f"at least {_count(meta.min_length, text)}")
        elif isinstance(meta, annotated_types.MaxLen):
            other.append(f"at most {_count(meta.max_length, text)}")
        elif getattr(meta, "allow_inf_nan", True) is False:
            other.append("finite")

    def number(value: Any) -> str:
        return _duration(float(value)) if duration else _number(value)

    if lower is not None and upper is not None:
        flipped = {">": "<", ">=": "<="}[lower[0]]
        span = f"{number(lower[1])} {flipped} x {upper[0]} {number(upper[1])}"
        return [span, *other]
    bounds = [f"{bound[0]} {number(bound[1])}" for bound in (lower, upper) if bound is not None]
    return bounds + other


def _count(n: int, text: str) -> str:
    unit = "character" if text.startswith(("string", "secret")) else "item"
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


# --------------------------------------------------------------------------- values


def _describe_default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "its defaults"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "built in: " + ", ".join(f"`{name}`" for name in value)
    if isinstance(value, SecretStr):
        return "set (hidden)"
    if _is_duration(field) and isinstance(value, int | float):
        return f'`"{_duration(float(value))}"`'
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    """``value`` as written in a TOML file (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def _duration(seconds: float) -> str:
    """``format_duration``, with whole days as days (``"30d"``, not ``"720h"``)."""
    if seconds >= _DAY and seconds % _DAY == 0:
        return f"{int(seconds // _DAY)}d"
    text = format_duration(seconds)
    if "e" in text and seconds.is_integer():  # no exponent for large whole seconds
        return f"{int(seconds)}s"
    return text


def _env_name(path: tuple[str, ...] | None, *, complex_value: bool) -> str | None:
    if path is None:
        return None
    name = ENV_PREFIX + ENV_DELIMITER.join(part.upper() for part in path)
    return f"`{name}` (JSON)" if complex_value else f"`{name}`"


# --------------------------------------------------------------------------- docstrings


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of ``model``'s docstring."""
    lines = inspect.cleandoc(model.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    docs: dict[str, str] = {}
    current: str | None = None
    for line in lines[lines.index("Attributes:") + 1 :]:
        if not line.strip():
            continue
        if not line.startswith(" "):
            break
        match = _ATTRIBUTE.match(line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs


def _intro(model: type[BaseModel]) -> tuple[str, ...]:
    """The paragraphs of ``model``'s docstring before its first section (``Attributes:``)."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in inspect.cleandoc(model.__doc__ or "").splitlines():
        if _SECTION_HEADER.match(line):
            break
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(_markdown(" ".join(current)))
            current = []
    if current:
        paragraphs.append(_markdown(" ".join(current)))
    return tuple(paragraphs)


def _markdown(text: str) -> str:
    """Turn reStructuredText literals (````x````) into Markdown code (```x```)."""
    return text.replace("``", "`")


def _one_line(text: str) -> str:
    return _markdown(" ".join(text.split())).replace("|", "\\|")


# --------------------------------------------------------------------------- Markdown


def _preamble() -> str:
    env_example = f"{ENV_PREFIX}KAFKA{ENV_DELIMITER}BOOTSTRAP_SERVERS"
    return f"""\
# Configuration reference

Generated by `{COMMAND}` from the settings models; do not edit by hand.
To change a description, edit the field's docstring in the model (`coalmine/config/models.py`,
or the `Attributes:` section of the model's class docstring) and regenerate:
`tests/unit/test_reference.py` fails while this file is out of date.

Every key of the TOML file, table by table, with its type, default, environment variable
and meaning. How values are loaded, checked and overridden, with examples:
[configuration.md](configuration.md). A first setup: [getting-started.md](getting-started.md).
The file read is the one given by `--config FILE`, else the one named by `{CONFIG_ENV}`;
every key is optional unless its default says *required*.

- **Types.** *duration*: a number of seconds or a string such as `"250ms"`, `"90s"`,
  `"5m"`, `"1h30m"`, `"2d"`. *secret*: a string never shown in logs, reprs or problem
  messages (best given by its environment variable). *one of*: exactly one of the values
  listed. *unset*: the key has no value unless given one.
- **Environment variables.** Each key can be overridden by `{ENV_PREFIX}` followed by its
  path in the file, upper case, joined by `{ENV_DELIMITER}`: `{env_example}`. Variables
  marked (JSON) take a JSON value (a table or a list). `<NAME>` stands for the name of the
  table (a profile set this way gets a lower-case name: variable names ignore case). Keys
  inside arrays of tables are set only with the whole array.
"""


def _render_table(table: Table) -> str:
    lines = [table.title, ""]
    for paragraph in table.intro:
        lines += [paragraph, ""]
    lines += [
        "| key | type | default | environment variable | description |",
        "|---|---|---|---|---|",
    ]
    for key in table.keys:
        cells = (
            f"`{key.name}`",
            key.type.replace("|", "\\|"),
            key.default.replace("|", "\\|"),
            key.env or "none",
            key.description,
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_reference())
