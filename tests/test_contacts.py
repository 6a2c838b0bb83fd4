"""Contacts (issue 10, part 1): a caller's name comes from the office, never from the caller.

The office's contacts file (CSV or vCard) and the PBX's Asterisk database (AMI DBGet,
against the replay server over loopback TCP) name callers; a network-supplied name is used
only with use_pbx_names and only when it looks like a person's. Hostile names are pushed
through the real pipeline (the replay's dry run, and a live Pipeline on a SQLite file) and
must never be in a text that goes out.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.app.dryrun import dry_run
from daemon.app.pipeline import Pipeline
from daemon.check import contacts_problems, report, validate
from daemon.clock import ManualClock
from daemon.config import Config
from daemon.contacts.book import ContactsFileError, load_book, parse_book
from daemon.contacts.names import (
    ASTDB_MISS_TTL,
    ASTDB_TTL,
    LOOKUP_CHECK_INTERVAL,
    WATCH_INTERVAL,
    Names,
    astdb_keys,
)
from daemon.decide.names import CALLER_NAME_MAX, name_problem, person_name
from daemon.decide.templates import gsm7_fold
from daemon.intake.replayserver import ReplayServer
from daemon.model import Contact, FinishedCall
from daemon.outbox.outbox import Outbox
from daemon.store.store import Store
from gsm.gsm7 import is_gsm7
from tests.ami_support import rig
from tests.outbox_fakes import FakeSender, call

DATA = Path(__file__).parent / "data" / "contacts"
T0 = 1_795_300_000.0
BUSINESS = "Main Street Dental"
TEMPLATE = "Hi {caller_name}, sorry we missed your call to {business_name}."
FALLBACK_TEXT = f"Hi there, sorry we missed your call to {BUSINESS}."

#: Names a caller's network may carry that must never reach a text.
HOSTILE_NAMES = [
    "http://evil.example/pay",
    "https://bit.ly/x",
    "evil.example",
    "Pay at evil.example",
    "pay evil.example now",
    "www evil com",
    "bit.ly/x",
    "bit.ly",
    "t.co",
    "EVIL.EXAMPLE",
    "evil。example",  # ideographic full stop
    "Call 1-900-555-0199",
    "Call now",
    "Refund Dept",
    "jane@evil.example",
    "jane at evil.example",
    "\u202eelpmaxe.live",  # right-to-left override
    "Jane\u202e Doe",
    "\u2067Jane\u2069",  # isolates
    "Jane\u200bDoe",  # zero-width space
    "P\u0430ypal Support",  # Cyrillic a among Latin letters
    "\u0410pple",  # Cyrillic A
    "J\u03bfhn",  # Greek omicron
    "Please call us back",  # four words: a sentence
    "Your package is waiting",
    "Jane \U0001f600",  # emoji
    "\U0001f4de",
    "Jane\u200d\U0001f600",
    "\uff45\uff56\uff49\uff4c",  # fullwidth "evil"
    "\U0001d40f\U0001d41a\U0001d432",  # mathematical bold "Pay"
    'Jane\r\nAT+CMGS="+19005550199"',
    "xn--80ak6aa92e",
    "Jane 2",
    "Scam Likely",
    "WIRELESS CALLER",
    "{business_name}",
    "%s%n",
    "A" * 31,
    "J--ane",
    "-Jane",
    "e\u0301\u0301\u0301\u0301\u0301\u0301x",  # a pile of accents (zalgo)
    "Jane\ufe0f",  # variation selector
]

#: Real names, with accents, apostrophes, hyphens and other scripts, that must get through.
REAL_NAMES = [
    "O'Brien",
    "Seán O'Brien",
    "Seán O\u2019Brien",
    "José",
    "Nguyễn Thị Minh",
    "Mary-Jane Smith-Jones",
    "J.R. Smith",
    "Dr. Jane Doe",
    "Zoë Adams",
    "D'Angelo",
    "Иван Петров",
    "Σωκράτης",
    "李小龍",
    "山田 はなこ",
    "محمد علي",
    "JANE DOE",
]


def test_hostile_and_real_names_are_told_apart() -> None:
    assert [n for n in HOSTILE_NAMES if not name_problem(n)] == []
    assert {n: name_problem(n) for n in REAL_NAMES if name_problem(n)} == {}
    assert person_name("  Seán   O'Brien ") == "Seán O'Brien"
    assert name_problem("P\u0430ypal") == "mixed scripts (CYRILLIC, LATIN)"
    assert name_problem("Please call us back") == "4 words"


@settings(max_examples=400, deadline=None)
@given(
    raw=st.text(max_size=60),
    core=st.sampled_from(["evil.example", "bit.ly/x", "1-900-555-0199", "a@b.example", "\u202e"]),
    before=st.text(max_size=10),
)
def test_no_name_that_passes_the_filter_carries_a_link_a_number_or_a_control(
    raw: str, core: str, before: str
) -> None:
    name = person_name(raw)
    if name is not None:
        assert len(name) <= CALLER_NAME_MAX
        assert len(name.split(" ")) <= 3
        assert not any(ch.isdigit() or ch in "@/:" for ch in name)
        assert not any(unicodedata.category(ch)[0] in "CSNPZ" and ch not in " .'-’" for ch in name)
    # Whatever surrounds a link, a number, an address or a bidi override, it never passes.
    assert person_name(before + core + raw) is None


# -- the contacts file ----------------------------------------------------------------------


def test_csv_file_numbers_in_any_spelling_become_e164() -> None:
    book = load_book(DATA / "office.csv", "US")
    assert book.kind == "csv"
    assert dict(book.contacts) == {
        "+12025550131": Contact("Seán O'Brien", "Seán", "file"),
        "+12025550132": Contact("José Ruiz", "José", "file"),
        "+12025550133": Contact("Nguyễn Thị Minh", "Minh", "file"),
        "+12025550134": Contact("Mary-Jane Smith-Jones", "", "file"),
        "+12025550136": Contact("Acme Plumbing", "", "file"),
    }
    # the header, the comment and the blank line are not entries; the bad ones are said
    assert book.skipped == ("line 8: no valid phone number ('not a number')", "line 9: no name")
    assert book.duplicates == 1  # 202-555-0131 again: the first entry wins


def test_vcard_file_from_a_phone_book() -> None:
    book = load_book(DATA / "office.vcf", "US")
    assert book.kind == "vcard"
    assert book.get("+12025550131") == Contact("Seán O'Brien", "Seán", "file")
    assert book.get("+12025550137") == book.get("+12025550131")  # a second TEL of the card
    assert book.get("+12025550133") == Contact("Nguyễn Thị Minh", "Minh", "file")  # 2.1, QP
    assert book.get("+12025550132") == Contact("José Ruiz", "José", "file")  # 4.0 tel: URI
    assert book.get("+12025550136") == Contact("Acme Plumbing", "", "file")  # ORG only
    assert len(book) == 5
    assert book.skipped_count == 2  # a card without a number, one with a vanity number


def test_csv_variants_semicolons_bom_windows_1252() -> None:
    assert parse_book("2025550131;Ann Lee;Ann\n", "US").get("+12025550131") == Contact(
        "Ann Lee", "Ann", "file"
    )
    bom = "\ufeff+12025550131,Zoë\n".encode()
    path_text = bom.decode("utf-8-sig")
    assert parse_book(path_text, "US").get("+12025550131") == Contact("Zoë", "", "file")


def test_windows_1252_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("+12025550131,José Ruiz\r\n".encode("cp1252"))
    assert load_book(path, "US").get("+12025550131") == Contact("José Ruiz", "", "file")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"BEGIN:VCARD\nVERSION:3.0\nFN:Ann\nTEL:2025550131\n", "vCard"),  # never ends
        (b"number,name\nnot a number,Ann\n", "no usable contact"),
        (b'"+12025550131,"Ann\n\x00', "no usable contact"),
    ],
)
def test_a_file_that_cannot_be_used_is_an_error(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ContactsFileError, match=why):
        load_book(path, "US")
    with pytest.raises(ContactsFileError, match="cannot read"):
        load_book(tmp_path / "missing.csv", "US")


# -- Names: reload, changes, a bad file ----------------------------------------------------


def contacts_cfg(file: Path | str = "", **contacts: Any) -> Config:
    return Config(
        textback={
            "business_name": BUSINESS,
            "template": TEMPLATE,
            "caller_name_fallback": "there",
            "pumping_max_per_range": 0,
            "max_per_hour": 0,
            "max_per_day": 0,
            "max_per_month": 0,
        },
        hours={d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        contacts={"file": str(file), **contacts},
    )


def named_call(caller: str, name: str, at: float = T0) -> FinishedCall:
    return dataclasses.replace(call(caller, at=at), caller_name=name)


async def test_file_is_reread_when_it_changes_and_a_bad_one_keeps_the_old_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("+12025550131,Ann Lee,Ann\n")
    clock = ManualClock(T0)
    names = Names(contacts_cfg(path), clock)
    assert await names.reload()
    assert await names.lookup(call("2025550131")) == Contact("Ann Lee", "Ann", "file")

    path.write_text("+12025550131,Ann Lee-Park,Ann\n+12025550132,Bo Chen\n")
    # looked at again only after LOOKUP_CHECK_INTERVAL: no stat storm under a burst
    assert await names.lookup(call("+12025550131")) == Contact("Ann Lee", "Ann", "file")
    clock.advance(LOOKUP_CHECK_INTERVAL)
    assert await names.lookup(call("+12025550131")) == Contact("Ann Lee-Park", "Ann", "file")
    assert (await names.lookup(call("+12025550132"))) == Contact("Bo Chen", "", "file")

    # a broken file: said once, clearly; the list read before stays in use
    path.write_bytes(b"BEGIN:VCARD\nFN:x\n")
    with caplog.at_level(logging.ERROR, logger="daemon.contacts"):
        assert not await names.refresh()
        assert not await names.refresh()  # the same broken file: not said again
    errors = [r.getMessage() for r in caplog.records if "contacts_file_error" in r.getMessage()]
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert "keeping" in errors[0]
    assert len(names.book) == 2
    assert (await names.lookup(call("+12025550132"))) == Contact("Bo Chen", "", "file")

    # the file deleted: the old list still; a SIGHUP (reload) says it again
    path.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="daemon.contacts"):
        assert not await names.reload()
    assert any("cannot read" in r.getMessage() for r in caplog.records)
    assert len(names.book) == 2

    # fixed: read again by the watcher's next look
    path.write_text("+12025550133,Cy Diaz\n")
    assert await names.refresh()
    assert len(names.book) == 1
    assert await names.lookup(call("+12025550132")) is None


async def test_watcher_sleeps_on_the_clock_between_looks(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "contacts.csv"
    path.write_text("+12025550131,Ann Lee\n")
    clock = ManualClock(T0)
    names = Names(contacts_cfg(path), clock)
    await names.reload()
    task = asyncio.create_task(names.run())
    try:
        path.write_text("+12025550131,Ann Lee\n+12025550132,Bo Chen\n")
        await asyncio.sleep(0)
        assert len(names.book) == 1  # no busy loop: nothing until the clock moves
        clock.advance(WATCH_INTERVAL)
        for _ in range(200):
            if len(names.book) == 2:
                break
            await asyncio.sleep(0.005)  # the re-read runs in a worker thread
        assert len(names.book) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_sighup_reconfigure_to_another_file_and_to_none(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.vcf"
    first.write_text("+12025550131,Ann Lee\n")
    shutil.copy(DATA / "office.vcf", second)
    names = Names(contacts_cfg(first), ManualClock(T0))
    await names.reload()
    names.reconfigure(contacts_cfg(second))
    assert await names.reload()
    assert names.book.kind == "vcard"
    assert (await names.lookup(call("+12025550131"))) == Contact("Seán O'Brien", "Seán", "file")
    names.reconfigure(contacts_cfg(""))
    assert await names.reload()
    assert await names.lookup(call("+12025550131")) is None


async def test_withheld_and_invalid_callers_are_never_looked_up(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("+12025550131,Ann Lee\n")
    names = Names(contacts_cfg(path), ManualClock(T0))
    await names.reload()
    assert await names.lookup(dataclasses.replace(call("+12025550131"), withheld=True)) is None
    assert await names.lookup(call("anonymous")) is None


# -- through the pipeline: what a text says ------------------------------------------------


async def _texts(events: list[FinishedCall], cfg: Config) -> dict[str, str | None]:
    reports = await dry_run(events, cfg)
    assert all(r.message == "sent" for r in reports.values()), reports
    return {r.linkedid: r.text for r in reports.values()}


def _calls(names: list[str]) -> list[FinishedCall]:
    # one caller each (no cooldown between them), a minute apart
    return [
        named_call(f"+1202555{101 + i:04d}", name, at=T0 + 60 * i) for i, name in enumerate(names)
    ]


@pytest.mark.parametrize("use_pbx_names", [True, False])
async def test_hostile_network_names_never_reach_a_sent_text(use_pbx_names: bool) -> None:
    calls = _calls(HOSTILE_NAMES)
    texts = await _texts(calls, contacts_cfg(use_pbx_names=use_pbx_names))
    assert len(texts) == len(HOSTILE_NAMES)
    assert set(texts.values()) == {FALLBACK_TEXT}


@pytest.mark.parametrize(
    ("template", "fold"),
    [
        (TEMPLATE, True),  # GSM-7: accents a GSM-7 text lacks are folded (one part, not two)
        (TEMPLATE + " \u260e", False),  # UCS-2 anyway: the name exactly as written
    ],
)
async def test_real_network_names_appear_with_use_pbx_names(template: str, fold: bool) -> None:
    cfg = contacts_cfg(use_pbx_names=True)
    cfg = cfg.model_copy(
        update={"textback": cfg.textback.model_copy(update={"template": template})}
    )
    calls = _calls(REAL_NAMES)
    texts = await _texts(calls, cfg)
    for c in calls:
        name = person_name(c.caller_name)
        assert name is not None
        folded = gsm7_fold(name)
        shown = folded if fold and not is_gsm7(name) and is_gsm7(folded) else name
        assert texts[c.linkedid] == template.format(caller_name=shown, business_name=BUSINESS)
    # without use_pbx_names, the same real names are not used: the caller's own claim
    plain = await _texts(calls, contacts_cfg())
    assert set(plain.values()) == {FALLBACK_TEXT}


async def test_contacts_file_names_callers_whatever_their_network_says() -> None:
    cfg = contacts_cfg(DATA / "office.csv")
    cfg = cfg.model_copy(
        update={
            "textback": cfg.textback.model_copy(
                update={"template": TEMPLATE + " \u260e {first_name}!"}
            )
        }
    )
    calls = [
        named_call("+12025550131", "Pay at evil.example", T0),
        named_call("2025550132", "\u202eelpmaxe.live", T0 + 60),
        named_call("(202) 555-0133", "Call 1-900-555-0199", T0 + 120),
        named_call("+12025550134", "", T0 + 180),
        named_call("+12025550138", "Seán O'Brien", T0 + 240),  # not in the file
    ]
    texts = list((await _texts(calls, cfg)).values())
    tail = f"sorry we missed your call to {BUSINESS}. \u260e"
    assert texts == [
        f"Hi Seán O'Brien, {tail} Seán!",
        f"Hi José Ruiz, {tail} José!",
        f"Hi Nguyễn Thị Minh, {tail} Minh!",
        f"Hi Mary-Jane Smith-Jones, {tail} there!",  # no first name in the file
        f"Hi there, {tail} there!",
    ]


async def test_contacts_from_a_vcard_in_a_gsm7_text() -> None:
    cfg = contacts_cfg(DATA / "office.vcf")
    texts = await _texts([named_call("+12025550133", "evil.example")], cfg)
    assert list(texts.values()) == [f"Hi Nguyen Thi Minh, sorry we missed your call to {BUSINESS}."]


# -- the Asterisk database, over AMI (replay server, loopback TCP) -------------------------


def test_astdb_keys_are_digits_only() -> None:
    assert astdb_keys("+12025550131", "2025550131") == ["2025550131", "+12025550131"]
    assert astdb_keys("+12025550131", "+1 202 555 0131") == ["+12025550131", "2025550131"]
    assert astdb_keys("+12025550131", "12025550131\r\nAction: Logoff") == [
        "+12025550131",
        "2025550131",
    ]


async def test_astdb_names_over_dbget_are_cached_for_a_bounded_time() -> None:
    server = ReplayServer(b"", fully_booted=False)
    server.astdb[("cidname", "2025550131")] = "Ann Lee"
    server.astdb[("cidname", "+12025550132")] = "Bo Chen"
    async with rig(server) as r:
        from tests.ami_support import until

        await until(lambda: r.client.connected, what="login")
        clock = ManualClock(T0)
        names = Names(contacts_cfg(astdb_family="cidname"), clock, astdb=r.client.db_get)
        assert await names.lookup(call("2025550131")) == Contact("Ann Lee", "", "astdb")
        assert await names.lookup(call("2025550132")) == Contact("Bo Chen", "", "astdb")
        assert await names.lookup(call("2025550139")) is None  # not in the database
        asked = server.stats.actions.count("DBGet")
        # as the PBX showed it, then E.164 (the national number is the raw one here)
        assert asked == 1 + 2 + 2
        # cached: no DBGet while fresh
        assert await names.lookup(call("2025550131")) == Contact("Ann Lee", "", "astdb")
        assert await names.lookup(call("2025550139")) is None
        assert server.stats.actions.count("DBGet") == asked
        # an edited entry is seen once the cache time has passed
        server.astdb[("cidname", "2025550131")] = "Ann Lee-Park"
        clock.advance(ASTDB_MISS_TTL)
        assert await names.lookup(call("2025550131")) == Contact("Ann Lee", "", "astdb")
        clock.advance(ASTDB_TTL - ASTDB_MISS_TTL)
        assert await names.lookup(call("2025550131")) == Contact("Ann Lee-Park", "", "astdb")


async def test_astdb_refused_or_down_costs_the_name_not_the_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ReplayServer(b"", fully_booted=False, refuse=["dbget"])
    server.astdb[("cidname", "2025550131")] = "Ann Lee"
    async with rig(server) as r:
        from tests.ami_support import until

        await until(lambda: r.client.connected, what="login")
        names = Names(contacts_cfg(astdb_family="cidname"), ManualClock(T0), astdb=r.client.db_get)
        with caplog.at_level(logging.WARNING, logger="daemon.contacts"):
            assert await names.lookup(call("2025550131")) is None
            assert await names.lookup(call("2025550131")) is None  # not cached: asked again
        warned = [m for m in caplog.messages if "astdb_lookup_failed" in m]
        assert len(warned) == 1  # the first failure loud, the repeats quiet
        assert "Permission denied" in warned[0]
        assert server.stats.actions.count("DBGet") == 2
        await r.client.close()
        assert await names.lookup(call("2025550131")) is None  # AMI gone: no wait, no name


async def test_pipeline_names_a_caller_from_the_asterisk_database(tmp_path: Path) -> None:
    server = ReplayServer(b"", fully_booted=False)
    server.astdb[("cidname", "+12025550131")] = "Nguyễn Thị Minh"
    store = await Store.open(tmp_path / "tb.db")
    try:
        async with rig(server) as r:
            from tests.ami_support import until

            await until(lambda: r.client.connected, what="login")
            clock = ManualClock(T0)
            cfg = contacts_cfg(astdb_family="cidname")
            sender = FakeSender(clock=clock)
            outbox = Outbox(cfg, store, clock, sender)
            names = Names(cfg, clock, astdb=r.client.db_get)
            pipeline = Pipeline(cfg, store, outbox, clock, names=names)
            # a burst takes the batch path (one transaction), lookups first
            await pipeline.handle_many(
                [
                    named_call("+12025550131", "Pay at evil.example", T0),
                    named_call("+12025550132", "bit.ly/x", T0),
                ]
            )
            clock.advance(3600)
            await pipeline.tick()
    finally:
        await store.close()
    assert sorted(sender.sent) == [
        ("+12025550131", f"Hi Nguyen Thi Minh, sorry we missed your call to {BUSINESS}."),
        ("+12025550132", FALLBACK_TEXT),
    ]


# -- textback check ---------------------------------------------------------------------------


def test_check_warns_of_a_name_field_without_contacts_and_shows_a_contact_sample(
    tmp_path: Path,
) -> None:
    cfg = contacts_cfg()
    found = [(p.key, p.message) for p in validate(cfg)]
    assert any(
        k == "textback.template" and "uses {caller_name}, but no contacts are configured" in m
        for k, m in found
    )
    first = Config(textback={"template": "Hi {first_name}!", "caller_name_fallback": "there"})
    assert any("uses {first_name}, but no contacts" in p.message for p in validate(first))
    # with a file, no such warning; the sample text names a contact, and an unknown caller
    with_file = contacts_cfg(DATA / "office.csv")
    assert not any("no contacts are configured" in p.message for p in validate(with_file))
    out = "\n".join(report(tmp_path / "t.toml", with_file, []))
    assert f"Hi Jane Doe, sorry we missed your call to {BUSINESS}." in out
    assert f"caller not in the contacts: {FALLBACK_TEXT}" in out
    assert "(CSV): 5 numbers, 2 skipped, 1 listed twice" in out
    assert "network names: never used" in out
    [skipped] = contacts_problems(with_file)
    assert skipped.key == "contacts.file"
    assert "line 8: no valid phone number" in skipped.message


def test_check_says_a_missing_contacts_file_and_astdb_without_ami(tmp_path: Path) -> None:
    cfg = Config(
        ami={"enabled": False},
        contacts={"file": str(tmp_path / "nope.csv"), "astdb_family": "cid name"},
    )
    found = {(p.key, p.severity.value, p.message.split(":")[0]) for p in validate(cfg)}
    assert ("contacts.file", "warning", f"{str(tmp_path / 'nope.csv')!r} is not a file") in found
    assert ("contacts.astdb_family", "warning", "set, but [ami] enabled = false") in found
    assert (
        "contacts.astdb_family",
        "error",
        "'cid name' is not an Asterisk database family name",
    ) in found


# -- the service: SIGHUP re-reads the file, the pipeline it assembles uses it ---------------


async def test_service_sighup_rereads_the_contacts_file(tmp_path: Path) -> None:
    import asyncio

    from daemon.app.service import Service
    from daemon.config import load_config
    from daemon.sdnotify import Notifier

    contacts = tmp_path / "contacts.csv"
    contacts.write_text("+12025550131,Ann Lee,Ann\n")
    path = tmp_path / "textback.toml"
    path.write_text(
        f"""
[ami]
enabled = false
[textback]
delay = "0s"
pumping_max_per_range = 0
caller_name_fallback = "there"
template = "Hi {{first_name}}!"
[hours]
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]
[contacts]
file = "{contacts}"
[database]
path = "{tmp_path / "t.db"}"
"""
    )
    svc = Service(load_config(path), path, clock=ManualClock(T0), notifier=Notifier(""))
    svc.store = await Store.open(svc.cfg.database.path, tz=svc.cfg.hours.timezone)
    reloads = asyncio.create_task(svc._reload_loop())
    try:
        svc._assemble()
        assert svc.names is not None
        assert svc.pipeline is not None
        await svc.names.reload()  # what _serve does at start
        first = named_call("+12025550131", "evil.example", T0)
        await svc.pipeline.handle(first)
        # the file changes; SIGHUP (request_reload) reads it at once: the clock has not
        # moved, so no lookup would have looked at the file again yet
        contacts.write_text("+12025550131,Ann Lee,Ann\n+12025550132,Bo Chen,Bo\n")
        svc.request_reload()
        for _ in range(400):
            if len(svc.names.book) == 2:
                break
            await asyncio.sleep(0.005)  # the file is read in a worker thread
        second = named_call("+12025550132", "evil.example", T0)
        await svc.pipeline.handle(second)
        texts = [(await svc.pipeline.report(c.linkedid)) for c in (first, second)]
        assert [t.text if t else None for t in texts] == ["Hi Ann!", "Hi Bo!"]
    finally:
        reloads.cancel()
        await asyncio.gather(reloads, return_exceptions=True)
        await svc.store.close()
