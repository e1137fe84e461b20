"""The benchmark: ftp-alg against the direct path in network namespaces (`python -m bench`, see README.md)."""
