"""Config validation: every problem with its key and a hint, and what is in effect.

`validate(cfg)` holds the checks the schema alone cannot express (business hours, time
zone, regions, template fields, duplicate DIDs, ...). `textback check` (daemon.cli.check)
prints `report(...)`; `textback run` uses the same checks (`check_config`) to refuse a
broken config on SIGHUP, so a config that passes here is one the daemon accepts.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
import re
import shlex
import shutil
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

import phonenumbers

from daemon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    TextbackConfig,
    format_duration,
    load_config,
)
from daemon.config_example import (
    KeyDoc,
    describe_default,
    key_docs,
    section_models,
    toml_value,
)
from daemon.contacts.book import ContactsFileError, load_book
from daemon.decide.hours import DAYS, office_zone, parse_holiday, parse_span
from daemon.decide.numbers import CallerKind, classify_caller
from daemon.decide.templates import (
    FIELDS,
    NAME_FIELDS,
    SAMPLE_CONTACT,
    Preview,
    check_template,
    render_preview,
)
from daemon.decide.templates import TEMPLATE_KEYS as KIND_KEYS
from daemon.logsetup import kv
from daemon.mqtt.broker import Broker
from gsm.commands import check_number
from gsm.gsm7 import septet_cost
from gsm.pdu import SmsInfo

#: The merge fields a template may use; anything else is an error.
TEMPLATE_FIELDS = FIELDS
TEMPLATE_KEYS = tuple(KIND_KEYS.values())

#: Ring timeouts outside this range get a warning (seconds).
RING_TIMEOUT_MIN = 15.0  # under this, staff have too little time to pick up
RING_TIMEOUT_MAX = 20.0  # over this, a forward to a mobile meets the carrier's voicemail

_COMMON_BAUDRATES = frozenset({9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600})


class Severity(StrEnum):
    """How bad a problem is: errors make `check` exit 1 and SIGHUP refuse the config."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the config, at a key path, with a hint a technician can act on."""

    key: str  # e.g. "calls.ring_timeout", "lines[1].did", "(file)"
    message: str
    hint: str = ""
    severity: Severity = Severity.ERROR


def has_errors(problems: Iterable[Problem]) -> bool:
    """True when any problem is an error (not just a warning)."""
    return any(p.severity is Severity.ERROR for p in problems)


def _err(key: str, message: str, hint: str = "") -> Problem:
    return Problem(key, message, hint, Severity.ERROR)


def _warn(key: str, message: str, hint: str = "") -> Problem:
    return Problem(key, message, hint, Severity.WARNING)


# --- the checks -------------------------------------------------------------------------


def validate(cfg: Config) -> list[Problem]:
    """Every problem of a loaded config that the schema cannot see, errors and warnings."""
    out: list[Problem] = []
    out += _check_ami(cfg)
    out += _check_replies(cfg)
    out += _check_calls(cfg)
    out += _check_modem(cfg)
    out += _check_modems(cfg)
    out += _check_textback(cfg)
    out += _check_hours(cfg)
    out += _check_lines(cfg)
    out += _check_database(cfg)
    out += _check_contacts(cfg)
    out += _check_metrics(cfg)
    out += _check_mqtt(cfg)
    out += _check_jobs(cfg)
    out += _check_texts(cfg)
    return out


def _check_jobs(cfg: Config) -> list[Problem]:
    """[sending] via = "broker" and [jobs] serve need the broker of [mqtt]; a sender with
    AMI on also judges calls of its own (allowed, but rarely meant)."""
    out = []
    no_broker = not cfg.mqtt.url.strip()
    if cfg.sending.via == "broker" and no_broker:
        out.append(
            _err(
                "sending.via",
                '"broker" sends every text as a job over MQTT, but [mqtt] url is empty',
                'set [mqtt] url = "mqtt://<central broker>:1883", or via = "modem"',
            )
        )
    if cfg.jobs.serve and no_broker:
        out.append(
            _err(
                "jobs.serve",
                "a sender takes the group's jobs from MQTT, but [mqtt] url is empty",
                'set [mqtt] url = "mqtt://<central broker>:1883", or serve = false',
            )
        )
    if cfg.jobs.serve and cfg.sending.via == "broker":
        out.append(
            _err(
                "jobs.serve",
                'a sender must send through its own modems: [sending] via = "broker" here'
                " would hand its texts back to the broker",
                'set [sending] via = "modem" on the sender',
            )
        )
    return out


def _check_ami(cfg: Config) -> list[Problem]:
    ami, out = cfg.ami, []
    if not ami.enabled:
        # no PBX: nothing here is used, so nothing here can be wrong
        return [
            _warn(
                "ami.enabled",
                "false: textback will not connect to Asterisk and no call will be texted back",
                "set it to true unless this process only sends texts",
            )
        ]
    if not ami.host.strip():
        out.append(_err("ami.host", "empty", 'the Asterisk host, e.g. "127.0.0.1"'))
    if not ami.secret:
        out.append(
            _warn(
                "ami.secret",
                "not set: Asterisk will refuse the login",
                f"set it to the secret of [{ami.username}] in /etc/asterisk/manager.conf "
                "(or TEXTBACK_AMI__SECRET in the unit's environment)",
            )
        )
    if not (ami.inbound_contexts or ami.inbound_trunks or ami.inbound_dids):
        out.append(
            _err(
                "ami.inbound_contexts",
                "inbound_contexts, inbound_trunks and inbound_dids are all empty: "
                "no call would ever count as inbound",
                "list the dialplan context your trunk delivers calls to "
                '(e.g. "from-trunk" on FreePBX), the trunk endpoint names, or the DIDs',
            )
        )
    for name in ("keepalive", "ping_timeout"):
        if getattr(ami, name) <= 0:
            out.append(_err(f"ami.{name}", "must be more than 0", 'e.g. "20s"'))
    return out


def _check_calls(cfg: Config) -> list[Problem]:
    calls, out = cfg.calls, []
    ring = calls.ring_timeout
    if ring <= 0:
        out.append(_err("calls.ring_timeout", "must be more than 0", '"20s" suits most offices'))
    elif ring < RING_TIMEOUT_MIN:
        out.append(
            _warn(
                "calls.ring_timeout",
                f"{format_duration(ring)} is under {RING_TIMEOUT_MIN:g}s: staff have too "
                "little time to pick up, so calls count as missed that a person would "
                "have answered",
                'set it between 15s and 20s (the PBX ring time should match), e.g. "20s"',
            )
        )
    elif ring > RING_TIMEOUT_MAX:
        out.append(
            _warn(
                "calls.ring_timeout",
                f"{format_duration(ring)} is over {RING_TIMEOUT_MAX:g}s: a call forwarded "
                "to a mobile reaches the mobile carrier's voicemail first",
                'set it between 15s and 20s, e.g. "20s", and ring the PBX no longer than that',
            )
        )
    if 0 < ring <= calls.min_ring:
        out.append(
            _err(
                "calls.min_ring",
                f"{format_duration(calls.min_ring)} is not shorter than ring_timeout "
                f"({format_duration(ring)}): every unanswered call would be a short_abandon",
                'a few seconds at most, e.g. "1s"',
            )
        )
    cva = calls.carrier_voicemail_after
    if cva is not None and cva <= 0:
        out.append(
            _err(
                "calls.carrier_voicemail_after",
                "must be more than 0",
                "remove it to use ring_timeout",
            )
        )
    target = calls.voicemail_target.strip()
    if calls.enforce_ring_timeout and not target:
        out.append(
            _err(
                "calls.voicemail_target",
                "enforce_ring_timeout is on but voicemail_target is empty",
                'set voicemail_target = "context,exten,priority" (where unanswered calls '
                "go, e.g. the office's voicemail box), or set enforce_ring_timeout = false",
            )
        )
    if target:
        parts = [p.strip() for p in target.split(",")]
        # The daemon's Redirect takes context,exten[,priority] (priority 1 when left out).
        if len(parts) not in (2, 3) or not all(parts):
            out.append(
                _err(
                    "calls.voicemail_target",
                    f"{target!r} is not context,exten,priority",
                    'as in the dialplan, separated by commas, e.g. "vm,100,1"',
                )
            )
    if calls.enforce_ring_timeout:
        out.append(
            _warn(
                "calls.enforce_ring_timeout",
                "on: textback will send AMI Redirect actions",
                f"the manager.conf user [{cfg.ami.username}] needs write=call for that",
            )
        )
    return out


def _check_device(key: str, device: str) -> list[Problem]:
    """A modem's serial device: there, and readable and writable (warnings: check may run
    before the modem is plugged in, and run waits for it)."""
    if not device.strip():
        return [_err(key, "empty", 'e.g. "/dev/serial/by-id/usb-...-if00-port0"')]
    if not os.path.exists(device):
        return [
            _warn(
                key,
                f"{device} does not exist (now)",
                "plug the modem in; `ls -l /dev/serial/by-id/` lists serial devices by a "
                "name that survives reboots and replugging",
            )
        ]
    if not os.access(device, os.R_OK | os.W_OK):
        return [
            _warn(
                key,
                f"{device} is not readable and writable by this user",
                "the service user must be in the device's group (usually dialout): "
                "usermod -aG dialout textback",
            )
        ]
    return []


def _check_sim(key: str, pin: str, smsc: str) -> list[Problem]:
    out = []
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 8):
        out.append(
            _err(f"{key}.pin", "a SIM PIN is 4 to 8 digits", 'write it as a string, e.g. "1234"')
        )
    if smsc and not _driver_accepts_number(smsc.replace(" ", "")):
        out.append(
            _err(
                f"{key}.smsc",
                f"{smsc!r} is not an international number",
                'e.g. "+12065550100" (your carrier publishes it); leave it empty if the SIM '
                "has one",
            )
        )
    return out


#: A modem's name: it becomes part of MQTT topics and a metrics label.
_MODEM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: An IMEI: 15 digits (16 for an IMEISV, 14 without the check digit).
_IMEI = re.compile(r"[0-9]{14,16}")


def _check_modems(cfg: Config) -> list[Problem]:
    """[[modems]]: names, devices and lines each once; fallback only with lines."""
    if not cfg.modems:
        return []
    out: list[Problem] = []
    region = cfg.textback.home_region.upper()
    names: dict[str, int] = {}
    devices: dict[str, int] = {}
    owners: dict[str, int] = {}
    shared = sorted(k for k in ("device", "pin", "smsc") if k in cfg.modem.model_fields_set)
    for k in shared:
        out.append(
            _err(
                f"modem.{k}",
                "not used with [[modems]]",
                f"give each modem its {k} in its [[modems]] entry and remove it from [modem]"
                " (which keeps the settings all modems share)",
            )
        )
    for i, entry in enumerate(cfg.modems):
        key = f"modems[{i}]"
        if not _MODEM_NAME.fullmatch(entry.name):
            out.append(
                _err(
                    f"{key}.name",
                    f"{entry.name!r} is not a usable modem name",
                    "1 to 32 lower-case letters, digits, - and _ (it names MQTT topics and"
                    ' metrics), e.g. "sales"',
                )
            )
        elif entry.name in names:
            out.append(
                _err(
                    f"{key}.name",
                    f"{entry.name!r} is also the name of modems[{names[entry.name]}]",
                    "each modem needs a name of its own",
                )
            )
        else:
            names[entry.name] = i
        imei = entry.imei
        if imei is not None:
            if not _IMEI.fullmatch(imei):
                out.append(
                    _err(
                        f"{key}.device",
                        f"{entry.device!r}: an IMEI is 15 digits",
                        "`textback modem --device PATH` prints the modem's IMEI; write"
                        ' "imei:<those digits>"',
                    )
                )
            same = f"imei:{imei}"
        else:
            out += _check_device(f"{key}.device", entry.device)
            same = os.path.realpath(entry.device) if entry.device.strip() else ""
        if same and same in devices:
            out.append(
                _err(
                    f"{key}.device",
                    f"{entry.device!r} is the same modem as modems[{devices[same]}].device",
                    "one [[modems]] entry per modem",
                )
            )
        elif same:
            devices[same] = i
        out += _check_sim(key, entry.pin, entry.smsc)
        mine: set[str] = set()
        for j, did in enumerate(entry.lines):
            number = _did_key(did.strip(), region)
            if not did.strip():
                out.append(_err(f"{key}.lines[{j}]", "empty", 'a DID, e.g. "+12025550100"'))
            elif number in mine:
                out.append(_err(f"{key}.lines[{j}]", f"{did!r} is listed twice", "list it once"))
            elif number in owners:
                out.append(
                    _err(
                        f"{key}.lines[{j}]",
                        f"{did!r} is also a line of modems[{owners[number]}]"
                        f" ({cfg.modems[owners[number]].name})",
                        "a DID's texts come from one SIM: keep it under one modem (its"
                        " fallback = true lets the others send for it while it is down)",
                    )
                )
            else:
                owners[number] = i
            mine.add(number)
        if entry.fallback and not entry.lines:
            out.append(
                _err(
                    f"{key}.fallback",
                    "fallback = true on a modem without lines",
                    "fallback lets this modem's lines go out through another modem while it"
                    " is down; a modem without lines already sends whatever no line claims."
                    " List its lines, or remove fallback",
                )
            )
        if (
            entry.max_per_month
            and cfg.textback.max_per_month
            and (entry.max_per_month > cfg.textback.max_per_month)
        ):
            out.append(
                _warn(
                    f"{key}.max_per_month",
                    f"{entry.max_per_month} is above [textback] max_per_month"
                    f" ({cfg.textback.max_per_month}), which caps all modems together",
                    "raise [textback] max_per_month if the plans allow more",
                )
            )
    return out


def _check_modem(cfg: Config) -> list[Problem]:
    modem, out = cfg.modem, []
    if not cfg.modems:  # with [[modems]], each entry's device, PIN and SMSC are its own
        out += _check_device("modem.device", modem.device)
        out += _check_sim("modem", modem.pin, modem.smsc)
    if modem.baudrate not in _COMMON_BAUDRATES:
        out.append(
            _warn(
                "modem.baudrate",
                f"{modem.baudrate} is not a usual serial speed",
                "most USB modems use 115200",
            )
        )
    return out


def _driver_accepts_number(number: str) -> bool:
    """The modem driver's own rule for a number on an AT line (the daemon strips spaces)."""
    try:
        check_number(number)
    except ValueError:
        return False
    return True


def _region_problem(key: str, region: str) -> Problem | None:
    if region in phonenumbers.SUPPORTED_REGIONS:
        return None
    if region.upper() in phonenumbers.SUPPORTED_REGIONS:
        return _err(key, f"{region!r} must be written in capitals", f'write "{region.upper()}"')
    close = difflib.get_close_matches(region.upper(), sorted(phonenumbers.SUPPORTED_REGIONS), 3)
    hint = "a two-letter ISO country code such as US, CA, GB, DE"
    if close:
        hint += f" (did you mean {', '.join(close)}?)"
    return _err(key, f"{region!r} is not a country phonenumbers knows", hint)


def _check_textback(cfg: Config) -> list[Problem]:
    tb, out = cfg.textback, []
    if not tb.enabled:
        out.append(
            _warn(
                "textback.enabled",
                "false: calls are judged and recorded, but no text is sent",
                "set enabled = true when you are ready",
            )
        )
    p = _region_problem("textback.home_region", tb.home_region)
    if p:
        out.append(p)
    for i, region in enumerate(tb.allowed_countries):
        p = _region_problem(f"textback.allowed_countries[{i}]", region)
        if p:
            out.append(p)
    if tb.allowed_countries and tb.home_region not in tb.allowed_countries:
        out.append(
            _warn(
                "textback.allowed_countries",
                f"does not include home_region {tb.home_region!r}: callers from your own "
                "country will not be texted",
                f'add "{tb.home_region}", or leave the list empty to allow home_region only',
            )
        )
    if not tb.allowed_number_types:
        out.append(
            _err(
                "textback.allowed_number_types",
                "empty: no caller could ever be texted",
                '["mobile", "fixed_line_or_mobile"] suits most countries',
            )
        )
    if "fixed_line" in tb.allowed_number_types:
        out.append(
            _warn(
                "textback.allowed_number_types",
                "includes fixed_line: most landlines cannot receive texts, so those are lost",
                "remove it unless your carrier delivers SMS to landlines",
            )
        )
    for i, raw in enumerate(tb.blocklist):
        if not _parses(raw, tb.home_region):
            out.append(
                _warn(
                    f"textback.blocklist[{i}]",
                    f"{raw!r} is not a valid phone number, so it never matches a caller",
                    'write it in international form, e.g. "+12025550123"',
                )
            )
    if tb.delay >= tb.max_age:
        out.append(
            _err(
                "textback.max_age",
                f"{format_duration(tb.max_age)} is not longer than delay "
                f"({format_duration(tb.delay)}): every text would expire before it is sent",
                'make max_age hours, e.g. "2h"',
            )
        )
    caps = [("max_per_hour", tb.max_per_hour), ("max_per_day", tb.max_per_day)]
    caps.append(("max_per_month", tb.max_per_month))
    for (small_name, small), (big_name, big) in itertools.pairwise(caps):
        if small and big and small > big:
            out.append(
                _warn(
                    f"textback.{small_name}",
                    f"{small} is more than {big_name} ({big}), so it never applies",
                    f"make {small_name} at most {big_name}",
                )
            )
    if not tb.business_name.strip():
        out.append(
            _warn(
                "textback.business_name",
                "empty: {business_name} in a text would be blank",
                "the name callers know the office by",
            )
        )
    elif tb.business_name == TextbackConfig.model_fields["business_name"].default:
        out.append(
            _warn(
                "textback.business_name",
                f"still the example {tb.business_name!r}",
                'the name callers know the office by, e.g. "Main Street Dental"',
            )
        )
    for name in TEMPLATE_KEYS:
        out += check_template_fields(getattr(tb, name), f"textback.{name}")
    uses_name = _name_field_users(cfg)
    if uses_name and not tb.caller_name_fallback.strip():
        key, field = uses_name[0]
        out.append(
            _warn(
                key,
                f"uses {{{field}}}, but caller_name_fallback is empty: callers not in the "
                'contacts get e.g. "Hi , sorry we missed you"',
                'set [textback] caller_name_fallback, e.g. "there" ("Hi there, ...")',
            )
        )
    return out


def _name_field_users(cfg: Config) -> list[tuple[str, str]]:
    """(template key, name field) of every template that greets the caller by name."""
    tb, out = cfg.textback, []
    tables: list[tuple[str, Any]] = [("textback", tb)]
    tables += [(f"lines[{i}]", line) for i, line in enumerate(cfg.lines)]
    for prefix, table in tables:
        for name in TEMPLATE_KEYS:
            text = getattr(table, name) or ""
            for field in NAME_FIELDS:
                if "{" + field + "}" in text:
                    out.append((f"{prefix}.{name}", field))
                    break
    return out


def _check_contacts(cfg: Config) -> list[Problem]:
    """The contacts' sources exist (cheap: the file is read by `contacts_problems`), and
    a name field in a template has someone to name."""
    cc, out = cfg.contacts, []
    path = cc.file.strip()
    if path:
        p = Path(path)
        if not p.is_file():
            out.append(
                _warn(
                    "contacts.file",
                    f"{path!r} is not a file: no caller is known by name",
                    "export the phone book as CSV (number,name[,first_name]) or vCard",
                )
            )
        elif not os.access(p, os.R_OK):
            out.append(
                _warn(
                    "contacts.file",
                    f"{path!r} is not readable by this user: no caller is known by name",
                    "make it readable by the textback user (e.g. mode 0640, group textback)",
                )
            )
    family = cc.astdb_family.strip()
    if family and not cfg.ami.enabled:
        out.append(
            _warn(
                "contacts.astdb_family",
                "set, but [ami] enabled = false: there is no Asterisk database to ask",
                "remove it, or turn AMI on",
            )
        )
    if family and (not family.replace("_", "").replace("-", "").isalnum() or len(family) > 80):
        out.append(
            _err(
                "contacts.astdb_family",
                f"{family!r} is not an Asterisk database family name",
                'the family the PBX keeps caller names in, e.g. "cidname"',
            )
        )
    users = _name_field_users(cfg)
    if users and not path and not family:
        key, field = users[0]
        network = (
            "only a network name that looks like a person's (use_pbx_names) can fill it"
            if cc.use_pbx_names
            else "every caller gets caller_name_fallback"
        )
        out.append(
            _warn(
                key,
                f"uses {{{field}}}, but no contacts are configured: {network}",
                "set [contacts] file (the office's phone book as CSV or vCard) or "
                'astdb_family (e.g. "cidname")',
            )
        )
    return out


def contacts_problems(cfg: Config) -> list[Problem]:
    """What reading the contacts file finds: a file that cannot be used, rows skipped.

    Warnings: the daemon keeps going with the list it had (or none). `textback check`
    reads the file; the daemon's SIGHUP check does not (it reads the file itself)."""
    path = cfg.contacts.file.strip()
    if not path or not Path(path).is_file():
        return []  # said by _check_contacts
    try:
        book = load_book(path, cfg.textback.home_region)
    except ContactsFileError as exc:
        return [
            _warn(
                "contacts.file",
                f"cannot be used: {exc}",
                "CSV: number,name[,first_name] a line; vCard: a .vcf export of the phone book",
            )
        ]
    if not book.skipped_count:
        return []
    shown = "; ".join(book.skipped[:5])
    more = f" (and {book.skipped_count - 5} more)" if book.skipped_count > 5 else ""
    return [
        _warn(
            "contacts.file",
            f"{book.skipped_count} {'entry' if book.skipped_count == 1 else 'entries'} "
            f"skipped: {shown}{more}",
            "each entry needs a valid phone number and a name",
        )
    ]


def contacts_lines(cfg: Config) -> list[str]:
    """What `textback check` says about the contacts: where names come from."""
    cc, out = cfg.contacts, []
    path = cc.file.strip()
    if path:
        try:
            book = load_book(path, cfg.textback.home_region)
        except ContactsFileError as exc:
            out.append(f"file {path}: not usable ({exc})")
        else:
            kind = "vCard" if book.kind == "vcard" else "CSV"
            out.append(
                f"file {path} ({kind}): {_count(len(book), 'number')}, "
                f"{book.skipped_count} skipped, {book.duplicates} listed twice"
            )
    else:
        out.append("file: none")
    family = cc.astdb_family.strip()
    out.append(
        f"Asterisk database: family {family!r} (AMI DBGet)"
        if family
        else "Asterisk database: not asked"
    )
    if cc.use_pbx_names:
        out.append("network names: used when they look like a person's name (use_pbx_names)")
    else:
        out.append("network names: never used (use_pbx_names = false)")
    return out


def presentation_lines(cfg: Config) -> list[str]:
    """What `textback check` says about withheld callers: how they are told, and what
    happens to a caller nothing could tell about (as far as the config shows)."""
    if not cfg.ami.enabled:
        return ["no PBX ([ami] enabled = false): no call is tracked"]
    skip = cfg.calls.unknown_presentation == "skip"
    return [
        "told by: manager.conf channelvars = CALLERID(pres) (recommended; check cannot "
        "read manager.conf)",
        "else by: Getvar while the call is up (needs write = reporting for "
        + f"[{cfg.ami.username}])",
        'always: "anonymous" or no number',
        "neither tells (journal: event=presentation_unknown): "
        + (
            "NOT texted, reason presentation_unknown (unknown_presentation = skip)"
            if skip
            else 'texted, fail open (unknown_presentation = text; "skip" would not text)'
        ),
    ]


def _parses(raw: str, region: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(raw, region))
    except phonenumbers.NumberParseException:
        return False


def _check_replies(cfg: Config) -> list[Problem]:
    rc, out = cfg.replies, []
    for name in ("confirm_opt_out", "confirm_opt_in", "help_text"):
        text = getattr(rc, name)
        if not text.strip():
            out.append(_err(f"replies.{name}", "empty", "an opt-out must be confirmed in words"))
        out += check_template_fields(text, f"replies.{name}")
    if rc.forward_email and not cfg.smtp.host.strip():
        out.append(
            _err(
                "replies.forward_email",
                "set, but [smtp] host is empty: no mail could go",
                'set [smtp] host (e.g. "smtp.example.com") and from_address',
            )
        )
    for i, address in enumerate(rc.forward_email):
        if "@" not in address or address.strip() != address or not address.strip():
            out.append(
                _err(
                    f"replies.forward_email[{i}]",
                    f"{address!r} is not a mail address",
                    'write one address per string, e.g. ["desk@example.com"]',
                )
            )
    region = cfg.textback.home_region
    for i, staff in enumerate(rc.forward_sms):
        if classify_caller(staff, home_region=region).kind is not CallerKind.VALID:
            out.append(
                _err(
                    f"replies.forward_sms[{i}]",
                    f"{staff!r} is not a valid phone number",
                    "write it in E.164, e.g. +12025550123",
                )
            )
    if rc.on_reply.strip():
        try:
            argv = shlex.split(rc.on_reply)
        except ValueError as exc:
            argv = []
            out.append(_err("replies.on_reply", f"cannot be split into words: {exc}"))
        if argv and shutil.which(argv[0]) is None:
            out.append(
                _warn(
                    "replies.on_reply",
                    f"{argv[0]!r} is not an executable on PATH",
                    "give the full path of the script",
                )
            )
    if not [w for w in rc.opt_out_words if w.strip()]:
        out.append(
            _err(
                "replies.opt_out_words",
                "empty: nobody could opt out",
                'keep at least "STOP" (the law expects it)',
            )
        )
    return out


def check_template_fields(template: str, key: str) -> list[Problem]:
    """Problems with one template's merge fields, as the renderer sees them."""
    out = []
    for text in check_template(template):
        # check_template writes "what is wrong; what to do".
        message, _, hint = text.partition("; ")
        m = re.match(r"unknown field \{(.*)\}$", message)
        close = difflib.get_close_matches(m.group(1), TEMPLATE_FIELDS, 1) if m else []
        if close:
            hint = f"did you mean {{{close[0]}}}? {hint}"
        out.append(_err(key, message, hint))
    return out


def _check_hours(cfg: Config) -> list[Problem]:
    hours, out = cfg.hours, []
    try:
        office_zone(hours.timezone)
    except ValueError as exc:
        close = difflib.get_close_matches(hours.timezone, sorted(zoneinfo.available_timezones()), 3)
        hint = str(exc).partition(": ")[2]
        if close:
            hint = f"did you mean {', '.join(close)}? {hint}"
        out.append(_err("hours.timezone", f"unknown time zone {hours.timezone!r}", hint))
    week = 7 * 24 * 60
    placed: list[tuple[int, int, str]] = []  # minutes since Monday 00:00, and the key
    for d, day in enumerate(DAYS):
        for i, text in enumerate(getattr(hours, day)):
            key = f"hours.{day}[{i}]"
            try:
                span = parse_span(text)
            except ValueError as exc:
                out.append(_err(key, str(exc), 'open spans are "HH:MM-HH:MM", e.g. "09:00-17:00"'))
                continue
            start, end = d * 1440 + span.start, d * 1440 + span.end
            for o_start, o_end, o_key in placed:
                # Sunday's overnight span runs into Monday: compare a week apart too.
                if any(start < o_end + k and o_start + k < end for k in (-week, 0, week)):
                    out.append(_warn(key, f"{text!r} overlaps {o_key}", "merge the two spans"))
            placed.append((start, end, key))
    seen: set[date] = set()
    for i, text in enumerate(hours.holidays):
        key = f"hours.holidays[{i}]"
        try:
            day_off = parse_holiday(text)
        except ValueError as exc:
            out.append(_err(key, str(exc), 'one date a line item, "YYYY-MM-DD"'))
            continue
        if day_off in seen:
            out.append(_warn(key, f"{text} is listed twice", "remove one"))
        seen.add(day_off)
    return out


def _did_key(did: str, region: str) -> str:
    """A DID as the daemon matches it: the E.164 number when it is one, else as written."""
    judged = classify_caller(did, home_region=region)
    return judged.e164 if judged.kind is CallerKind.VALID and judged.e164 else did


def _check_lines(cfg: Config) -> list[Problem]:
    out: list[Problem] = []
    first: dict[str, int] = {}
    for i, line in enumerate(cfg.lines):
        key = f"lines[{i}]"
        did = line.did.strip()
        number = _did_key(did, cfg.textback.home_region.upper())
        if not did:
            out.append(_err(f"{key}.did", "empty", "the dialled number as the PBX shows it"))
        elif number in first:
            out.append(
                _err(
                    f"{key}.did",
                    f"{did!r} is the same DID as lines[{first[number]}].did",
                    "each DID gets one [[lines]] entry; merge the two",
                )
            )
        else:
            first[number] = i
        for name in TEMPLATE_KEYS:
            own: str | None = getattr(line, name)
            if own is not None:
                out += check_template_fields(own, f"{key}.{name}")
        if line.business_name is not None and not line.business_name.strip():
            out.append(_warn(f"{key}.business_name", "empty", "remove it to use [textback]'s"))
    return out


def _check_mqtt(cfg: Config) -> list[Problem]:
    """[mqtt]: the url's scheme and host, the CA file, a password with a user name."""
    m, out = cfg.mqtt, []
    if not m.url.strip():
        return []  # off: nothing here is used
    try:
        broker = Broker.parse(m.url)
    except ValueError as exc:
        return [_err("mqtt.url", str(exc), 'e.g. "mqtt://127.0.0.1:1883" or "mqtts://host:8883"')]
    if m.ca_file:
        if not broker.tls:
            out.append(
                _warn("mqtt.ca_file", "set, but the url is mqtt:// (no TLS)", "use mqtts://")
            )
        if not Path(m.ca_file).is_file():
            out.append(
                _err(
                    "mqtt.ca_file",
                    f"{m.ca_file!r} does not exist or is not a file",
                    "the PEM file of the CA that signed the broker's certificate",
                )
            )
        elif not os.access(m.ca_file, os.R_OK):
            out.append(_err("mqtt.ca_file", f"{m.ca_file!r} is not readable by this user"))
    if m.username and not m.password:
        out.append(
            _err(
                "mqtt.password",
                "empty, but username is set",
                "set the password (TEXTBACK_MQTT__PASSWORD keeps it out of the file)",
            )
        )
    if m.password and not m.username:
        out.append(_warn("mqtt.username", "empty, but a password is set: it is not sent"))
    if m.password and not broker.tls and broker.host not in ("127.0.0.1", "localhost", "::1"):
        out.append(
            _warn(
                "mqtt.url",
                f"the password goes in clear text to {broker.host}",
                "use mqtts:// for a broker on another machine",
            )
        )
    for key in ("topic_prefix", "site", "discovery_prefix"):
        value = getattr(m, key)
        if any(c in value for c in "+#") or (key != "topic_prefix" and "/" in value):
            out.append(_err(f"mqtt.{key}", f"{value!r} has a character a topic level cannot hold"))
    if m.keepalive < 1:
        out.append(_err("mqtt.keepalive", "under 1s", 'e.g. "60s"'))
    return out


def _check_database(cfg: Config) -> list[Problem]:
    path = cfg.database.path.strip()
    if not path:
        return [_err("database.path", "empty", 'e.g. "/var/lib/textback/textback.db"')]
    if not Path(path).is_absolute():
        return [
            _warn(
                "database.path",
                f"{path!r} is relative, so it depends on the working directory",
                "use an absolute path; the unit's StateDirectory is /var/lib/textback",
            )
        ]
    return []


def _check_metrics(cfg: Config) -> list[Problem]:
    m, out = cfg.metrics, []
    if m.textfile.strip():
        path = Path(m.textfile.strip())
        directory = path.parent
        if not path.is_absolute():
            out.append(
                _warn(
                    "metrics.textfile",
                    f"{m.textfile!r} is relative, so it depends on the working directory",
                    "use node_exporter's directory, e.g. "
                    "/var/lib/node_exporter/textfile_collector/textback.prom",
                )
            )
        if not directory.is_dir():
            out.append(
                _err(
                    "metrics.textfile",
                    f"directory {directory} does not exist",
                    "create it (node_exporter --collector.textfile.directory), or fix the path",
                )
            )
        elif not os.access(directory, os.W_OK | os.X_OK):
            out.append(
                _err(
                    "metrics.textfile",
                    f"directory {directory} is not writable by this user",
                    "the file is replaced by a rename: the service user needs write access"
                    " to the directory (and the unit's ReadWritePaths= must list it)",
                )
            )
        if path.suffix != ".prom":
            out.append(
                _warn(
                    "metrics.textfile",
                    f"{path.name!r} does not end in .prom",
                    "node_exporter's textfile collector reads only *.prom files",
                )
            )
    if m.listen.strip():
        from daemon.metrics.export import parse_listen  # noqa: PLC0415 (only when set)

        try:
            host, _ = parse_listen(m.listen)
        except ValueError as exc:
            out.append(_err("metrics.listen", str(exc), 'e.g. "127.0.0.1:9533"'))
        else:
            if host not in ("127.0.0.1", "::1", "localhost"):
                out.append(
                    _warn(
                        "metrics.listen",
                        f"{host} is not loopback: anyone who reaches it reads the metrics",
                        "the endpoint has no authentication; prefer 127.0.0.1 (or the"
                        " textfile) unless a firewall guards the port",
                    )
                )
    if (m.textfile.strip() or m.listen.strip()) and m.interval <= 0:
        out.append(_err("metrics.interval", "must be more than 0", 'e.g. "15s"'))
    return out


# --- load errors, with hints -------------------------------------------------------------


def _pretty_key(key: str) -> str:
    """ "lines.0.did" -> "lines[0].did" """
    out = ""
    for part in key.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _env_name(key: str) -> str | None:
    """The environment variable that set this key, if one is set."""
    key = re.sub(r"\[\d+\]", "", key)
    parts = [p for p in key.split(".") if not p.isdigit()]
    if len(parts) != 2:
        return None
    wanted = f"TEXTBACK_{parts[0]}__{parts[1]}".upper()
    for name in os.environ:
        if name.upper() == wanted:
            return name
    return None


def _load_hint(key: str, message: str) -> str:
    if key == "(file)":
        return (
            f"copy config/textback.toml to {DEFAULT_CONFIG_PATH} (or pass --config FILE); "
            "the unit's user must be able to read it"
        )
    if key == "(syntax)":
        return 'TOML syntax: text and durations need double quotes, e.g. ring_timeout = "20s"'
    parts = [p for p in key.split(".") if not p.isdigit()]
    sections = {name: model for name, model, _ in section_models()}
    if message.startswith("unknown key"):
        if len(parts) == 1:
            close = difflib.get_close_matches(parts[0], list(sections), 1)
            guess = f"did you mean [{close[0]}]? " if close else ""
            return f"{guess}the sections are: " + ", ".join(sections)
        model = sections.get(parts[0])
        if model is not None:
            names = list(model.model_fields)
            close = difflib.get_close_matches(parts[-1], names, 1)
            guess = f"did you mean {close[0]}? " if close else ""
            title = f"[[{parts[0]}]]" if parts[0] == "lines" else f"[{parts[0]}]"
            return f"{guess}the keys of {title} are: " + ", ".join(names)
        return ""
    if len(parts) >= 2 and parts[0] in sections:
        for doc in key_docs(parts[0], sections[parts[0]]):
            if doc.name == parts[1]:
                return _doc_hint(doc)
    return ""


def _doc_hint(doc: KeyDoc) -> str:
    bits = [doc.description]
    if doc.unit == "duration":
        bits.append('a duration with a unit, e.g. "30s", "5m", "24h"')
    elif doc.unit:
        bits.append(f"unit: {doc.unit}")
    if doc.choices:
        bits.append("one of " + ", ".join(doc.choices))
    if doc.bounds:
        bits.append(doc.bounds)
    bits.append(f"default {describe_default(doc, short=True)}")
    return "; ".join(bits)


def problems_from_error(err: ConfigError) -> list[Problem]:
    """The problems of a config that did not load, each with a hint."""
    out = []
    for key, raw in err.problems:
        message = raw.removeprefix("Value error, ")
        hint = _load_hint(key, message)
        env = _env_name(key)
        if env:
            message += f" (set by environment variable {env})"
        out.append(_err(_pretty_key(key), message, hint))
    return out


def check_config(path: Path | str | None) -> tuple[Config | None, list[Problem]]:
    """Load and validate: (the config, or None if it does not load; every problem).

    `textback run` calls this on SIGHUP and keeps the old config when `has_errors`.
    """
    env = check_environment()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, problems_from_error(exc) + env
    return cfg, validate(cfg) + env


def check_environment() -> list[Problem]:
    """TEXTBACK_* variables naming no section: pydantic-settings ignores them silently."""
    sections = [name for name, _, _ in section_models()]
    out = []
    for name in sorted(os.environ):
        if not name.upper().startswith("TEXTBACK_"):
            continue
        section = name[len("TEXTBACK_") :].partition("__")[0].lower()
        if section not in sections:
            close = difflib.get_close_matches(section, sections, 1)
            guess = f"did you mean TEXTBACK_{close[0].upper()}__...? " if close else ""
            out.append(
                _warn(
                    f"(environment) {name}",
                    "names no config section, so it is ignored",
                    f"{guess}write TEXTBACK_<SECTION>__<KEY>; sections: " + ", ".join(sections),
                )
            )
    return out


# --- output ------------------------------------------------------------------------------


def _shown(doc: KeyDoc, value: Any) -> str:
    if doc.is_secret:
        return "(set, hidden)" if value else "(not set)"
    if value is None:
        return "(not set)"
    return toml_value(value, duration=doc.is_duration)


def settings_lines(cfg: Config) -> list[str]:
    """The effective settings, one `key = value` a line, secrets hidden, changes marked."""
    out: list[str] = []
    for section, model, is_array in section_models():
        docs = list(key_docs(section, model))
        tables: list[Any] = list(getattr(cfg, section)) if is_array else [getattr(cfg, section)]
        for table in tables:
            out.append(f"[[{section}]]" if is_array else f"[{section}]")
            for doc in docs:
                value = getattr(table, doc.name)
                if doc.name in TEMPLATE_KEYS and value is not None:
                    out.append(f"  {doc.name} = (see Texts below)")
                    continue
                line = f"  {doc.name} = {_shown(doc, value)}"
                notes = []
                env = _env_name(doc.path)
                if env and not is_array:
                    notes.append(f"from {env}")
                elif not doc.required and value != doc.default and not doc.is_secret:
                    notes.append(f"default {describe_default(doc, short=True)}")
                out.append(line + (f"   # {', '.join(notes)}" if notes else ""))
    return out


def _previews(cfg: Config, *, known: bool = True) -> list[Preview]:
    try:
        return render_preview(cfg, SAMPLE_CONTACT if known else None)
    except ValueError:  # only a text no SMS can carry (a lone surrogate); shown unrendered
        return []


def _cost(info: SmsInfo) -> str:
    encoding = "GSM-7" if info.encoding == "gsm7" else "UCS-2"
    parts = "1 part" if info.parts == 1 else f"{info.parts} parts"
    return f"{parts}, {encoding}, {info.units}/{info.chars_per_part * info.parts}"


def template_lines(cfg: Config) -> list[str]:
    """Every text rendered with sample values, with its SMS parts and encoding."""
    out = [
        f'(sample caller in the contacts: "{SAMPLE_CONTACT.name}", first name '
        f'"{SAMPLE_CONTACT.first_name}"; Tuesday 10:30; parts, encoding, '
        "characters used/available)"
    ]
    unknown = {p.label: p for p in _previews(cfg, known=False)}
    for preview in _previews(cfg):
        out.append(f"{preview.label}  [{_cost(preview.info)}]")
        out.append(f"    {preview.text}")
        other = unknown.get(preview.label)
        if other is not None and other.text != preview.text:
            out.append(f"    caller not in the contacts: {other.text}")
    for i, line in enumerate(cfg.lines):
        if not line.enabled:
            out.append(f"lines[{i}] ({line.did}) is disabled: its callers are never texted")
    return out


def _check_texts(cfg: Config) -> list[Problem]:
    """Warnings about what the texts cost: UCS-2 from a stray character, many parts."""
    out: list[Problem] = []
    for preview in _previews(cfg):
        section, _, name = preview.label.partition(".")
        if section.startswith("lines["):  # only a line's own templates, not inherited ones
            line = cfg.lines[int(section[6:-1])]
            if getattr(line, name) is None:
                continue
        info = preview.info
        odd = sorted({ch for ch in preview.text if septet_cost(ch) == 0})
        if info.encoding != "gsm7" and info.parts > 1:
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in odd[:5])
            out.append(
                _warn(
                    preview.label,
                    f"is sent in {info.parts} parts as UCS-2 (70 characters a part instead "
                    f"of 160) because of {shown}",
                    "replace those characters (curly quotes and dashes often come from a "
                    "word processor), or shorten the text",
                )
            )
        elif info.parts > 2:
            out.append(
                _warn(
                    preview.label,
                    f"is {info.parts} SMS parts long; each part is billed as one text",
                    "shorten it; one or two parts suit a missed-call text",
                )
            )
    return out


def format_problem(p: Problem) -> list[str]:
    """A problem as printed: severity, key, message, then the hint indented."""
    lines = [f"{p.severity.upper():<7} {p.key}: {p.message}"]
    if p.hint:
        lines.append(f"        hint: {p.hint}")
    return lines


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def report(path: Path, cfg: Config | None, problems: Sequence[Problem]) -> list[str]:
    """The whole `textback check` output."""
    out = [f"textback check: {path}", ""]
    if cfg is not None:
        out += ["Settings in effect (secrets hidden):", *settings_lines(cfg), ""]
        out += ["Texts:", *template_lines(cfg), ""]
        out += ["Contacts (who texts greet by name):", *contacts_lines(cfg), ""]
        out += ["Withheld numbers (never texted):", *presentation_lines(cfg), ""]
    errors = [p for p in problems if p.severity is Severity.ERROR]
    warnings = [p for p in problems if p.severity is Severity.WARNING]
    if problems:
        out.append("Problems:")
        for p in [*errors, *warnings]:
            env = _env_name(p.key) if cfg is not None else None
            shown = Problem(p.key, f"{p.message} (set by {env})", p.hint, p.severity) if env else p
            out += format_problem(shown)
        out.append("")
    if cfg is None:
        verdict = f"NOT OK: the config does not load ({_count(len(errors), 'error')})"
    elif errors:
        verdict = f"NOT OK: {_count(len(errors), 'error')}, {_count(len(warnings), 'warning')}"
    elif warnings:
        verdict = f"OK with {_count(len(warnings), 'warning')}"
    else:
        verdict = "OK: no problems"
    out.append(verdict)
    return out


__all__ = [
    "TEMPLATE_FIELDS",
    "Problem",
    "Severity",
    "check_config",
    "check_environment",
    "check_template_fields",
    "contacts_problems",
    "has_errors",
    "problems_from_error",
    "report",
    "validate",
]


def log_warnings(problems: Iterable[Problem]) -> None:
    """What `textback check` would warn about reaches the journal too (not only errors),
    as lines of daemon.service, where an operator looks for the daemon's start."""
    log = logging.getLogger("daemon.service")
    for p in problems:
        if p.severity is Severity.WARNING:
            log.warning(kv(event="config_warning", key=p.key, problem=p.message, hint=p.hint))
