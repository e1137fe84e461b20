#!/bin/sh
# The container image's ENTRYPOINT (deploy/Containerfile): `ftp-alg ARGS`, except that `run` refuses to start
# without the public address. Inside a container the gateway's own address is one no client can dial, so
# 227 replies naming it make passive transfers hang behind a port mapping, a Service or a balancer.
# Give the address clients dial:  -e FTP_ALG_PUBLIC_ADDRESS=203.0.113.7  (or the flag --public-address).
set -eu
if [ "${1:-}" = run ] && [ -z "${FTP_ALG_PUBLIC_ADDRESS:-}" ]; then
    case " $* " in
        *" --public-address "* | *" --public-address="*) ;;
        *)
            echo "ftp-alg: error: set FTP_ALG_PUBLIC_ADDRESS to the IP address FTP clients dial" \
                "(the host's or the balancer's public address, e.g. podman run -e FTP_ALG_PUBLIC_ADDRESS=203.0.113.7):" \
                "without it, passive-mode replies name the container's own address and listings hang" >&2
            exit 2
            ;;
    esac
fi
exec ftp-alg "$@"
