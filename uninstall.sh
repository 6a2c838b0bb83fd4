#!/usr/bin/env bash
# uninstall.sh: remove what install.sh installed, as root.
#
#   ./uninstall.sh               stop and remove the program (/opt/textback), the unit and
#                                the udev rule; keep the database (/var/lib/textback), the
#                                config (/etc/textback) and the user textback
#   ./uninstall.sh --purge       also remove the database, the config and the user
#   ./uninstall.sh --dry-run     print what it would do; change nothing
#   ./uninstall.sh --root DIR    remove from the tree install.sh --root DIR wrote; nothing is
#                                run against this machine (what would be run is printed)
set -euo pipefail

PREFIX=/opt/textback
ROOT=""
DRY=0
PURGE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift 2 ;;
    --root=*) ROOT="$(realpath -m "${1#--root=}")"; shift ;;
    --dry-run) DRY=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "uninstall.sh: run it as root (sudo ./uninstall.sh), or with --dry-run or --root DIR" >&2
  exit 1
fi

CHANGED=0
say() { printf '%s\n' "$*"; }
system() {
  if [ -n "$ROOT" ]; then say "  not in --root mode, would run: $*"; return 0; fi
  if [ "$DRY" = 1 ]; then say "  would run: $*"; return 0; fi
  "$@"
}
remove() {  # remove $1 (under ROOT), a file, link or directory, if there
  local p="$ROOT$1"
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then return 0; fi
  CHANGED=$((CHANGED + 1))
  if [ "$DRY" = 1 ]; then say "  would remove $1"; return 0; fi
  rm -rf -- "$p"
  say "  removed $1"
}

say "textback uninstall${ROOT:+ from $ROOT}$([ "$PURGE" = 1 ] && echo ' --purge')$([ "$DRY" = 1 ] && echo ' (dry run)')"
UNIT=/etc/systemd/system/textback.service
if [ -e "$ROOT$UNIT" ] && { [ -n "$ROOT" ] || [ -d /run/systemd/system ]; }; then
  system systemctl disable --now textback.service
fi
remove /etc/systemd/system/multi-user.target.wants/textback.service
remove "$UNIT"
[ -n "$ROOT" ] || [ ! -d /run/systemd/system ] || system systemctl daemon-reload
if [ -e "$ROOT/etc/udev/rules.d/70-textback-modem.rules" ]; then
  remove /etc/udev/rules.d/70-textback-modem.rules
  system udevadm control --reload
fi
remove "$PREFIX"

if [ "$PURGE" = 1 ]; then
  remove /var/lib/textback
  remove /etc/textback
  had_user=0
  if [ -e "$ROOT/etc/sysusers.d/textback.conf" ]; then had_user=1; fi
  remove /etc/sysusers.d/textback.conf
  if { [ -n "$ROOT" ] && [ "$had_user" = 1 ]; } || { [ -z "$ROOT" ] && id textback >/dev/null 2>&1; }; then
    system userdel textback
  fi
else
  for kept in /var/lib/textback /etc/textback; do
    if [ -e "$ROOT$kept" ]; then say "  kept $kept (--purge removes it)"; fi
  done
fi

if [ "$CHANGED" = 0 ]; then
  say "Nothing to remove: textback is not installed${ROOT:+ in $ROOT}."
else
  say "$CHANGED item(s) $([ "$DRY" = 1 ] && echo 'would be ' )removed."
fi
