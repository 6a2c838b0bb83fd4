"""A site behind its own Mosquitto, bridged to the central one (issue 14), with real
processes: the central broker with a login per site and sender and the ACL of README
"Several offices"; a site-side broker whose bridge settings are the lines of the shipped
config/mosquitto-bridge.conf (only the central broker's address, this broker's port and
the bridge's login, commented there, filled in); two sender daemons with two simulator
modems each on the central broker; site "north" behind the bridge and site "south"
directly on the central broker, both replaying the recorded burst. The simulators'
records are the judge of what reached the network.
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.intake.replayserver import ReplayServer
from gsm import simulator
from tests.daemonproc import Daemon, running_daemon
from tests.mqtt_support import Mosquitto, Recorder, free_port
from tests.test_e2e import (
    BURST,
    BUSINESS,
    TERMINAL,
    body_of,
    db_rows,
    expectation,
    messages,
    ready,
    stop,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "mosquitto-bridge.conf"
README = ROOT / "README.md"
#: Every login's password at the central broker (the logins are the sites' and senders'
#: names, as the README's ACL wants).
PASSWORD = "bridge-test-secret"
#: The site and group the shipped file is written for.
SITE = "north"
GROUP = "dental"
#: Each site's business name: the same burst at two sites gives each caller two texts,
#: told apart by it.
BUSINESS_OF = {"north": "North Dental", "south": "South Dental"}
PROFILES = ("sim800", "huawei", "quectel", "wavecom")


def bridge_settings(listen_port: int, central_port: int, password: str = "") -> list[str]:
    """The shipped file's settings (comments dropped), with this broker's port and the
    central broker's address filled in; with a password, its login lines too."""
    out = []
    filled = collections.Counter[str]()
    for raw in SHIPPED.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if password and line == f"#remote_username {SITE}":
            line = line[1:]
            filled["login"] += 1
        elif password and line.startswith("#remote_password "):
            line = f"remote_password {password}"
            filled["login"] += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("listener "):
            assert line == "listener 1883 127.0.0.1", line
            line = f"listener {listen_port} 127.0.0.1"
            filled["listener"] += 1
        elif line.startswith("address "):
            assert line == "address bank.example.net:1883", line
            line = f"address 127.0.0.1:{central_port}"
            filled["address"] += 1
        out.append(line)
    assert filled == collections.Counter(listener=1, address=1, login=2 if password else 0)
    return out


def readme_acl(senders: tuple[str, ...], reader: str) -> str:
    """The central broker's ACL as README "Several offices" shows it (the one source), with
    its sender block repeated for each sender, and `reader` allowed to read textback/#."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index("The broker ACL keeps each site") :].split("```\n", 2)[1]
    sites, _, sender = block.partition("\nuser bank1\n")
    assert "pattern write textback/jobs/%u" in sites
    assert sender
    each = "".join(f"\nuser {s}\n" + sender.replace("bank1", s) for s in senders)
    return sites + each + f"\nuser {reader}\ntopic read textback/#\n"


class SiteBroker(Mosquitto):
    """A site's own broker: the shipped bridge file, pointed at `central`."""

    def __init__(self, workdir: Path, central: Mosquitto, password: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        lines = [
            # as root mosquitto would become the `mosquitto` user (see tests/mqtt_support)
            f"user {getpass.getuser()}",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type all",
            *bridge_settings(self.port, central.port, password),
        ]
        self.conf.write_text("\n".join(lines) + "\n")


@contextlib.asynccontextmanager
async def site_broker(
    workdir: Path, central: Mosquitto, password: str = ""
) -> AsyncIterator[SiteBroker]:
    """A started site broker, stopped afterwards whatever happened."""
    b = SiteBroker(workdir, central, password)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def login(name: str, password: str) -> str:
    """[mqtt] username and password lines (none without a password)."""
    return f'username = "{name}"\npassword = "{password}"\n' if password else ""


def site_config(
    workdir: Path, site: str, ami_port: int, url: str, password: str = ""
) -> tuple[Path, Path]:
    """A site's config (via the broker) and its database."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "site.db"
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "{site}"\ndiscovery = false\n{login(site, password)}'
        f'[sending]\nvia = "broker"\n[jobs]\ngroup = "{GROUP}"\n'
    )
    cfg = write_config(workdir / "site.toml", port=ami_port, device="unused", db=db, extra=extra)
    text = cfg.read_text(encoding="utf-8").replace(BUSINESS, BUSINESS_OF[site])
    cfg.write_text(text, encoding="utf-8")
    return cfg, db


def sender_config(
    workdir: Path, name: str, devices: list[str], url: str, password: str
) -> tuple[Path, Path]:
    """A sender's config (no PBX, jobs served, two [[modems]]) and its database."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "sender.db"
    extra = (
        f'[mqtt]\nurl = "{url}"\nsite = "{name}"\ndiscovery = false\n{login(name, password)}'
        f'[jobs]\nserve = true\ngroup = "{GROUP}"\n'
    ) + "".join(
        f'\n[[modems]]\nname = "m{i}"\ndevice = {json.dumps(d)}\n' for i, d in enumerate(devices)
    )
    cfg = write_config(
        workdir / "sender.toml", port=free_port(), device="unused", db=db, extra=extra
    )
    text = re.sub(r'(?m)^device = "unused"\n', "", cfg.read_text(encoding="utf-8"))
    text = re.sub(r"(?m)^\[ami\]\n", "[ami]\nenabled = false\n", text, count=1)
    cfg.write_text(text, encoding="utf-8")
    return cfg, db


def opted_out(db: Path) -> set[str]:
    """The numbers on a daemon's do-not-text list."""
    return {r["number"] for r in db_rows(db, "SELECT number FROM optouts")}


async def test_two_sites_one_behind_a_bridge_two_senders(tmp_path: Path) -> None:
    exp = expectation(BURST)
    assert len(exp.sure) == 23
    assert not exp.maybe
    stopper, late_stopper = sorted(exp.sure)[:2]
    async with contextlib.AsyncExitStack() as stack:
        # the central broker as the README has it: a login per site and sender, its ACL;
        # the bridge logs in as the site "north"
        (tmp_path / "central").mkdir()
        logins = ("north", "south", "bank1", "bank2", "watcher")
        central = Mosquitto(tmp_path / "central", users=dict.fromkeys(logins, PASSWORD))
        acl = tmp_path / "central" / "acl"
        acl.write_text(readme_acl(("bank1", "bank2"), "watcher"), encoding="utf-8")
        with central.conf.open("a", encoding="utf-8") as f:
            f.write(f"acl_file {acl}\n")
        central.start()
        stack.callback(central.stop)
        heard = await stack.enter_async_context(
            Recorder(central, ("textback/#",), username="watcher", password=PASSWORD)
        )
        local = await stack.enter_async_context(
            site_broker(tmp_path / "north-broker", central, PASSWORD)
        )
        # the bridge's own notification, retained at the central broker: it is up
        await heard.wait(
            lambda: [h.payload for h in heard.on(f"textback/{SITE}/bridge")][-1:] == [b"1"],
            what="the bridge up",
        )
        at_site = await stack.enter_async_context(Recorder(local, ("textback/#",)))

        sims = [
            await stack.enter_async_context(
                simulator.running(p, simulator.Faults(accept_delay=0.02))
            )
            for p in PROFILES
        ]
        senders: dict[str, Daemon] = {}
        sender_dbs: dict[str, Path] = {}
        for k, name in enumerate(("bank1", "bank2")):
            devices = [s.device for s in sims[2 * k : 2 * k + 2]]
            cfg, sender_dbs[name] = sender_config(
                tmp_path / name, name, devices, central.url, PASSWORD
            )
            d = await stack.enter_async_context(running_daemon(cfg, tmp_path / name))
            senders[name] = d
        for d in senders.values():
            await ready(d)
            await d.wait_log("event=jobs_link_up")
            await d.wait_log("event=modem_ready", count=2)

        # -- a STOP at bank1's first modem, before the sites start: the list change reaches
        # the site's broker over the bridge and stays there, retained
        sims[0].inject_text(stopper, "STOP")
        await senders["bank1"].wait_log("event=group_optout_published")
        optout_prefix = f"textback/group/{GROUP}/optout/"
        await at_site.wait(lambda: at_site.starting(optout_prefix), what="the STOP over the bridge")

        # -- two sites replay the burst: north through its own broker, south directly
        sites: dict[str, Daemon] = {}
        site_dbs: dict[str, Path] = {}
        pbx: dict[str, ReplayServer] = {}
        # north on its own broker (no login there), south on the central one
        for site, url, password in (("north", local.url, ""), ("south", central.url, PASSWORD)):
            server = ReplayServer(body_of(BURST), username="e2e", secret="e2e-secret")
            # the PBX holds its calls until the site has the group's list: a starting
            # site applies the retained list as it arrives, and a call decided before
            # would be texted (the STOP's number calls early in the burst)
            server.flowing.clear()
            await server.start()
            stack.push_async_callback(server.close)
            cfg, site_dbs[site] = site_config(tmp_path / site, site, server.port, url, password)
            sites[site] = await stack.enter_async_context(running_daemon(cfg, tmp_path / site))
            pbx[site] = server
        for site, d in sites.items():
            await ready(d)
            await d.wait_log("event=group_optout_applied")
            pbx[site].flowing.set()
        for site, d in sites.items():
            db = site_dbs[site]
            await wait_until(
                d,
                lambda db=db: (
                    len(messages(db)) == 22 and all(m["state"] in TERMINAL for m in messages(db))
                ),
            )
        # north's jobs and results went through the central broker, so through the bridge
        assert len({h.json()["job_id"] for h in heard.on("textback/jobs/north")}) == 22
        assert len(heard.on("textback/north/results")) >= 22

        # -- a STOP at bank2 while north runs: applied behind the bridge at once
        sims[2].inject_text(late_stopper, "STOP")
        await senders["bank2"].wait_log("event=group_optout_published")
        await sites["north"].wait_log("event=group_optout_applied", count=2)
        await sites["south"].wait_log("event=group_optout_applied", count=2)

        for d in (*sites.values(), *senders.values()):
            assert await stop(d) == 0

    for site, db in site_dbs.items():
        rows = messages(db)
        assert collections.Counter(r["state"] for r in rows) == {"sent": 22}, site
        assert {r["sender"].split("/")[0] for r in rows} <= {"bank1", "bank2"}
        optout = db_rows(
            db,
            "SELECT d.action, d.reason FROM decisions d JOIN calls c ON c.id = d.call_id"
            " WHERE c.destination = ?",
            (stopper,),
        )
        assert [(r["action"], r["reason"]) for r in optout][:1] == [("suppress", "opted_out")]
        assert opted_out(db) == {stopper, late_stopper}, site
    for db in sender_dbs.values():
        assert opted_out(db) == {stopper, late_stopper}
    # the shared subscription gave both senders work
    taken = {n: len(db_rows(db, "SELECT job_id FROM jobs")) for n, db in sender_dbs.items()}
    assert sum(taken.values()) == 44
    assert all(taken.values()), taken

    # every expected text reached the network once: each caller one text from each site
    # (the first stopper none), and each stopper its one opt-out confirmation
    reached = collections.Counter((p.number, p.text) for sim in sims for p in sim.parts)
    missed = collections.Counter(
        (n, text.replace(BUSINESS, BUSINESS_OF[site]))
        for site in sites
        for n, text in exp.sure.items()
        if n != stopper
    )
    assert not missed - reached, "expected texts not sent"
    assert all(reached[k] == 1 for k in missed), "a text sent twice"
    confirmations = reached - missed
    assert sorted(n for n, _ in confirmations.elements()) == [stopper, late_stopper]
