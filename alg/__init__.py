"""ftp-alg: an FTP application-layer gateway and NAT helper."""

__version__ = "0.1.0"
