"""The pure FTP protocol core: bytes in, values and actions out. No I/O, no clocks, no logging setup."""
