# securesystemslib >= 1.0 is in neither openembedded-core nor meta-python: this layer carries it.
# Checksums from the PyPI sdist (securesystemslib-1.6.0.tar.gz); not built here.
SUMMARY = "Cryptographic routines for TUF and in-toto metadata signatures"
HOMEPAGE = "https://github.com/secure-systems-lab/securesystemslib"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=e9703d169911cdb29305f88411c78717"

PYPI_PACKAGE = "securesystemslib"
SRC_URI[sha256sum] = "b16e07c32bb41174c2ee2fb18f478ebe0d52e0e7c1fb085ce89c990452a35977"

inherit pypi python_hatchling

# The `crypto` extra usbupdater needs is python3-cryptography (openembedded-core). The sdist
# declares cryptography >= 48 for it; usbupdater's tests ran with 50.0.2. Check the release's
# python3-cryptography (scarthgap ships 42.x) or carry a newer one.
RDEPENDS:${PN} += " \
    python3-cryptography python3-core python3-json python3-crypt python3-io python3-logging \
"
