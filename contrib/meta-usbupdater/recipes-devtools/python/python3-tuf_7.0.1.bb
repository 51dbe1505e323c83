# python-tuf is in neither openembedded-core nor meta-python: this layer carries it.
# Checksums from the PyPI sdist (tuf-7.0.1.tar.gz); not built here.
SUMMARY = "The Update Framework (python-tuf): metadata model and client"
HOMEPAGE = "https://theupdateframework.io"
LICENSE = "Apache-2.0 | MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=8cc789b082b3d97e1ccc5261f8594d3f \
                    file://LICENSE-MIT;md5=0905c600830081fce64622608c4a2628"

PYPI_PACKAGE = "tuf"
SRC_URI[sha256sum] = "5ada1db78da3518fa851e28588f4b2249b8662a28ae528f54afa2a1de541fb31"

# Its pyproject.toml pins hatchling==1.32.0; the release's python3-hatchling (no isolation)
# builds it as long as it supports the metadata used.
inherit pypi python_hatchling

# usbupdater uses tuf.api (metadata, serialization) only; urllib3 is for tuf.ngclient.
RDEPENDS:${PN} += " \
    python3-securesystemslib python3-urllib3 \
    python3-core python3-datetime python3-crypt python3-io python3-json python3-logging \
"
