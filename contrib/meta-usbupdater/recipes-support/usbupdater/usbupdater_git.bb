SUMMARY = "Unattended offline updates of OSTree + docker-compose devices from USB sticks"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://pyproject.toml;beginline=1;endline=3;md5=REPLACE_ME"

SRC_URI = "git://example.com/usbupdater.git;protocol=https;branch=main"
SRCREV = "${AUTOREV}"
S = "${WORKDIR}/git"

inherit python_setuptools_build_meta systemd

RDEPENDS:${PN} += " \
    python3-pyudev python3-tuf python3-securesystemslib python3-structlog \
    python3-docker python3-pyyaml ostree docker-compose util-linux-mount \
"

SYSTEMD_SERVICE:${PN} = "usbupdater.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -D -m 0644 ${S}/systemd/usbupdater.service ${D}${systemd_system_unitdir}/usbupdater.service
    install -D -m 0644 ${S}/udev/90-usbupdater.rules ${D}${nonarch_base_libdir}/udev/rules.d/90-usbupdater.rules
    # The entry point lands in ${bindir}; the unit expects /usr/bin/usbupdater.
}

FILES:${PN} += "${systemd_system_unitdir}/usbupdater.service ${nonarch_base_libdir}/udev/rules.d/90-usbupdater.rules"
