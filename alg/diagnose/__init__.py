"""`ftp-alg diagnose`: the FTP-through-NAT troubleshooting guide as one command.

observations.py (what was seen) sits between probe.py (sockets, bounded waits) and reasoning.py / fixes.py /
report.py (pure: the diagnosis, the ranked fixes, the report); command.py is the CLI handler.
"""
