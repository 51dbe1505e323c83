# Example product bbappend (in your factory layer, e.g. meta-subscriber-overrides): ship
# device-specific [usbupdater] keys as an aktualizr-lite config snippet in /etc/sota/conf.d/.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://60-usbupdater.toml"

do_install:append() {
    install -D -m 0644 ${WORKDIR}/60-usbupdater.toml ${D}${sysconfdir}/sota/conf.d/60-usbupdater.toml
}
FILES:${PN} += "${sysconfdir}/sota/conf.d/60-usbupdater.toml"
