SUMMARY = "Unattended offline updates of OSTree + docker-compose devices from USB sticks"
LICENSE = "Apache-2.0"
# The Apache License 2.0 text as apache.org ships it (also Debian's common-licenses/Apache-2.0).
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

SRC_URI = "git://example.com/usbupdater.git;protocol=https;branch=main"
SRCREV = "${AUTOREV}"
S = "${WORKDIR}/git"

inherit python_setuptools_build_meta systemd

# Built by setuptools (pyproject.toml needs >= 61; scarthgap ships 69.1.1, styhead 72.1.0,
# walnascar 76.0.0) through python_setuptools_build_meta: no network, no build isolation.
#
# Runtime dependencies, by the layer that provides each recipe:
# - this layer (recipes-devtools/python): python3-tuf, python3-securesystemslib (neither is in
#   openembedded-core or meta-python)
# - meta-python (meta-openembedded): python3-structlog, python3-pyudev, python3-docker (which
#   meta-virtualization also carries)
# - openembedded-core: python3-cryptography, python3-pyyaml, ostree (meta-oe on some releases;
#   LmP carries it in meta-lmp-base), util-linux-mount, util-linux-umount, and the splits of the
#   Python standard library the program imports, as oe-core's python3-manifest.json packs them:
#   python3-core (os, re, argparse, subprocess, signal, select, selectors, struct, shutil,
#   fnmatch, csv, configparser, platform, threading, unicodedata, zlib, binascii, ...),
#   python3-json, python3-sqlite3 (aktualizr-lite's database), python3-logging, python3-ctypes,
#   python3-fcntl, python3-io (socket), python3-datetime, python3-threading (queue),
#   python3-shell (shlex), python3-crypt (hashlib), python3-compression (tarfile),
#   python3-netclient (base64, hmac, secrets), python3-numbers (contextvars), python3-asyncio
#   (concurrent.futures), python3-tomllib (Python >= 3.11; python3-tomli on 3.9/3.10).
#   python3-modules pulls in every split at once.
# - meta-lmp (meta-lmp-base) or meta-virtualization: docker-moby (or docker-ce) and
#   docker-compose (the compose v2 CLI plugin).
RDEPENDS:${PN} += " \
    python3-tuf python3-securesystemslib python3-cryptography python3-structlog \
    python3-docker python3-pyudev python3-pyyaml \
    python3-core python3-json python3-sqlite3 python3-logging python3-ctypes python3-fcntl \
    python3-io python3-datetime python3-threading python3-shell python3-crypt \
    python3-compression python3-netclient python3-numbers python3-asyncio python3-tomllib \
    ostree docker-compose util-linux-mount util-linux-umount \
"

SYSTEMD_SERVICE:${PN} = "usbupdater.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${S}/systemd/usbupdater.service ${D}${systemd_system_unitdir}/usbupdater.service
    install -D -m 0644 ${S}/udev/90-usbupdater.rules ${D}${nonarch_base_libdir}/udev/rules.d/90-usbupdater.rules
    # The entry point lands in ${bindir}; the unit expects /usr/bin/usbupdater.
}

FILES:${PN} += "${systemd_system_unitdir}/usbupdater.service ${nonarch_base_libdir}/udev/rules.d/90-usbupdater.rules"
