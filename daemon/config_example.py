"""Render the commented example config (config/textback.toml) from the pydantic schema.

The schema in daemon/config.py is the manual: every key's description, unit, allowed values
and default come from there, so the example cannot drift from the code (tests/test_config.py
compares the committed file with this output). Regenerate with:

    python -m daemon.config_example > config/textback.toml
    python -m daemon.config_example --readme README.md   # the README's config reference

TOML is written by hand here: the standard library reads TOML but does not write it, and the
few value shapes in the schema (strings, numbers, booleans, flat lists) do not justify a
dependency.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from daemon.config import Config, Duration, format_duration, parse_duration

REGENERATE = "python -m daemon.config_example > config/textback.toml"
WIDTH = 88

#: Units of the plain numbers (durations carry their own). A test checks every int and
#: float key that is not a duration has one here, so a new key cannot go undocumented.
UNITS: dict[str, str] = {
    "ami.port": "TCP port",
    "modem.baudrate": "bit/s",
    "textback.max_attempts": "attempts",
    "textback.max_per_hour": "texts",
    "textback.max_per_day": "texts",
    "textback.max_per_month": "texts",
    "modems.max_per_month": "texts",
    "textback.pumping_max_per_range": "distinct numbers",
    "textback.pumping_prefix_digits": "digits",
    "replies.forward_per_hour": "replies",
    "smtp.port": "TCP port",
    "sending.in_flight": "jobs",
}

#: Values shown (commented out) for keys whose default is "not set".
EXAMPLES: dict[str, Any] = {
    "calls.carrier_voicemail_after": 25.0,
}

#: The commented [[lines]] example. Test numbers only (555-01xx).
EXAMPLE_LINE: dict[str, Any] = {
    "did": "+12025550100",
    "business_name": "Main Street Dental",
    "template": "Sorry we missed your call to {business_name}. "
    "Call us back on {callback_number} or reply here.",
    "template_after_hours": "Thanks for calling {business_name}. We open at 8am "
    "and will call you back then.",
    "template_voicemail": "Thanks for your voicemail to {business_name}. "
    "We will call you back today.",
    "callback_number": "+1 202 555 0100",
    "enabled": True,
}

#: The commented [[modems]] example. Test numbers only (555-01xx); a made-up IMEI.
EXAMPLE_MODEM: dict[str, Any] = {
    "name": "sales",
    "device": "imei:356938035643809",
    "pin": "",
    "smsc": "",
    "lines": ["+12025550100"],
    "fallback": True,
    "max_per_month": 1000,
}

#: What each array of tables says above its commented example, and the example.
ARRAY_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "lines": (
        "Repeat the block for each DID that needs its own name or wording; keys left out "
        "take the [textback] value. Remove the leading '# ' to use it.",
        EXAMPLE_LINE,
    ),
    "modems": (
        "Several modems (one SIM each) instead of the one [modem] device: repeat the block "
        "for each; [modem] keeps the settings they share (baudrate, mode, reports, "
        "timeouts) and its device, pin and smsc are then left unset. A text goes out "
        "through the modem whose lines hold the DID the caller rang, else the one that "
        "last texted that number, else the ready one with the shortest queue. Remove the "
        "leading '# ' to use it.",
        EXAMPLE_MODEM,
    ),
}

HEADER = f"""\
# textback configuration: every key, its meaning, unit and default.
#
# Copy this file to /etc/textback/textback.toml (mode 0640, owner root, group textback:
# it holds the AMI secret) and change what your office needs. Every key is shown set to
# its default; a key you delete takes the default. Check your edits with
#   textback check --config /etc/textback/textback.toml
#
# Durations take a unit: "500ms", "30s", "5m", "1h30m", "24h", "7d".
# Any key can also be set by an environment variable TEXTBACK_<SECTION>__<KEY>,
# e.g. TEXTBACK_CALLS__RING_TIMEOUT=15s (the environment wins over this file).
# Unknown keys are errors, so a misspelt key is never silently ignored.
#
# Generated from the schema (daemon/config.py); in the source tree, regenerate with
#   {REGENERATE}
"""


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One config key as documented: where it is, what it means, what it defaults to."""

    section: str
    name: str
    description: str
    default: Any  # None: not set
    is_duration: bool
    is_secret: bool
    required: bool
    unit: str  # "" when none applies
    choices: tuple[str, ...]  # allowed values of a Literal (or each item of a list of them)
    bounds: str  # e.g. ">= 1", "1-65535", "" when unbounded

    @property
    def path(self) -> str:
        """The dotted key path, as `textback check` prints it."""
        return f"{self.section}.{self.name}"


def _unwrap_optional(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_duration(field: FieldInfo) -> bool:
    """True for a Duration field (also `Duration | None`)."""
    if any(getattr(m, "func", None) is parse_duration for m in field.metadata):
        return True
    return bool(_unwrap_optional(field.annotation) == Duration)


def _choices(annotation: Any) -> tuple[str, ...]:
    ann = _unwrap_optional(annotation)
    if get_origin(ann) is list:
        ann = get_args(ann)[0]
    if get_origin(ann) is Literal:
        return tuple(str(a) for a in get_args(ann))
    return ()


def _bounds(field: FieldInfo) -> str:
    low: object = None
    high: object = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Le):
            high = m.le
    if low is not None and high is not None:
        return f"{low}-{high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def section_models() -> list[tuple[str, type[BaseModel], bool]]:
    """(section name, model, is an array of tables) for every section, in schema order."""
    out: list[tuple[str, type[BaseModel], bool]] = []
    for name, field in Config.model_fields.items():
        ann = field.annotation
        if get_origin(ann) is list:
            out.append((name, get_args(ann)[0], True))
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append((name, ann, False))
    return out


def key_docs(section: str, model: type[BaseModel]) -> Iterator[KeyDoc]:
    """Every key of one section, documented."""
    for name, field in model.model_fields.items():
        duration = is_duration(field)
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        unit = "duration" if duration else UNITS.get(f"{section}.{name}", "")
        yield KeyDoc(
            section=section,
            name=name,
            description=field.description or "",
            default=default,
            is_duration=duration,
            is_secret=field.repr is False,
            required=required,
            unit=unit,
            choices=_choices(field.annotation),
            bounds=_bounds(field),
        )


def all_key_docs() -> list[KeyDoc]:
    """Every key of every section."""
    return [doc for sec, model, _ in section_models() for doc in key_docs(sec, model)]


def _toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any, *, duration: bool = False) -> str:
    """One value as TOML; durations as readable strings ("30s", "24h")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if duration and isinstance(value, int | float):
        return _toml_str(format_duration(float(value)))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v, duration=duration) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _assignment(name: str, value: Any, *, duration: bool) -> list[str]:
    line = f"{name} = {toml_value(value, duration=duration)}"
    if len(line) <= WIDTH or not isinstance(value, list):
        return [line]
    # Long lists one item a line, so a technician can delete or add an entry easily.
    items = [f"    {toml_value(v, duration=duration)}," for v in value]
    return [f"{name} = [", *items, "]"]


def _sentence(text: str) -> str:
    # Not capitalised: many descriptions start with a key or file name ("manager.conf ...").
    text = text.strip()
    return text if not text or text.endswith((".", "?", "!")) else text + "."


def _comment(text: str, prefix: str = "# ") -> list[str]:
    return textwrap.wrap(
        text, WIDTH - len(prefix), initial_indent=prefix, subsequent_indent=prefix
    ) or [prefix.rstrip()]


def describe_default(doc: KeyDoc, *, short: bool = False) -> str:
    """The default as a person reads it; `short` replaces a long text by a pointer."""
    if doc.required:
        return "required"
    if doc.default is None:
        return "not set"
    if doc.is_secret and doc.default == "":
        return '"" (empty)'
    text = toml_value(doc.default, duration=doc.is_duration)
    if short and isinstance(doc.default, str) and len(text) > 60:
        return "the text shown below"
    return text


def _facts(doc: KeyDoc) -> str:
    facts = []
    if doc.unit == "duration":
        facts.append('Unit: a duration such as "30s".')
    elif doc.unit:
        facts.append(f"Unit: {doc.unit}.")
    if doc.choices:
        facts.append("One of: " + ", ".join(doc.choices) + ".")
    if doc.bounds:
        facts.append(f"Range: {doc.bounds}.")
    if doc.is_secret:
        facts.append("Secret: never logged or printed.")
    facts.append(f"Default: {describe_default(doc, short=True)}.")
    return " ".join(facts)


def _key_block(doc: KeyDoc, *, example: Any = None, prefix: str = "") -> list[str]:
    lines = [*_comment(_sentence(doc.description), prefix + "# ")]
    lines += _comment(_facts(doc), prefix + "# ")
    value = doc.default if example is None else example
    if value is None:
        value = EXAMPLES.get(doc.path)
        prefix = prefix or "#"  # not set by default: shown commented out
        if value is None:  # a new key nobody gave an example for yet: still listed
            return [*lines, f"{prefix}{doc.name} ="]
    lines += [prefix + s for s in _assignment(doc.name, value, duration=doc.is_duration)]
    return lines


def render_example() -> str:
    """The whole commented example config, as config/textback.toml holds it."""
    out = [HEADER]
    for section, model, is_array in section_models():
        doc = textwrap.dedent(model.__doc__ or "").strip()
        out.append("# " + "-" * (WIDTH - 2))
        out += _comment(doc)
        if is_array:
            out += _line_example(section, model)
            continue
        out.append(f"[{section}]")
        for key in key_docs(section, model):
            out.append("")
            out += _key_block(key)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _line_example(section: str, model: type[BaseModel]) -> list[str]:
    intro, example = ARRAY_EXAMPLES[section]
    out = _comment(intro)
    out += ["#", f"# [[{section}]]"]
    for key in key_docs(section, model):
        out.append("#")
        out += _key_block(key, example=example.get(key.name), prefix="# ")
    out.append("")
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown() -> str:
    """The config reference as Markdown tables, one per section (for the README)."""
    out: list[str] = []
    for section, model, is_array in section_models():
        title = f"[[{section}]]" if is_array else f"[{section}]"
        doc = textwrap.dedent(model.__doc__ or "").strip()
        doc = doc.split(":", 1)[1].strip() if ":" in doc else doc
        doc = doc[:1].upper() + doc[1:]
        out += [f"#### `{title}`", "", _sentence(doc), ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        for key in key_docs(section, model):
            default = describe_default(key)
            default = f"`{default}`" if key.default is not None else default
            extra = [f"unit: {key.unit}"] if key.unit and key.unit != "duration" else []
            if key.choices:
                extra.append("one of " + ", ".join(f"`{c}`" for c in key.choices))
            if key.bounds:
                extra.append(key.bounds)
            if key.is_secret and "never logged" not in key.description:
                extra.append("secret, never logged")
            meaning = key.description + (f" ({'; '.join(extra)})" if extra else "")
            out.append(f"| `{key.name}` | {_md_escape(default)} | {_md_escape(meaning)} |")
        out.append("")
    return "\n".join(out)


README_START = "<!-- config-reference: generated by python -m daemon.config_example --readme -->"
README_END = "<!-- /config-reference -->"


def update_readme(text: str) -> str:
    """README text with the generated reference between its two marker lines."""
    head, sep, rest = text.partition(README_START + "\n")
    _, sep2, tail = rest.partition(README_END)
    if not (sep and sep2):
        raise ValueError(f"README has no {README_START!r} ... {README_END!r} markers")
    return head + sep + render_markdown() + sep2 + tail


def main(argv: list[str] | None = None) -> int:
    """`python -m daemon.config_example [--markdown | --readme FILE]`: print the example."""
    parser = argparse.ArgumentParser(prog="python -m daemon.config_example")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--markdown", action="store_true", help="print the config reference")
    group.add_argument(
        "--readme", metavar="FILE", help="rewrite the config reference inside FILE (README.md)"
    )
    args = parser.parse_args(argv)
    if args.readme:
        path = Path(args.readme)
        path.write_text(update_readme(path.read_text(encoding="utf-8")), encoding="utf-8")
    elif args.markdown:
        sys.stdout.write(render_markdown())
    else:
        sys.stdout.write(render_example())
    return 0


__all__ = [
    "README_END",
    "README_START",
    "REGENERATE",
    "KeyDoc",
    "all_key_docs",
    "describe_default",
    "is_duration",
    "key_docs",
    "render_example",
    "render_markdown",
    "section_models",
    "toml_value",
    "update_readme",
]

if __name__ == "__main__":
    sys.exit(main())
