#!/usr/bin/env bash
# build-deb.sh OUTDIR: build textback_<version>_<arch>.deb for fleets (make deb).
#
# Why not dh-virtualenv: it needs a debian/ tree, debhelper and a package build chroot for
# what is, here, three steps we already have: install.sh --root builds the same venv under
# /opt/textback from the same hash-checked requirements.lock (scripts relocated to
# /opt/textback), the files move to where a package keeps them, and dpkg-deb packs them.
# One layout for install.sh and the .deb, and one place to change it. Build on the release
# a fleet runs (Debian 12 for Debian 12 and Raspberry Pi OS bookworm; Ubuntu 24.04 for
# itself): the venv uses that release's /usr/bin/python3, and pydantic-core is compiled.
# The maintainer scripts (packaging/deb/) do the user, config, udev and unit steps.
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$SRC/build}")"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -1)"
ARCH="$(dpkg --print-architecture)"
PYVER="$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STAGE="$OUT/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"

"$SRC/install.sh" --root "$STAGE" --no-check >/dev/null
# where a package keeps them: the unit and sysusers file under /usr/lib, the example config
# under /usr/share (postinst writes /etc/textback/textback.toml only if absent: it holds the
# AMI secret, so it is the admin's file, 0640 root:textback, not a dpkg conffile)
install -D -m 0644 "$STAGE/etc/systemd/system/textback.service" "$STAGE/usr/lib/systemd/system/textback.service"
install -D -m 0644 "$STAGE/etc/sysusers.d/textback.conf" "$STAGE/usr/lib/sysusers.d/textback.conf"
install -D -m 0644 "$SRC/config/textback.toml" "$STAGE/usr/share/textback/textback.toml"
rm -rf "${STAGE:?}/etc"
rm -f "$STAGE/opt/textback/.textback-install"
# no pip or setuptools in the package: a fleet upgrades by installing the next .deb
site="$STAGE/opt/textback/lib/python$PYVER/site-packages"
rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/_distutils_hack \
  "$site"/pkg_resources "$site"/distutils-precedence.pth "$STAGE"/opt/textback/bin/pip*
find "$STAGE" -name __pycache__ -type d -prune -exec rm -rf {} +
install -d "$STAGE/usr/bin"
ln -s /opt/textback/bin/textback "$STAGE/usr/bin/textback"
install -D -m 0644 "$SRC/packaging/deb/copyright" "$STAGE/usr/share/doc/textback/copyright"
printf 'textback (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- textback maintainers <textback@example.org>  %s\n' \
  "$VERSION" "$VERSION" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$STAGE/usr/share/doc/textback/changelog.gz"
install -D -m 0644 "$SRC/packaging/deb/lintian-overrides" "$STAGE/usr/share/lintian/overrides/textback"

install -d "$STAGE/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$SRC/packaging/deb/$s" "$STAGE/DEBIAN/$s"; done
SIZE="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: textback
Version: $VERSION
Architecture: $ARCH
Maintainer: textback maintainers <textback@example.org>
Installed-Size: $SIZE
Depends: python$PYVER, python3 (>= 3.11), libc6, systemd
Recommends: usb-modeswitch
Section: comm
Priority: optional
Homepage: https://example.org/textback
Description: texts back the callers an office did not answer
 textback listens to an Asterisk PBX over AMI, decides which inbound calls no
 person answered, and sends the caller an SMS through a GSM modem on a serial
 port. Everything it sees and does is kept in SQLite. It runs as the systemd
 service textback, from a self-contained Python environment in /opt/textback.
CONTROL
DEB="$OUT/textback_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
rm -rf "$STAGE"
echo "$DEB"
