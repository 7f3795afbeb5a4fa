#!/bin/bash -e
# pi-gen, inside the image (qemu-user): install stratum1 into /opt/stratum1/venv with the project's
# own installer, then set the Pi up for a GPS HAT (config.txt, cmdline.txt, services, ntp.conf).
# --root / keeps install-service from touching udev or systemd of whatever runs the build.
src=/var/tmp/stratum1-src
"${src}/scripts/install-service" --root /
# shellcheck disable=SC2086  # word splitting of the options is wanted
python3 "${src}/image/pisetup.py" apply --root / --boot /boot/firmware --force-config \
	${STRATUM1_PI_SETUP_ARGS:-}
# The installer's generic example is replaced by the HAT config; keep the image clean.
rm -f /etc/stratum1/ntp.conf.orig
/opt/stratum1/venv/bin/stratum1 config check /etc/stratum1/ntp.conf >/dev/null
rm -rf "${src}"
