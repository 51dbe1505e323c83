"""usbupdater: unattended offline updates of OSTree + docker-compose devices from a USB stick."""

__version__ = "0.1.0"
