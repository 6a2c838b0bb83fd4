"""Text templates: which wording a missed call gets, and filling it in safely.

A template is trusted config; everything a caller controls (the caller ID name, the DID
the trunk reports) is untrusted. Which name a text may use at all is decided in
`daemon.decide.names` (the office's contacts; a network name only when allowed and
person-like). So templates are parsed with `string.Formatter().parse`
and the values are pasted in as plain strings: `str.format` never sees caller data, and a
caller name such as "{business_name}" or "%s" stays literal text. The fields are a fixed
set (`FIELDS`); anything else in a template is a config error (`check_template`).
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Literal, NamedTuple

from daemon.config import Config, LineConfig
from daemon.decide.hours import DAY_NAMES, local_time, schedule
from daemon.decide.names import caller_names
from daemon.decide.names import clean_text as clean_text  # noqa: PLC0414  # its old home
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.errors import TextbackError
from daemon.model import Contact, FinishedCall
from gsm.gsm7 import is_gsm7
from gsm.pdu import SmsInfo, sms_info

TemplateKind = Literal["in_hours", "after_hours", "voicemail"]

#: The merge fields a template may use.
FIELDS = ("business_name", "caller_name", "first_name", "did", "callback_number", "time", "day")
#: The fields that greet a caller by name: only the office's contacts fill them for sure.
NAME_FIELDS = ("caller_name", "first_name")
#: Config key of each template kind ([textback] and [[lines]] share the names).
TEMPLATE_KEYS: dict[TemplateKind, str] = {
    "in_hours": "template",
    "after_hours": "template_after_hours",
    "voicemail": "template_voicemail",
}
#: Longest DID / callback number put into a text.
NUMBER_MAX = 20


class TemplateError(TextbackError, ValueError):
    """A template cannot be rendered (unknown field, bad braces); `problems` lists why.

    Still a ValueError: callers that catch ValueError (the policy's fallback) catch it.
    """

    def __init__(self, template: str, problems: list[str]) -> None:
        self.template = template
        self.problems = problems
        super().__init__("; ".join(problems))


# -- checking ---------------------------------------------------------------------------


def check_template(template: str) -> list[str]:
    """Problems of one template, each a sentence; [] when it is fine."""
    known = ", ".join("{" + f + "}" for f in FIELDS)
    if not template.strip():
        return [f"empty template; write the text, it may use {known}"]
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [
            f"cannot read the template ({exc}); merge fields look like {{business_name}}, "
            "write {{ and }} for literal braces"
        ]
    out: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            out.append(f"a field without a name ({{{field}}}); use a named field: {known}")
        elif "." in field or "[" in field:
            out.append(f"{{{field}}}: attribute or index access is not allowed; use {known}")
        elif field not in FIELDS:
            out.append(f"unknown field {{{field}}}; known fields: {known}")
        if conversion:
            out.append(f"{{{field}!{conversion}}}: a conversion is not allowed; write {{{field}}}")
        if spec:
            out.append(f"{{{field}:{spec}}}: a format spec is not allowed; write {{{field}}}")
    return out


# -- rendering --------------------------------------------------------------------------


def render(template: str, fields: Mapping[str, str], *, strict: bool = True) -> str:
    """Fill `template`'s fields from `fields`, values pasted verbatim (never formatted).

    strict: a template problem raises TemplateError. Not strict (previews of a broken
    config): a bad field is kept as written, an unreadable template is returned as is.
    """
    problems = check_template(template)
    if problems and strict:
        raise TemplateError(template, problems)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return template
    out: list[str] = []
    for literal, field, spec, conversion in parsed:
        out.append(literal)
        if field is None:
            continue
        value = fields.get(field) if field in FIELDS else None
        if value is None or spec or conversion:
            if strict:
                raise TemplateError(template, [f"no value for {{{field}}}"])
            out.append(_as_written(field, spec, conversion))
        else:
            out.append(value)
    return "".join(out)


def _as_written(field: str, spec: str | None, conversion: str | None) -> str:
    conv = f"!{conversion}" if conversion else ""
    return "{" + field + conv + (f":{spec}" if spec else "") + "}"


def caller_name_value(
    cfg: Config, call: FinishedCall, contact: Contact | None = None, *, fallback: str | None = None
) -> str:
    """{caller_name}: the contact's name, else (with use_pbx_names) a person-like network
    name, else the fallback ([textback] caller_name_fallback unless given)."""
    return _names(cfg, call, contact, fallback)[0]


def _names(
    cfg: Config, call: FinishedCall, contact: Contact | None, fallback: str | None = None
) -> tuple[str, str]:
    return caller_names(
        contact,
        call.caller_name,
        use_pbx_names=cfg.contacts.use_pbx_names,
        fallback=cfg.textback.caller_name_fallback if fallback is None else fallback,
    )


def line_for(cfg: Config, did: str) -> LineConfig | None:
    """The [[lines]] entry of a DID: the exact string first, else the same number written
    another way ("+12025550100" in the config, "2025550100" from the trunk)."""
    line = cfg.line_for(did)
    if line is not None or not did:
        return line
    region = cfg.textback.home_region.upper()
    key = _did_key(did, region)
    if key is None:
        return None
    for line in cfg.lines:
        if _did_key(line.did, region) == key:
            return line
    return None


@lru_cache(maxsize=256)
def _did_key(did: str, region: str) -> str | None:
    judged = classify_caller(did, home_region=region)
    return judged.e164 if judged.kind is CallerKind.VALID else None


def business_name(cfg: Config, line: LineConfig | None) -> str:
    """{business_name}: the line's, else [textback]'s (a blank line value counts as unset)."""
    if line is not None and line.business_name is not None and line.business_name.strip():
        return line.business_name
    return cfg.textback.business_name


def call_fields(
    cfg: Config, call: FinishedCall, now: float, contact: Contact | None = None
) -> dict[str, str]:
    """Every merge field's value for one call, at time `now` (epoch seconds); `contact`:
    the caller as the office's contacts know them (None: not known)."""
    line = line_for(cfg, call.did)
    did = clean_text(call.did, NUMBER_MAX)
    callback = line.callback_number if line is not None and line.callback_number else did
    local = local_time(cfg.hours, now)
    caller_name, first_name = _names(cfg, call, contact)
    return {
        "business_name": business_name(cfg, line),
        "caller_name": caller_name,
        "first_name": first_name,
        "did": did,
        "callback_number": callback,
        **time_fields(local),
    }


def time_fields(local: datetime) -> dict[str, str]:
    """{time} (HH:MM) and {day} (weekday name) of a local datetime."""
    return {"time": f"{local.hour:02d}:{local.minute:02d}", "day": DAY_NAMES[local.weekday()]}


def template_of(cfg: Config, line: LineConfig | None, kind: TemplateKind) -> str:
    """The template of `kind` for a line: its own, else [textback]'s."""
    key = TEMPLATE_KEYS[kind]
    if line is not None:
        own: str | None = getattr(line, key)
        if own is not None:
            return own
    value: str = getattr(cfg.textback, key)
    return value


def select_template(cfg: Config, call: FinishedCall, now: float) -> tuple[TemplateKind, str]:
    """Which wording: voicemail when the caller left one, else by business hours at `now`.

    ValueError when [hours] is broken (bad time zone or span).
    """
    line = line_for(cfg, call.did)
    kind: TemplateKind
    if call.voicemail_left is True:
        kind = "voicemail"
    elif schedule(cfg.hours).is_open(now):
        kind = "in_hours"
    else:
        kind = "after_hours"
    return kind, template_of(cfg, line, kind)


def render_for_call(
    cfg: Config, call: FinishedCall, now: float, contact: Contact | None = None
) -> tuple[TemplateKind, str]:
    """The template kind and the finished text for one call. TemplateError/ValueError on a
    broken config (which `textback check` and the daemon's start refuse)."""
    kind, template = select_template(cfg, call, now)
    fields = call_fields(cfg, call, now, contact)
    text = render(template, fields)
    names = {f: fields[f] for f in NAME_FIELDS}
    if not is_gsm7(text) and not all(is_gsm7(v) for v in names.values()):
        # One accented letter in a caller's name would turn the whole text into UCS-2,
        # which holds 70 characters a part instead of 160: the same text can cost two or
        # three times as much. Fold the names ("Zoë" -> "Zoe") when that alone keeps the
        # text GSM-7; a name in another script ("李小龍") stays as it is.
        folded = {f: gsm7_fold(v) for f, v in names.items()}
        if all(is_gsm7(v) for v in folded.values()):
            alt = render(template, {**fields, **folded})
            if is_gsm7(alt):
                text = alt
    return kind, text


#: Look-alike punctuation a PBX or phone book puts into names, as GSM-7 characters.
_FOLD = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)


def gsm7_fold(text: str) -> str:
    """`text` without accents or typographic quotes (Zoë -> Zoe, a curly apostrophe -> ').

    Letters that GSM-7 has (é, ñ, ü, ø, ...) are kept; others lose their accent marks.
    The result may still hold characters GSM-7 lacks (other scripts).
    """
    out = []
    for ch in text.translate(_FOLD):
        if is_gsm7(ch):
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(base or ch)
    return unicodedata.normalize("NFC", "".join(out))


# -- previews for `textback check` --------------------------------------------------------

#: Sample values for previews: a weekday morning, a caller in the office's contacts.
SAMPLE_CONTACT = Contact("Jane Doe", "Jane", "sample")
SAMPLE_CALLER_NAME = SAMPLE_CONTACT.name
SAMPLE_DID = "+12025550100"
_SAMPLE_LOCAL = datetime(2026, 3, 3, 10, 30)  # a Tuesday


class Preview(NamedTuple):
    """One configured template rendered with sample values, and what it costs to send."""

    label: str  # the config key, e.g. "textback.template", "lines[0].template_voicemail"
    text: str
    info: SmsInfo


def render_preview(cfg: Config, contact: Contact | None = SAMPLE_CONTACT) -> list[Preview]:
    """Every configured template rendered with sample values: a caller in the contacts
    ("Jane Doe", first name "Jane"; None: a caller nobody knows, who gets the fallback),
    Tuesday 10:30.

    [textback]'s three templates first, then each [[lines]] entry's effective three.
    A broken template is shown with its bad fields as written, never raised.
    """
    out: list[Preview] = []
    fallback = cfg.textback.caller_name_fallback
    caller_name, first_name = caller_names(contact, "", use_pbx_names=False, fallback=fallback)
    base = {
        "business_name": cfg.textback.business_name,
        "caller_name": caller_name,
        "first_name": first_name,
        "did": SAMPLE_DID,
        "callback_number": SAMPLE_DID,
        **time_fields(_SAMPLE_LOCAL),
    }
    for kind, key in TEMPLATE_KEYS.items():
        text = render(template_of(cfg, None, kind), base, strict=False)
        out.append(Preview(f"textback.{key}", text, _info(text)))
    for i, line in enumerate(cfg.lines):
        did = clean_text(line.did, NUMBER_MAX)
        fields = dict(
            base,
            business_name=business_name(cfg, line),
            did=did,
            callback_number=line.callback_number or did,
        )
        for kind, key in TEMPLATE_KEYS.items():
            text = render(template_of(cfg, line, kind), fields, strict=False)
            out.append(Preview(f"lines[{i}].{key}", text, _info(text)))
    return out


def _info(text: str) -> SmsInfo:
    return sms_info(text)
