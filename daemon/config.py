"""The config schema: one TOML file plus TEXTBACK_<SECTION>__<KEY> environment overrides.

The pydantic models are the schema and the manual: every field has a description, a unit
and a default. `config/textback.toml` must match them (a test checks it).
"""

from __future__ import annotations

import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.errors import TextbackError

DEFAULT_CONFIG_PATH = Path("/etc/textback/textback.toml")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Read "30s", "24h", "1h30m", "500ms" or a plain number of seconds; return seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as '30s' or '24h', not true/false")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration such as '30s' or '24h'")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration: write e.g. '30s'")
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(
            f"cannot read {value!r} as a duration: use a unit, e.g. '30s', '5m', '24h'"
        )
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form of a duration, as written in the config."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    # Not "{:g}": that writes 1e+06s, which parse_duration rightly refuses.
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
NumberType = Literal["mobile", "fixed_line_or_mobile", "fixed_line", "voip", "personal_number"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmiConfig(_Section):
    """[ami]: the Asterisk Manager Interface connection and what counts as inbound."""

    enabled: bool = Field(
        True, description="off: no PBX at all (a process that only sends); no call is tracked"
    )
    host: str = Field("127.0.0.1", description="Asterisk host running AMI")
    port: int = Field(5038, ge=1, le=65535, description="AMI TCP port")
    username: str = Field("textback", description="manager.conf user")
    secret: str = Field("", description="manager.conf secret (never logged)", repr=False)
    keepalive: Duration = Field(20.0, description="interval between Ping actions")
    ping_timeout: Duration = Field(10.0, description="a Ping unanswered this long: link dead")
    max_backoff: Duration = Field(30.0, description="longest wait between reconnect attempts")
    inbound_contexts: list[str] = Field(
        default_factory=lambda: [
            "from-trunk",
            "from-pstn",
            "from-did-direct",
            "ext-did",
            "from-external",
            "from-sip-external",
        ],
        description="dialplan contexts where calls from the outside world start",
    )
    inbound_trunks: list[str] = Field(
        default_factory=list,
        description="trunk endpoint names (PJSIP/<name>-...) whose calls are inbound",
    )
    inbound_dids: list[str] = Field(
        default_factory=list, description="dialled numbers (DIDs) that are inbound lines"
    )


class CallsConfig(_Section):
    """[calls]: how the tracker judges a call."""

    ring_timeout: Duration = Field(20.0, description="the office's time to pick up")
    min_ring: Duration = Field(1.0, description="a hang-up before this is short_abandon")
    carrier_voicemail_after: Duration | None = Field(
        None,
        description="an outside leg answered after this much ringing is carrier voicemail "
        "(default: ring_timeout)",
    )
    enforce_ring_timeout: bool = Field(
        False, description="Redirect calls still ringing after ring_timeout to voicemail_target"
    )
    voicemail_target: str = Field(
        "", description="context,exten,priority for enforce_ring_timeout, e.g. 'vm,100,1'"
    )
    max_call_age: Duration = Field(
        6 * 3600.0, description="a call with no end seen after this long is dropped"
    )
    unknown_presentation: Literal["text", "skip"] = Field(
        "text",
        description="a caller whose withheld flag nothing could tell (no channelvars "
        "CALLERID(pres), no Getvar answer): text them (fail open, logged) or skip "
        "(not texted: presentation_unknown)",
    )

    @property
    def carrier_voicemail_seconds(self) -> float:
        """The effective carrier_voicemail_after."""
        if self.carrier_voicemail_after is None:
            return self.ring_timeout
        return self.carrier_voicemail_after


class ModemConfig(_Section):
    """[modem]: the GSM modem on a serial port."""

    device: str = Field("/dev/ttyUSB0", description="serial device; prefer /dev/serial/by-id/...")
    baudrate: int = Field(115200, description="serial speed")
    pin: str = Field("", description="SIM PIN, if the SIM asks for one (never logged)", repr=False)
    mode: Literal["pdu", "text"] = Field("pdu", description="SMS mode; text only if PDU fails")
    smsc: str = Field("", description="SMS centre number, only if the SIM lacks one")
    status_reports: bool = Field(True, description="ask the network for delivery reports")
    delivery_reports: Literal["auto", "stored", "direct"] = Field(
        "auto",
        description="how reports reach textback: stored by the modem (+CDSI; read at the"
        " next start when they came while it was down), direct (+CDS; lost while it is"
        " down), auto: stored where the modem can",
    )
    report_window: Duration = Field(
        3600.0,
        gt=0,
        description="a report to the number of an uncertain text (a send a crash cut"
        " off) up to this long after that send settles it: delivered",
    )
    send_timeout: Duration = Field(60.0, description="longest wait for AT+CMGS to finish")


#: `[[modems]] device = "imei:<IMEI>"`: the modem found by its IMEI on any serial port.
IMEI_PREFIX = "imei:"


class PoolModemConfig(_Section):
    """[[modems]]: one modem of several (one SIM each), with the lines it texts for."""

    name: str = Field(
        description="its name in the journal, history, stats, MQTT topics and metrics:"
        " lower-case letters, digits, - and _",
    )
    device: str = Field(
        description='serial device (prefer /dev/serial/by-id/...), or "imei:<IMEI>" to'
        " find the modem by its IMEI on whichever port it appears",
    )
    pin: str = Field("", description="SIM PIN, if the SIM asks for one (never logged)", repr=False)
    smsc: str = Field("", description="SMS centre number, only if the SIM lacks one")
    lines: list[str] = Field(
        default_factory=list,
        description="the DIDs this SIM texts for: a caller who rang one gets the text from"
        " this SIM",
    )
    fallback: bool = Field(
        False,
        description="while this modem is down or at max_per_month, its lines' texts may go"
        " out through another modem (from another number); off: they wait for it",
    )
    max_per_month: int = Field(
        0, ge=0, description="texts this SIM may send per calendar month (its plan); 0: no cap"
    )

    @property
    def imei(self) -> str | None:
        """The IMEI of an `imei:<IMEI>` device, else None."""
        d = self.device.strip()
        return d[len(IMEI_PREFIX) :].strip() if d.lower().startswith(IMEI_PREFIX) else None


class TextbackConfig(_Section):
    """[textback]: who gets a text, when, and what it says."""

    enabled: bool = Field(True, description="master switch; off: decide and record, send none")
    delay: Duration = Field(30.0, description="wait step before sending (cancellable)")
    cooldown: Duration = Field(86400.0, description="at most one text per caller in this window")
    max_age: Duration = Field(7200.0, description="a text not sent by then expires")
    max_attempts: int = Field(5, ge=1, description="send attempts before a text fails")
    retry_backoff: Duration = Field(30.0, description="first retry delay; doubles each time")
    resend_uncertain: bool = Field(
        False, description="resend a text whose send was in flight at a crash"
    )
    home_region: str = Field("US", description="ISO country of the office, for local numbers")
    allowed_countries: list[str] = Field(
        default_factory=list, description="ISO countries texts may go to (default: home_region)"
    )
    allowed_number_types: list[NumberType] = Field(
        default_factory=lambda: list[NumberType](["mobile", "fixed_line_or_mobile"]),
        description="phonenumbers number types that may be texted",
    )
    blocklist: list[str] = Field(default_factory=list, description="numbers never texted")
    max_per_hour: int = Field(30, ge=0, description="cap on texts per hour (0: no cap)")
    max_per_day: int = Field(200, ge=0, description="cap on texts per day (0: no cap)")
    max_per_month: int = Field(3000, ge=0, description="cap per calendar month: the SIM plan")
    pumping_window: Duration = Field(600.0, description="window of the SMS-pumping guard")
    pumping_max_per_range: int = Field(
        5, ge=0, description="distinct numbers in one range within the window that pause sending"
    )
    pumping_prefix_digits: int = Field(
        8, ge=3, description="E.164 digits that make a 'number range' for the pumping guard"
    )
    business_name: str = Field("our office", description="{business_name} when no line sets one")
    caller_name_fallback: str = Field(
        "", description="{caller_name} and {first_name} for a caller not in [contacts]"
    )
    template: str = Field(
        "Sorry we missed your call to {business_name}. We will call you back soon.",
        description="text for a missed call in business hours",
    )
    template_after_hours: str = Field(
        "Thanks for calling {business_name}. We are closed now and will call you back "
        "on the next business day.",
        description="text for a missed call outside business hours",
    )
    template_voicemail: str = Field(
        "Thanks for your message to {business_name}. We will call you back soon.",
        description="text when the caller left a voicemail",
    )


_SPANS = (
    'open spans "HH:MM-HH:MM" in the office time zone (an end before the start runs past '
    'midnight, "24:00" ends at midnight); [] closed all day'
)


class HoursConfig(_Section):
    """[hours]: business hours, for the after-hours wording."""

    timezone: str = Field("America/New_York", description="IANA time zone of the office")
    mon: list[str] = Field(default_factory=lambda: ["09:00-17:00"], description=_SPANS)
    tue: list[str] = Field(default_factory=lambda: ["09:00-17:00"], description=_SPANS)
    wed: list[str] = Field(default_factory=lambda: ["09:00-17:00"], description=_SPANS)
    thu: list[str] = Field(default_factory=lambda: ["09:00-17:00"], description=_SPANS)
    fri: list[str] = Field(default_factory=lambda: ["09:00-17:00"], description=_SPANS)
    sat: list[str] = Field(default_factory=list, description=_SPANS)
    sun: list[str] = Field(default_factory=list, description=_SPANS)
    holidays: list[str] = Field(default_factory=list, description="closed dates, YYYY-MM-DD")


class LineConfig(_Section):
    """[[lines]]: one inbound DID with its own name and wording."""

    did: str = Field(description="the dialled number as the PBX shows it")
    business_name: str | None = Field(None, description="overrides [textback] business_name")
    template: str | None = Field(None, description="overrides [textback] template")
    template_after_hours: str | None = Field(None, description="overrides template_after_hours")
    template_voicemail: str | None = Field(None, description="overrides template_voicemail")
    callback_number: str = Field("", description="{callback_number}: the number to call back")
    enabled: bool = Field(True, description="off: never text callers of this line")


#: DESIGN.md's keyword lists (matched after folding case, width, accents and the
#: punctuation, emoji and spaces around them).
OPT_OUT_WORDS = (
    "STOP",
    "STOPALL",
    "STOP ALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
    "OPT-OUT",
)
OPT_IN_WORDS = ("START", "UNSTOP")
HELP_WORDS = ("HELP", "INFO")


class RepliesConfig(_Section):
    """[replies]: what callers text back (STOP, START, HELP and the rest)."""

    opt_out_words: list[str] = Field(
        default_factory=lambda: list(OPT_OUT_WORDS),
        description="a reply that is one of these (any case, accents, punctuation) opts out",
    )
    opt_in_words: list[str] = Field(
        default_factory=lambda: list(OPT_IN_WORDS),
        description="opts back in (YES too, while the number is opted out)",
    )
    help_words: list[str] = Field(
        default_factory=lambda: list(HELP_WORDS), description="answered with help_text"
    )
    fuzzy_opt_out: Literal["opt_out", "flag"] = Field(
        "opt_out",
        description='"please stop texting me": opt_out opts out; flag only marks the reply',
    )
    confirm_opt_out: str = Field(
        "{business_name}: you will get no more texts from us. Reply START to undo.",
        description="the one confirmation of an opt-out (no marketing)",
    )
    confirm_opt_in: str = Field(
        "{business_name}: texts are back on. Reply STOP to opt out.",
        description="the one confirmation of an opt-in",
    )
    help_text: str = Field(
        "{business_name}: we text back the calls we miss. Call us at {callback_number}."
        " Reply STOP to opt out.",
        description="the answer to HELP (business name, callback number, how to stop)",
    )
    reply_window: Duration = Field(
        1_209_600.0, description="a reply answers the latest text to its sender this recent"
    )
    forward_email: list[str] = Field(
        default_factory=list,
        description="mail each reply to these addresses (needs [smtp]); [] no mail",
    )
    forward_sms: list[str] = Field(
        default_factory=list,
        description='text each reply to these staff mobiles ("Reply from <number>: <text>")',
    )
    on_reply: str = Field(
        "",
        description="a command run for each reply, with gammu-smsd's SMS_1_NUMBER,"
        " SMS_1_TEXT, SMS_MESSAGES, DECODED_PARTS; empty: none",
    )
    on_reply_timeout: Duration = Field(30.0, description="on_reply is stopped after this long")
    forward_per_hour: int = Field(
        10,
        ge=1,
        description="most replies of one sender forwarded per hour; the rest are summed up",
    )


class SmtpConfig(_Section):
    """[smtp]: the mail server that carries forwarded replies."""

    host: str = Field("", description="SMTP server; empty: no mail")
    port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS)")
    username: str = Field("", description="login name; empty: no login")
    password: str = Field("", description="login password (never logged)", repr=False)
    tls: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls (port 587), tls (port 465) or none (a local relay)"
    )
    from_address: str = Field("textback@localhost", description="the From: of forwarded mail")
    timeout: Duration = Field(30.0, description="an SMTP server silent this long has failed")


class MqttConfig(_Section):
    """[mqtt]: live state, events and Home Assistant discovery on an MQTT broker."""

    url: str = Field(
        "",
        description="the broker: mqtt://host:1883, or mqtts://host:8883 for TLS; empty: off",
    )
    username: str = Field("", description="login name; empty: no login")
    password: str = Field("", description="login password (never logged)", repr=False)
    ca_file: str = Field(
        "",
        description="mqtts: PEM file of the CA that signed the broker's certificate;"
        " empty: the system's CAs",
    )
    client_id: str = Field("", description="MQTT client id; empty: textback-<site>")
    topic_prefix: str = Field("textback", description="first level of every topic")
    site: str = Field(
        "", description="second level of every topic (this office); empty: the host name"
    )
    keepalive: Duration = Field(
        60.0,
        description="MQTT keepalive; the broker says offline within 1.5 times this after"
        " the daemon dies",
    )
    discovery: bool = Field(True, description="publish Home Assistant discovery messages")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    expose_caller: bool = Field(
        False,
        description="put callers' numbers (and reply texts) in event payloads; never in topics",
    )
    commands: bool = Field(
        False,
        description="obey <prefix>/<site>/cmd/enabled ON/OFF (pause and resume texting;"
        " a Home Assistant switch)",
    )


class SendingConfig(_Section):
    """[sending]: how this process sends its texts: its own modems, or a modem bank over
    the MQTT broker of [mqtt] (several offices: README "Several offices")."""

    via: Literal["modem", "broker"] = Field(
        "modem",
        description="modem: the modems of this machine; broker: each text is a job on"
        " <topic_prefix>/jobs/<site> for the group's senders, its result read back on"
        " <topic_prefix>/<site>/results",
    )
    in_flight: int = Field(
        64, ge=1, le=10_000, description="via broker: jobs awaiting their result at once"
    )
    republish: Duration = Field(
        10.0,
        description="via broker: a job that no sender has claimed after this long is offered"
        " again, and again after as long (a sender that died, or lost its broker"
        " connection, while the broker held jobs for it: the broker hands them to no"
        " other sender); a claimed job never is (only its owner may send it); 0s: never",
    )


class JobsConfig(_Section):
    """[jobs]: serve the texts of other offices (a sender of the modem bank)."""

    serve: bool = Field(
        False,
        description="take jobs from $share/<group>/<topic_prefix>/jobs/+ on the [mqtt]"
        " broker and send them through this machine's modems",
    )
    group: str = Field(
        "textback",
        description="the shared-subscription group: the senders of one group share the jobs;"
        " also names the group's do-not-text list topic",
    )


class ContactsConfig(_Section):
    """[contacts]: the callers the office knows by name; texts greet no one else by name."""

    file: str = Field(
        "",
        description="the office's contacts: a CSV file (number,name[,first_name]) or a vCard"
        " file exported from a phone book; re-read when it changes; empty: none",
    )
    astdb_family: str = Field(
        "",
        description='Asterisk database family of caller names (AMI DBGet), e.g. "cidname";'
        " empty: none",
    )
    use_pbx_names: bool = Field(
        False,
        description="use the caller ID name the caller's network sent when it looks like a"
        " person's name (it is the caller's own claim: off by default)",
    )


class MetricsConfig(_Section):
    """[metrics]: Prometheus metrics, as a node_exporter textfile and/or an HTTP endpoint."""

    textfile: str = Field(
        "",
        description="node_exporter textfile collector file, rewritten atomically every"
        " interval, e.g. /var/lib/node_exporter/textfile_collector/textback.prom; empty: none",
    )
    listen: str = Field(
        "",
        description='HTTP endpoint for Prometheus to scrape, host:port, e.g. "127.0.0.1:9533"'
        " (no authentication: keep it on loopback); empty: none",
    )
    interval: Duration = Field(
        15.0, description="how often the textfile is written and the outbox gauge is read"
    )


class DatabaseConfig(_Section):
    """[database]: where everything is kept."""

    path: str = Field("/var/lib/textback/textback.db", description="SQLite file (WAL)")
    keep_calls: Duration = Field(
        400 * 86400.0,
        description="calls older than this are deleted, with their decisions and texts "
        "(never a text still waiting, queued or sending), a little every day; 0: keep all",
    )


class LogConfig(_Section):
    """[log]: how much the daemon says."""

    level: Literal["trace", "debug", "info", "warning", "error"] = Field(
        "info", description="lowest level logged; trace shows raw AMI and AT bytes"
    )


#: The name of the one modem of a `[modem]` section.
SINGLE_MODEM = "modem"

_toml_path: ContextVar[Path | None] = ContextVar("_toml_path", default=None)


class Config(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="TEXTBACK_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    ami: AmiConfig = Field(default_factory=AmiConfig)  # type: ignore[arg-type]
    calls: CallsConfig = Field(default_factory=CallsConfig)  # type: ignore[arg-type]
    modem: ModemConfig = Field(default_factory=ModemConfig)  # type: ignore[arg-type]
    modems: list[PoolModemConfig] = Field(default_factory=list)
    textback: TextbackConfig = Field(default_factory=TextbackConfig)  # type: ignore[arg-type]
    hours: HoursConfig = Field(default_factory=HoursConfig)  # type: ignore[arg-type]
    lines: list[LineConfig] = Field(default_factory=list)
    replies: RepliesConfig = Field(default_factory=RepliesConfig)  # type: ignore[arg-type]
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)  # type: ignore[arg-type]
    contacts: ContactsConfig = Field(default_factory=ContactsConfig)  # type: ignore[arg-type]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # type: ignore[arg-type]
    mqtt: MqttConfig = Field(default_factory=MqttConfig)  # type: ignore[arg-type]
    sending: SendingConfig = Field(default_factory=SendingConfig)  # type: ignore[arg-type]
    jobs: JobsConfig = Field(default_factory=JobsConfig)  # type: ignore[arg-type]
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)  # type: ignore[arg-type]
    log: LogConfig = Field(default_factory=LogConfig)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init values, then the environment, then the TOML file (highest first)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def modem_entries(self) -> list[PoolModemConfig]:
        """The modems in effect: the `[[modems]]` entries, else the one `[modem]` (named
        "modem", no lines of its own)."""
        if self.modems:
            return list(self.modems)
        m = self.modem
        return [
            PoolModemConfig(
                name=SINGLE_MODEM,
                device=m.device,
                pin=m.pin,
                smsc=m.smsc,
                lines=[],
                fallback=False,
                max_per_month=0,
            )
        ]

    def modem_settings(self, entry: PoolModemConfig) -> ModemConfig:
        """One modem's settings: `[modem]`'s (baudrate, mode, reports, timeouts) with the
        entry's device, PIN and SMSC."""
        return self.modem.model_copy(
            update={"device": entry.device, "pin": entry.pin, "smsc": entry.smsc}
        )

    def line_for(self, did: str) -> LineConfig | None:
        """The [[lines]] entry of a DID, if any."""
        for line in self.lines:
            if line.did == did:
                return line
        return None


class ConfigError(TextbackError):
    """The config cannot be used; `problems` lists (key path, message) pairs."""

    def __init__(self, path: Path | None, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        where = str(path) if path else "config"
        lines = [f"{where}: {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/textback.toml)"
        out.append((key, msg))
    return out


def load_config(path: Path | str | None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Load the TOML file at `path` (None: defaults and environment only).

    Raises ConfigError listing every problem with its key path.
    """
    p = Path(path) if path is not None else None
    if p is not None:
        if not p.exists():
            raise ConfigError(p, [("(file)", "no such file")])
        try:
            with p.open("rb") as fh:
                tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(p, [("(file)", f"cannot read: {exc.strerror}")]) from exc
        except ValueError as exc:
            raise ConfigError(p, [("(syntax)", str(exc))]) from exc
    token = _toml_path.set(p)
    try:
        return Config(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(p, _problems(exc)) from exc
    finally:
        _toml_path.reset(token)
