"""`python -m bench` (or `./dev bench`): the gateway against the direct path, in one run, figures and ratios.

Builds the reverse topology in network namespaces (needs root), serves files with vsftpd (and pyftpdlib for
the idle test), and runs each workload directly (routed through the gw namespace by the kernel) and through
ftp-alg. Prints a table and writes bench-results/bench-<time>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import workloads as w
from bench.world import (
    DEFENDER_PASSIVE_PORTS,
    DEFENDER_PORT,
    FTPS_PORT,
    KERNEL_PASSIVE_PORTS,
    KERNEL_PATH_PORT,
    PYFTPDLIB_PORT,
    REPO_ROOT,
    Topology,
    World,
    cpu_seconds,
    descriptor_limit,
)

WORKLOADS = ("retr", "stor", "small", "concurrent", "idle", "workers", "ftps")

FULL = {"big": 1 << 30, "small": 1000, "concurrent": (200, 1000), "idle": (1000, 10000), "runs": 5}
QUICK = {"big": 64 << 20, "small": 100, "concurrent": (20, 100), "idle": (100, 1000), "runs": 1}
SMALL_FILE_BYTES = 4096
SESSION_TIMEOUT_S = 30  # a concurrent session that takes longer counts as failed
WARMUP_SESSIONS = 10  # held before the idle test's baseline, so first-use allocations are not counted

# The targets, as (what, check) over the results; ratios are gateway / direct from the same run.
TARGETS = {
    "bulk_ratio": 0.80,  # issue 10: the relay path
    "cpu_s_per_gib": 0.3,
    "ftps_ratio": 0.5,  # issue 9: TLS on both legs, the gateway decrypts and re-encrypts every byte
    "small_ratio": 0.65,
    "kernel_bulk_ratio": 0.90,  # issue 10: the kernel data path, at the kernel helper's level
    "kernel_cpu_s_per_gib": 0.05,
    "kernel_small_ratio": 0.80,
    "banner_max_s": 5.0,
    "idle_bytes_per_session": 64 * 1024,
    "defender_cost_ratio": 0.98,  # issue 24: the defender on costs at most 2 % of small-file throughput
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes and one run each: a smoke test (~1 min)")
    parser.add_argument("--runs", type=int, help="repetitions of bulk and small-file runs (median taken)")
    parser.add_argument("--relay", choices=("splice", "asyncio"), help="the gateway's relay (FTP_ALG_RELAY)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results", help="where the JSON goes")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {','.join(unknown)}; choose from {','.join(WORKLOADS)}")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces); run it as root, e.g. via ./dev bench")
    sizes = dict(QUICK if args.quick else FULL)
    if args.runs:
        sizes["runs"] = args.runs
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": os.getloadavg(),  # other work on the machine makes the figures noisy
        "options": {"only": only, "quick": args.quick, "relay": args.relay or "auto", **sizes},
        "results": {},
    }
    started = time.monotonic()
    with Topology("reverse") as topology:
        world = World(topology)
        world.route_directly()
        world.make_files(int(sizes["big"]), int(sizes["small"]), SMALL_FILE_BYTES)
        vsftpd = world.start_vsftpd()
        helper = world.kernel_helper(vsftpd)
        with (
            world.gateway(vsftpd, relay=args.relay) as gateway,
            world.gateway(
                vsftpd, port=KERNEL_PATH_PORT, data_path="kernel", passive_ports=KERNEL_PASSIVE_PORTS
            ) as kernel,
        ):
            paths: Paths = {
                "gateway": (gateway.target, gateway),
                "kernel": (kernel.target, kernel),
                "helper": (helper, None),
            }
            steps: dict[str, Callable[[], Any]] = {
                "retr": lambda: bulk_pair(world, vsftpd, paths, "retr", sizes),
                "stor": lambda: bulk_pair(world, vsftpd, paths, "stor", sizes),
                "small": lambda: small_with_defender(world, vsftpd, paths, sizes),
                "concurrent": lambda: concurrent_pair(world, vsftpd, paths, sizes),
            }
            for name in WORKLOADS:
                if name in only and name in steps:
                    report["results"][name] = attempt(name, steps[name])
        if "ftps" in only:
            report["results"]["ftps"] = attempt("ftps", lambda: ftps_pair(world, sizes, args.relay))
        if "workers" in only:
            report["results"]["workers"] = attempt("workers", lambda: workers_pair(world, vsftpd, sizes, args.relay))
        if "idle" in only:
            report["results"]["idle"] = attempt("idle", lambda: idle_memory(world, sizes, args.relay))
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average_after"] = os.getloadavg()
    report["verdicts"] = verdicts(report["results"])
    print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(UTC):%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {w.relative(path)} ({report['seconds']} s)")
    # Exit 1 when a workload could not run; a missed target is a figure to read, not a failure of the tool.
    return 1 if any(isinstance(v, dict) and "error" in v for v in report["results"].values()) else 0


def attempt(name: str, step: Callable[[], Any]) -> Any:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    try:
        return step()
    except Exception as error:  # one workload failing does not lose the others' figures
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


# --- workloads, direct and through the gateway ----------------------------------------------------------------


# The paths compared with the direct one, in every run: ftp-alg relaying ("gateway"), ftp-alg with the kernel
# data path ("kernel"), and the kernel's own FTP helper ("helper"). Each: its target, and the gateway process
# whose CPU is measured (None for the helper, which is all kernel).
Paths = dict[str, tuple[w.Target, w.Gateway | None]]


def bulk_pair(
    world: World,
    server: w.Target,
    paths: Paths,
    verb: str,
    sizes: dict[str, Any],
    modes: tuple[str, ...] = ("passive", "active"),
    floor_mb_s: float = 50,
) -> dict[str, Any]:
    size, results = int(sizes["big"]), {}
    timeout_s = 30 + size / (floor_mb_s * w.MB)  # the slowest speed that is not a failure
    for mode in modes:
        direct: list[w.Transfer] = []
        through: dict[str, list[w.Transfer]] = {name: [] for name in paths}
        for _ in range(int(sizes["runs"])):  # interleaved, so drift in the machine hits every path alike
            direct.append(w.bulk(world, server, verb, mode, size, None, timeout_s))
            for name, (target, gateway) in paths.items():
                through[name].append(w.bulk(world, target, verb, mode, size, gateway, timeout_s))
        d = w.median_run(direct)
        figures: dict[str, Any] = {
            "bytes": size,
            "direct_mb_s": round(d.mb_s, 1),
            "machine_cpu_s_per_gib_direct": round(
                w.median([run.machine_cpu_s / (run.bytes / w.GIB) for run in direct]), 3
            ),
            "runs_direct_mb_s": [round(run.mb_s, 1) for run in direct],
        }
        for name, runs in through.items():
            g = w.median_run(runs)
            figures[f"{name}_mb_s"] = round(g.mb_s, 1)
            figures[f"{name}_ratio"] = round(g.mb_s / d.mb_s, 3)
            if paths[name][1] is not None:
                cpu = w.median([run.cpu_s / (run.bytes / w.GIB) for run in runs if run.cpu_s is not None])
                figures[f"{name}_cpu_s_per_gib"] = round(cpu, 3)
            # The whole machine's CPU per GiB (client, server, gateway, kernel): what the extra hop costs.
            figures[f"machine_cpu_s_per_gib_{name}"] = round(
                w.median([run.machine_cpu_s / (run.bytes / w.GIB) for run in runs]), 3
            )
            figures[f"runs_{name}_mb_s"] = [round(run.mb_s, 1) for run in runs]
        figures["ratio"] = figures["gateway_ratio"]
        results[mode] = figures
    return results


def ftps_pair(world: World, sizes: dict[str, Any], relay: str | None) -> dict[str, Any]:
    """PROT P RETR and STOR: curl to an FTPS-only vsftpd (require_ssl_reuse) directly, and through the gateway
    with TLS on both legs. Passive only: curl 7.88 hangs on active FTPS data connections (curl/curl#10666)."""
    server = world.start_vsftpd(tls=world.pki.upstream)
    with world.gateway(server, port=FTPS_PORT, relay=relay) as gateway:
        paths: Paths = {"gateway": (gateway.target, gateway)}
        return {
            verb: bulk_pair(world, server, paths, verb, sizes, modes=("passive",), floor_mb_s=20)
            for verb in ("retr", "stor")
        }


def small_with_defender(world: World, server: w.Target, paths: Paths, sizes: dict[str, Any]) -> dict[str, Any]:
    """The small-file runs, with a fourth path interleaved: the relay with the defender on (its cost)."""
    with world.gateway(server, port=DEFENDER_PORT, defender=True, passive_ports=DEFENDER_PASSIVE_PORTS) as guarded:
        results = small_pair(world, server, {**paths, "defender": (guarded.target, guarded)}, sizes)
    results["defender_cost_ratio"] = round(results["defender_files_s"] / results["gateway_files_s"], 3)
    return results


def small_pair(world: World, server: w.Target, paths: Paths, sizes: dict[str, Any]) -> dict[str, Any]:
    count = int(sizes["small"])
    direct: list[float] = []
    through: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    slowest = {"direct": 0.0, **{name: 0.0 for name in paths}}
    for _ in range(int(sizes["runs"])):
        run = w.small_files(world, server, count, 300)
        direct.append(count / run.seconds)
        slowest["direct"] = max(slowest["direct"], run.slowest_s)
        for name, (target, gateway) in paths.items():
            before = gateway.cpu_seconds() if gateway else 0.0
            run = w.small_files(world, target, count, 300)
            through[name].append(count / run.seconds)
            slowest[name] = max(slowest[name], run.slowest_s)
            cpu[name].append(gateway.cpu_seconds() - before if gateway else 0.0)
    d = w.median(direct)
    results: dict[str, Any] = {
        "files": count,
        "file_bytes": SMALL_FILE_BYTES,
        "direct_files_s": round(d, 1),
        "runs_direct_files_s": [round(x, 1) for x in direct],
        "slowest_file_s": {path: round(seconds, 4) for path, seconds in slowest.items()},
    }
    for name, speeds in through.items():
        results[f"{name}_files_s"] = round(w.median(speeds), 1)
        results[f"{name}_ratio"] = round(w.median(speeds) / d, 3)
        if paths[name][1] is not None:
            results[f"{name}_cpu_ms_per_file"] = round(1000 * w.median(cpu[name]) / count, 3)
        results[f"runs_{name}_files_s"] = [round(x, 1) for x in speeds]
    results["ratio"] = results["gateway_ratio"]
    return results


def concurrent_pair(world: World, server: w.Target, paths: Paths, sizes: dict[str, Any]) -> dict[str, Any]:
    results = {}
    for count in sizes["concurrent"]:
        results[str(count)] = {"direct": w.concurrent_sessions(world, server, int(count), SESSION_TIMEOUT_S)}
        for name, (target, _) in paths.items():
            results[str(count)][name] = w.concurrent_sessions(world, target, int(count), SESSION_TIMEOUT_S)
    return results


def workers_pair(world: World, server: w.Target, sizes: dict[str, Any], relay: str | None) -> dict[str, Any]:
    size, parallel = int(sizes["big"]), 4
    timeout_s = 60 + parallel * size / (50 * w.MB)
    results: dict[str, Any] = {"parallel": parallel, "bytes_each": size}
    runs = int(sizes["runs"])
    results["direct_mb_s"] = round(
        w.median([w.parallel_retr(world, server, parallel, size, timeout_s).mb_s for _ in range(runs)]), 1
    )
    for workers in (1, 2):
        with world.gateway(server, port=2100, workers=workers, relay=relay) as gateway:
            speeds, shares = [], []
            for _ in range(runs):
                before = {pid: cpu_seconds(pid) for pid in gateway.worker_pids()}
                speeds.append(w.parallel_retr(world, gateway.target, parallel, size, timeout_s).mb_s)
                shares.append([round(cpu_seconds(pid) - cpu, 2) for pid, cpu in before.items()])
            results[f"workers_{workers}"] = {
                "mb_s": round(w.median(speeds), 1),
                "runs_mb_s": [round(s, 1) for s in speeds],
                "cpu_s_per_worker": shares,
            }
    results["ratio_2_to_1"] = round(results["workers_2"]["mb_s"] / results["workers_1"]["mb_s"], 3)
    return results


def idle_memory(world: World, sizes: dict[str, Any], relay: str | None) -> dict[str, Any]:
    upstream = world.start_pyftpdlib()
    # Each session holds two sockets. Where the descriptor limit cannot be raised that far (no
    # CAP_SYS_RESOURCE), the sessions are spread over enough workers; RSS is summed over all processes.
    needed = 2 * max(int(count) for count in sizes["idle"]) + 512
    workers = -(-needed // descriptor_limit())
    results: dict[str, Any] = {"workers": workers, "descriptor_limit": descriptor_limit()}
    with world.gateway(upstream, port=PYFTPDLIB_PORT, relay=relay, workers=workers) as gateway:
        client = w.IdleClient(world.client, gateway.target, 60)
        try:
            warm = client.hold(WARMUP_SESSIONS, 60)
            baseline = gateway.rss_bytes()
            results["baseline_rss_bytes"] = baseline
            results["baseline_sessions"] = warm["open"]
            for count in sizes["idle"]:
                held = client.hold(int(count), 600)
                rss = gateway.rss_bytes()
                added = max(1, held["open"] - warm["open"])
                results[str(count)] = {
                    "open": held["open"],
                    "failed": held["failed"],
                    "errors": held.get("errors", {}),
                    "seconds_to_open": round(held["seconds"], 1),
                    "rss_bytes": rss,
                    "bytes_per_session": round((rss - baseline) / added),
                }
        finally:
            client.close()
    return results


# --- verdicts and the table -----------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(what: str, value: Any, target: str, ok: bool | None) -> None:
        out.append({"what": what, "value": value, "target": target, "ok": ok})

    for verb in ("retr", "stor"):
        for mode, figures in (results.get(verb) or {}).items():
            if not isinstance(figures, dict):
                continue
            for name, prefix in (("gateway", ""), ("kernel", "kernel_")):
                if f"{name}_ratio" not in figures:
                    continue
                ratio, cpu = figures[f"{name}_ratio"], figures[f"{name}_cpu_s_per_gib"]
                bulk, most = TARGETS[f"{prefix}bulk_ratio"], TARGETS[f"{prefix}cpu_s_per_gib"]
                what = f"{verb.upper()} {mode} {'relay' if name == 'gateway' else 'kernel path'}"
                add(f"{what} ratio", ratio, f">= {bulk}", ratio >= bulk)
                add(f"{what} gateway CPU s/GiB", cpu, f"<= {most}", cpu <= most)
    for verb, by_mode in (results.get("ftps") or {}).items():
        for mode, figures in by_mode.items() if isinstance(by_mode, dict) else ():
            ratio = figures["ratio"]
            add(f"FTPS {verb.upper()} {mode} ratio", ratio, ">= 0.5", ratio >= TARGETS["ftps_ratio"])
    small = results.get("small") or {}
    for name, prefix in (("gateway", ""), ("kernel", "kernel_")):
        if f"{name}_ratio" in small:
            ratio, least = small[f"{name}_ratio"], TARGETS[f"{prefix}small_ratio"]
            what = f"small files {'relay' if name == 'gateway' else 'kernel path'} ratio"
            add(what, ratio, f">= {least}", ratio >= least)
    if "defender_cost_ratio" in small:
        cost, least = small["defender_cost_ratio"], TARGETS["defender_cost_ratio"]
        add("small files, defender on / off (relay)", cost, f">= {least}", cost >= least)
    for count, pair in (results.get("concurrent") or {}).items():
        if isinstance(pair, dict) and "gateway" in pair:
            g = pair["gateway"]
            ok = g["failed"] == 0 and (g["banner_max_s"] or 99) <= TARGETS["banner_max_s"]
            add(
                f"{count} sessions via gateway ok/max banner s", f"{g['ok']}/{g['banner_max_s']:.2f}", "all, <= 5 s", ok
            )
    for count, figures in (results.get("idle") or {}).items():
        if isinstance(figures, dict) and "bytes_per_session" in figures:
            per = figures["bytes_per_session"]
            ok = per < TARGETS["idle_bytes_per_session"] if count == "10000" else None
            add(f"{count} idle sessions, bytes each", per, "< 64 KiB at 10,000", ok)
    workers = results.get("workers") or {}
    if "ratio_2_to_1" in workers:
        add("4 x RETR, 2 workers / 1 worker", workers["ratio_2_to_1"], "> 1", workers["ratio_2_to_1"] > 1)
    for name, value in results.items():
        if isinstance(value, dict) and "error" in value:
            add(f"{name} failed", value["error"].splitlines()[0], "runs", False)
    return out


def print_table(report: dict[str, Any]) -> None:
    m, r = report["machine"], report["results"]
    print(
        f"\nftp-alg benchmark {report['date']}  {m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
        f"python {m['python']}, relay {report['options']['relay']}"
    )
    rows: list[tuple[Any, ...]] = [("workload", "direct", "through", "ratio", "gateway CPU")]
    labels = {
        "gateway": "ftp-alg relay",
        "kernel": "ftp-alg kernel path",
        "helper": "kernel FTP helper",
        "defender": "ftp-alg relay, defender on",
    }
    ftps = r.get("ftps") if isinstance(r.get("ftps"), dict) and "error" not in r["ftps"] else {}
    bulk = [(verb, "", r.get(verb) or {}) for verb in ("retr", "stor")]
    bulk += [(verb, "FTPS PROT P ", ftps.get(verb) or {}) for verb in ("retr", "stor")]
    for verb, label_, by_mode in bulk:
        for mode, f in by_mode.items():
            if isinstance(f, dict):
                rows.append(
                    (f"{label_}{verb.upper()} {f['bytes'] >> 20} MiB {mode}, MB/s", f["direct_mb_s"], "", "", "")
                )
                for name, label in labels.items():
                    if f"{name}_mb_s" in f:
                        cpu = f.get(f"{name}_cpu_s_per_gib")
                        rows.append(
                            (
                                f"  {label}",
                                "",
                                f[f"{name}_mb_s"],
                                f[f"{name}_ratio"],
                                "" if cpu is None else f"{cpu} s/GiB",
                            )
                        )
                machine_cpu = " / ".join(
                    str(f[k]) for k in f if k.startswith("machine_cpu_s_per_gib_") and "direct" not in k
                )
                rows.append(
                    (
                        "  whole machine CPU, s/GiB (direct; paths)",
                        f["machine_cpu_s_per_gib_direct"],
                        machine_cpu,
                        "",
                        "",
                    )
                )
    small = r.get("small") or {}
    if "ratio" in small:
        rows.append((f"{small['files']} x 4 KiB RETR, one session, files/s", small["direct_files_s"], "", "", ""))
        for name, label in labels.items():
            if f"{name}_files_s" in small:
                cpu = small.get(f"{name}_cpu_ms_per_file")
                rows.append(
                    (
                        f"  {label}",
                        "",
                        small[f"{name}_files_s"],
                        small[f"{name}_ratio"],
                        "" if cpu is None else f"{cpu} ms/file",
                    )
                )
    for count, pair in (r.get("concurrent") or {}).items():
        if isinstance(pair, dict) and "gateway" in pair:
            d = pair["direct"]
            rows.append(
                (
                    f"{count} concurrent sessions: ok / max banner wait s",
                    f"{d['ok']} / {_num(d['banner_max_s'])}",
                    "",
                    "",
                    "",
                )
            )
            for name, label in labels.items():
                if name in pair:
                    g = pair[name]
                    rows.append(
                        (
                            f"  {label}",
                            "",
                            f"{g['ok']} / {_num(g['banner_max_s'])}",
                            "",
                            f"all done in {_num(g['seconds'])} s",
                        )
                    )
    idle = r.get("idle") or {}
    for count, f in idle.items():
        if isinstance(f, dict) and "rss_bytes" in f:
            rows.append(
                (
                    f"{count} idle sessions: gateway RSS MiB"
                    + (f" ({idle['workers']} workers)" if idle.get("workers", 1) > 1 else ""),
                    "",
                    f"{f['rss_bytes'] / (1 << 20):.1f}",
                    "",
                    f"{f['bytes_per_session'] / 1024:.1f} KiB/session",
                )
            )
    workers = r.get("workers") or {}
    if "ratio_2_to_1" in workers:
        rows.append(
            (
                "4 x RETR at once, total MB/s: 1 worker",
                workers["direct_mb_s"],
                workers["workers_1"]["mb_s"],
                round(workers["workers_1"]["mb_s"] / workers["direct_mb_s"], 3),
                "",
            )
        )
        rows.append(
            (
                "  2 workers",
                "",
                workers["workers_2"]["mb_s"],
                round(workers["workers_2"]["mb_s"] / workers["direct_mb_s"], 3),
                f"2/1 = {workers['ratio_2_to_1']}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for index, row in enumerate(rows):
        print(
            "  ".join(
                str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)
            )
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print("\ntargets:")
    for v in report["verdicts"]:
        mark = {True: "ok  ", False: "MISS", None: "    "}[v["ok"]]
        print(f"  {mark} {v['what']}: {v['value']} (target {v['target']})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = Path("/proc/meminfo").read_text().split()[1]
    except OSError:
        memory = "0"
    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = None
    from alg.net.relay import relay_mode

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(memory) / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "default_relay": relay_mode(),
    }


if __name__ == "__main__":
    sys.exit(main())
