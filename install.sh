#!/usr/bin/env bash
# install.sh: install textback on Debian 12, Ubuntu 24.04 or Raspberry Pi OS, as root, from
# a checkout or a release tarball. Run it again at any time: it changes only what differs
# (an upgrade is the same command from the newer source) and says so.
#
#   ./install.sh                 install or upgrade, then run `textback check --live`
#   ./install.sh --dry-run       print what it would do; change nothing
#   ./install.sh --root DIR      write the files into DIR (image builders, tests, make deb);
#                                nothing is run against this machine (no apt-get, useradd,
#                                systemctl, udevadm): what would be run is printed
#   ./install.sh --device PATH   the modem for the udev rule (default: the one detected)
#   ./install.sh --no-check      skip the closing `textback check --live`
#
# What it does (each step prints "unchanged" or what it changed):
#   1. python3 (3.11+) and python3-venv, from apt when missing
#   2. /opt/textback: a venv with the pinned, hash-checked requirements.lock
#      (pip install --require-hashes), then textback itself (--no-deps)
#   3. the system user textback, in dialout (/etc/sysusers.d/textback.conf)
#   4. /etc/textback/textback.toml from config/textback.toml, only if absent (0640 root:textback)
#   5. /etc/systemd/system/textback.service, enabled (not started: edit the config first)
#   6. /etc/udev/rules.d/70-textback-modem.rules for the modem found: /dev/textback-modem,
#      and ModemManager told to leave it alone (ID_MM_DEVICE_IGNORE)
#   7. textback check --live, then the next step
set -euo pipefail

PREFIX=/opt/textback
ROOT=""
DRY=0
CHECK=1
DEVICE=""
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift 2 ;;
    --root=*) ROOT="$(realpath -m "${1#--root=}")"; shift ;;
    --dry-run) DRY=1; shift ;;
    --device) DEVICE="${2:?--device needs a path}"; shift 2 ;;
    --device=*) DEVICE="${1#--device=}"; shift ;;
    --no-check) CHECK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

CHANGED=0
say() { printf '%s\n' "$*"; }
changed() { CHANGED=$((CHANGED + 1)); say "  $*"; }
unchanged() { say "  unchanged: $*"; }
# A command against this machine: printed instead in --root mode and with --dry-run.
system() {
  if [ -n "$ROOT" ]; then say "  not in --root mode, would run: $*"; return 0; fi
  if [ "$DRY" = 1 ]; then say "  would run: $*"; return 0; fi
  "$@"
}
# Install file $1 as $2 (under ROOT) with mode $3; "changed" only when the content or mode differs.
put() {
  local src="$1" dest="$ROOT$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    unchanged "$2"; return 1
  fi
  if [ "$DRY" = 1 ]; then changed "would install $2 (mode $mode)"; return 0; fi
  install -D -m "$mode" "$src" "$dest"
  changed "installed $2"
}

if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run it as root (sudo ./install.sh), or with --dry-run or --root DIR" >&2
  exit 1
fi
for f in pyproject.toml requirements.lock config/textback.toml systemd/textback.service \
  systemd/textback.sysusers; do
  [ -f "$SRC/$f" ] || { echo "install.sh: $SRC/$f is missing: run it from a checkout or release tarball" >&2; exit 1; }
done
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -1)"
say "textback $VERSION from $SRC${ROOT:+ into $ROOT}$([ "$DRY" = 1 ] && echo ' (dry run: nothing is changed)')"

# --- 1. Python ----------------------------------------------------------------------------
say "1. Python"
# shellcheck disable=SC1091  # the machine's own file
os_id="$( (. /etc/os-release 2>/dev/null && echo "${ID:-}:${ID_LIKE:-}:${PRETTY_NAME:-}") || true)"
case "$os_id" in
  debian:*|ubuntu:*|raspbian:*|*:*debian*:*) ;;
  *) say "  note: ${os_id##*:} is not Debian, Ubuntu or Raspberry Pi OS; going on" ;;
esac
PY=""
# the system's python first: a venv keeps the path of the interpreter it was made with
for c in /usr/bin/python3 python3; do
  if command -v "$c" >/dev/null && "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY="$(command -v "$c")"; break
  fi
done
if [ -z "$PY" ]; then
  system env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
  PY="$(command -v python3 || true)"
  if [ -z "$ROOT" ] && [ "$DRY" = 0 ]; then changed "installed python3 python3-venv"; fi
fi
if [ -n "$PY" ]; then unchanged "$("$PY" --version) at $PY"; else PY=python3; fi

# --- 2. the program -------------------------------------------------------------------------
say "2. The program in $PREFIX"
VENV="$ROOT$PREFIX"
tree_hash() {
  (cd "$SRC" && find daemon gsm -type f \( -name '*.py' -o -name '*.typed' -o -path '*/demo_data/*' \) \
    -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; sha256sum pyproject.toml) \
    | sha256sum | cut -d' ' -f1
}
LOCK_HASH="$(sha256sum "$SRC/requirements.lock" | cut -d' ' -f1)"
SRC_HASH="$(tree_hash)"
STAMP="$VENV/.textback-install"
old_lock="" old_src=""
if [ -f "$STAMP" ]; then
  old_lock="$(sed -n 's/^lock=//p' "$STAMP")"
  old_src="$(sed -n 's/^source=//p' "$STAMP")"
fi
if [ -x "$VENV/bin/python" ] && [ "$old_lock" = "$LOCK_HASH" ] && [ "$old_src" = "$SRC_HASH" ]; then
  unchanged "$PREFIX (textback $VERSION, requirements.lock as installed)"
elif [ "$DRY" = 1 ]; then
  [ -x "$VENV/bin/python" ] || changed "would create the venv $PREFIX"
  [ "$old_lock" = "$LOCK_HASH" ] || changed "would install requirements.lock (pip --require-hashes)"
  [ "$old_src" = "$SRC_HASH" ] || changed "would install textback $VERSION (pip --no-deps)"
else
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    changed "created the venv $PREFIX"
  fi
  if [ "$old_lock" != "$LOCK_HASH" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
      -r "$SRC/requirements.lock"
    changed "installed requirements.lock (every file checked against its sha256)"
  fi
  if [ "$old_src" != "$SRC_HASH" ]; then
    build="$(mktemp -d)"
    # a copy, so a read-only checkout or tarball gets no build/ or egg-info
    (cd "$SRC" && tar --exclude=__pycache__ -cf - pyproject.toml README.md daemon gsm) | tar -xf - -C "$build"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      --no-build-isolation --no-index --force-reinstall "$build"
    rm -rf "$build"
    changed "installed textback $VERSION"
  fi
  if [ -n "$ROOT" ]; then
    # the venv will run as $PREFIX, not $ROOT$PREFIX: scripts' #! lines and activate say so
    grep -rlF "$VENV" "$VENV/bin" 2>/dev/null | while read -r f; do
      sed -i "s|$VENV|$PREFIX|g" "$f"
    done
  fi
  printf 'version=%s\nlock=%s\nsource=%s\n' "$VERSION" "$LOCK_HASH" "$SRC_HASH" > "$STAMP"
fi

# --- 3. the user ----------------------------------------------------------------------------
say "3. The user textback (group dialout, for the modem)"
if put "$SRC/systemd/textback.sysusers" /etc/sysusers.d/textback.conf 0644; then :; fi
HAVE_USER=0
if [ -z "$ROOT" ] && id textback >/dev/null 2>&1; then HAVE_USER=1; fi
if [ "$HAVE_USER" = 1 ] && id -nG textback | tr ' ' '\n' | grep -qx dialout; then
  unchanged "user textback exists, in dialout"
elif command -v systemd-sysusers >/dev/null; then
  system systemd-sysusers /etc/sysusers.d/textback.conf
  [ -n "$ROOT" ] || [ "$DRY" = 1 ] || changed "created user textback (systemd-sysusers), in dialout"
else
  if [ "$HAVE_USER" = 0 ]; then
    system useradd --system --home-dir /var/lib/textback --shell /usr/sbin/nologin \
      --user-group --groups dialout textback
  else
    system usermod -aG dialout textback
  fi
  [ -n "$ROOT" ] || [ "$DRY" = 1 ] || changed "user textback in dialout (useradd/usermod)"
fi

# --- 4. the config --------------------------------------------------------------------------
say "4. The config /etc/textback/textback.toml"
CONF=/etc/textback/textback.toml
if [ -e "$ROOT$CONF" ]; then
  unchanged "$CONF (kept as it is; new keys take their defaults)"
else
  tmpconf="$(mktemp)"
  cp "$SRC/config/textback.toml" "$tmpconf"
  if [ -n "$DEVICE" ] || [ -e /dev/textback-modem ]; then
    sed -i 's|^device = "/dev/ttyUSB0"|device = "/dev/textback-modem"|' "$tmpconf"
  fi
  if [ "$DRY" = 1 ]; then
    changed "would write $CONF (mode 0640 root:textback) from config/textback.toml"
  else
    install -d -m 0755 "$ROOT/etc/textback"
    install -m 0640 "$tmpconf" "$ROOT$CONF"
    if [ -z "$ROOT" ]; then chown root:textback "$CONF"; else say "  not in --root mode, would run: chown root:textback $CONF"; fi
    changed "wrote $CONF (0640 root:textback): set [ami] secret, [textback] business_name, [hours]"
  fi
  rm -f "$tmpconf"
fi

# --- 5. the unit ----------------------------------------------------------------------------
say "5. The unit textback.service"
if put "$SRC/systemd/textback.service" /etc/systemd/system/textback.service 0644; then
  system systemctl daemon-reload
fi
WANTS=/etc/systemd/system/multi-user.target.wants/textback.service
if [ -n "$ROOT" ]; then
  # what systemctl enable does, offline: the [Install] WantedBy= link
  if [ -L "$ROOT$WANTS" ]; then
    unchanged "textback.service enabled ($WANTS)"
  elif [ "$DRY" = 1 ]; then
    changed "would link $WANTS (enabled)"
  else
    install -d "$(dirname "$ROOT$WANTS")"
    ln -s /etc/systemd/system/textback.service "$ROOT$WANTS"
    changed "enabled textback.service ($WANTS)"
  fi
elif [ -d /run/systemd/system ] && systemctl -q is-enabled textback 2>/dev/null; then
  unchanged "textback.service enabled"
elif [ -d /run/systemd/system ]; then
  system systemctl enable textback.service
  [ -n "$ROOT" ] || [ "$DRY" = 1 ] || changed "enabled textback.service (starts at boot; not started now)"
else
  say "  note: systemd is not running here: enable it later with systemctl enable --now textback"
fi

# --- 6. the modem's udev rule ---------------------------------------------------------------
say "6. The modem: /dev/textback-modem (udev rule)"
RULE=/etc/udev/rules.d/70-textback-modem.rules
if [ -z "$DEVICE" ]; then
  # the first by-id port that answers AT (a stick has several; one speaks AT)
  for d in /dev/serial/by-id/*; do
    [ -e "$d" ] || continue
    if [ -x "$VENV/bin/python" ] && timeout 5 "$VENV/bin/python" - "$d" <<'EOF' 2>/dev/null; then DEVICE="$d"; break; fi
import sys, serial
with serial.Serial(sys.argv[1], 115200, timeout=1.5, exclusive=True) as s:
    s.write(b"AT\r")
    sys.exit(0 if b"OK" in s.read(64) else 1)
EOF
  done
fi
if [ -z "$DEVICE" ]; then
  say "  no modem found in /dev/serial/by-id (plug it in and run install.sh again, or --device PATH)"
else
  name="$(basename "$DEVICE")"
  # by-id names are usb-<ID_SERIAL>-if<NN>[-port0] (udev's 60-serial.rules)
  serial_id="$(sed -E 's/^usb-(.*)-if[0-9a-fA-F]{2}(-port[0-9]+)?$/\1/' <<<"$name")"
  ifnum="$(sed -E 's/^usb-.*-if([0-9a-fA-F]{2})(-port[0-9]+)?$/\1/' <<<"$name")"
  if [ "$serial_id" = "$name" ] || [ "$ifnum" = "$name" ]; then
    say "  $DEVICE is not a /dev/serial/by-id/usb-...-ifNN name: no rule written; use --device"
  else
    rule="$(mktemp)"
    cat > "$rule" <<EOF
# Written by textback's install.sh for $name.
# Every port of this modem: ModemManager leaves it alone (it would answer textback's AT traffic).
SUBSYSTEM=="tty", ENV{ID_SERIAL}=="$serial_id", ENV{ID_MM_DEVICE_IGNORE}="1"
# Its AT port: a name that survives replugs and reboots, for [modem] device = "/dev/textback-modem".
SUBSYSTEM=="tty", ENV{ID_SERIAL}=="$serial_id", ENV{ID_USB_INTERFACE_NUM}=="$ifnum", SYMLINK+="textback-modem", GROUP="dialout", MODE="0660"
EOF
    if put "$rule" "$RULE" 0644; then
      system udevadm control --reload
      system udevadm trigger --subsystem-match=tty --action=change
    fi
    rm -f "$rule"
  fi
fi
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && systemctl -q is-active ModemManager 2>/dev/null; then
  say "  note: ModemManager is running; the rule keeps it off this modem (or: systemctl disable --now ModemManager)"
fi

# --- 7. check -------------------------------------------------------------------------------
if [ "$CHANGED" = 0 ]; then
  say "Nothing changed: textback $VERSION is installed as this source says."
else
  say "$CHANGED change(s)$([ "$DRY" = 1 ] && echo ' would be made')."
fi
say ""
if [ -z "$ROOT" ] && [ -n "$(pidof systemd 2>/dev/null || true)" ] && [ "$DRY" = 0 ] \
  && systemctl -q is-active textback 2>/dev/null && [ "$CHANGED" != 0 ]; then
  system systemctl try-restart textback
  say "Restarted textback (it was running)."
fi
if [ "$CHECK" = 1 ] && [ -z "$ROOT" ] && [ "$DRY" = 0 ]; then
  say "textback check --live:"
  if "$PREFIX/bin/textback" check --live --config "$CONF" | sed -n '/^Live checks/,$p'; then :; fi
  say ""
else
  say "Then run: $PREFIX/bin/textback check --live --config $CONF"
fi
say "Next: edit $CONF ([ami] secret, [textback] business_name, [hours]),"
say "      run $PREFIX/bin/textback check --live until it says OK, then: systemctl start textback"
