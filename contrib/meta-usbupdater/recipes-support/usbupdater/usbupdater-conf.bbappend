# Example: device-specific [usbupdater] keys as an aktualizr-lite config snippet, in a
# bbappend to LmP's sota config recipe (lmp's `aktualizr-lite` reads /etc/sota/conf.d/*.toml).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://60-usbupdater.toml"

do_install:append() {
    install -D -m 0644 ${WORKDIR}/60-usbupdater.toml ${D}${sysconfdir}/sota/conf.d/60-usbupdater.toml
}
FILES:${PN} += "${sysconfdir}/sota/conf.d/60-usbupdater.toml"
