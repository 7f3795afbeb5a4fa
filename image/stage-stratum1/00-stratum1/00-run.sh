#!/bin/bash -e
# pi-gen, on the build host: unpack the stratum1 source snapshot (made by image/build-image)
# into the image's root for the chroot step. /var/tmp, not /tmp: pi-gen bind-mounts the host's
# /tmp over the chroot's.
src="${ROOTFS_DIR}/var/tmp/stratum1-src"
rm -rf "${src}"
mkdir -p "${src}"
tar -xzf files/stratum1-src.tar.gz -C "${src}"
