"""The results table (Markdown and JSON) and the plots (PNG, matplotlib)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import write_json

KIB = 1024
MIB = 1024**2
ENDPOINT_KEYS = ("static", "dashboard", "api_list")


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    baseline: str = ""  # what the value is compared with, measured in the same run
    baseline_value: float | None = None
    ratio: float | None = None  # value / baseline_value
    target: str = ""
    met: bool | None = None
    note: str = ""


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def figures(results: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    sections = results.get("sections", {})

    clone = sections.get("clone")
    if clone:
        data_mib = clone["data_bytes_per_base"] / MIB
        for label, b in clone["bases"].items():
            out.append(
                Figure(
                    "1 Clone",
                    f"Linked clone, {label} base: median time",
                    b["linked_median_ms"],
                    "ms",
                    f"full copy ({data_mib:.0f} MiB of data)",
                    b["full_median_ms"],
                    b["ratio_linked_to_full"],
                    "≤ 30 ms",
                    b["linked_median_ms"] <= 30,
                )
            )
            out.append(
                Figure(
                    "1 Clone",
                    f"Linked clone, {label} base: bytes written",
                    b["linked_bytes_median"] / KIB,
                    "KiB",
                    "full copy",
                    b["full_bytes_median"] / KIB,
                    b["linked_bytes_median"] / b["full_bytes_median"],
                )
            )
        time_ratio = clone["linked_time_ratio_10g_to_1g"]
        bytes_ratio = clone["linked_bytes_ratio_10g_to_1g"]
        out.append(
            Figure(
                "1 Clone",
                "Linked clone 10 GiB / 1 GiB base: time",
                time_ratio,
                "x",
                target="constant in base size",
                met=time_ratio <= 1.5,
                note=f"bytes written 10 GiB / 1 GiB: {bytes_ratio:.2f}x",
            )
        )

    desk = sections.get("desktop")
    if desk:
        steps = desk["median_steps_s"]
        n = len(desk["runs"])
        out.append(
            Figure(
                "2 Time to desktop",
                f"Launch → first console frame (median of {n})",
                desk["median_total_s"],
                "s",
                "the guest alone: start → first frame",
                desk["direct_median_s"],
                desk["median_total_s"] / desk["direct_median_s"],
                note=f"consoles reconnected: {sum(r.get('reconnects', 0) for r in desk['runs'])}",
            )
        )
        out.append(
            Figure(
                "2 Time to desktop",
                "Time the portal adds to the guest's own first frame",
                desk["portal_added_s"],
                "s",
                target="≤ 1 s",
                met=desk["portal_added_s"] <= 1.0,
            )
        )
        labels = {
            "api_launch": "step: API launch (POST → 202)",
            "provisioning": "step: 202 → running (queue, clone, define, start)",
            "console_open": "step: running → VNC banner through the relay",
            "first_frame": "step: banner → first frame drawn by noVNC",
        }
        detail = desk["median_detail_s"]
        details = {
            "provisioning": (
                f"worker: queue + clone + define {detail['worker_queue_clone_define']:.2f} s, "
                f"QEMU start {detail['worker_qemu_start']:.2f} s"
            ),
            "console_open": (
                f"console page + ticket {detail['page_and_ticket']:.2f} s, relay admission + "
                f"arm + VNC handshake {detail['relay_to_banner']:.2f} s"
            ),
        }
        for step, label in labels.items():
            share = f"{desk['step_shares'][step] * 100:.0f} % of the total"
            extra = f"; {details[step]}" if step in details else ""
            out.append(Figure("2 Time to desktop", label, steps[step], "s", note=share + extra))
        storm = desk["storm"]
        single_running = steps["api_launch"] + steps["provisioning"]
        out.append(
            Figure(
                "2 Boot storm",
                f"{storm['desktops']} launched at once: all running",
                storm["all_running_s"],
                "s",
                "one desktop: launch → running",
                single_running,
                storm["all_running_s"] / single_running,
            )
        )
        out.append(
            Figure(
                "2 Boot storm",
                f"{storm['desktops']} launched at once: all with a console frame",
                storm["all_frames_s"],
                "s",
                "one desktop: launch → frame",
                desk["median_total_s"],
                storm["all_frames_s"] / desk["median_total_s"],
                note=f"consoles reconnected: {storm.get('reconnects', 0)}",
            )
        )
        qemu = storm.get("qemu_start_s") or []
        if qemu:
            out.append(
                Figure(
                    "2 Boot storm",
                    "QEMU start during the storm (worker: defined → running), median",
                    qemu[len(qemu) // 2],
                    "s",
                    "one desktop alone",
                    detail["worker_qemu_start"],
                    qemu[len(qemu) // 2] / detail["worker_qemu_start"],
                    note=(
                        "the worker runs 2 tasks at a time (Procfile: -c 2), so the launches "
                        f"queue; slowest start {qemu[-1]:.1f} s"
                    ),
                )
            )
        for key, label in (("api_list_ms", "GET /api/desktops/"), ("dashboard_ms", "dashboard")):
            s = storm[key]
            for p in ("p50", "p99"):
                out.append(
                    Figure(
                        "2 Boot storm",
                        f"{label} during the storm: {p}",
                        s[p],
                        "ms",
                        "same requests before the storm",
                        s[f"idle_{p}"],
                        s[p] / s[f"idle_{p}"],
                        note=f"{s['samples']} requests, {s['failures']} failed",
                    )
                )

    relay = sections.get("relay")
    if relay:
        tp, lat, mem = relay["throughput_mb_s"], relay["latency"], relay["memory"]
        names = {"channels": "Channels relay", "gateway": "websockify gateway"}
        for key, name in names.items():
            target, met = "", None
            if key == "channels":
                target, met = "≥ websockify in the same run", tp["channels"] >= tp["gateway"]
            out.append(
                Figure(
                    "3 Console relay",
                    f"{name}: throughput, one stream",
                    tp[key],
                    "MB/s",
                    "raw TCP to the echo server",
                    tp["raw"],
                    tp[key] / tp["raw"],
                    target,
                    met,
                    note=(
                        f"relay CPU {relay['relay_cpu_ms_per_mb'][key]:.1f} ms per MB; "
                        f"runs: {', '.join(f'{v:.0f}' for v in relay['throughput_samples'][key])}"
                    ),
                )
            )
        for key, name in names.items():
            for p in ("p50", "p99"):
                added = lat[key][f"added_{p}_ms"]
                target, met = (
                    ("≤ 0.5 ms", added <= 0.5) if (key, p) == ("channels", "p50") else ("", None)
                )
                out.append(
                    Figure(
                        "3 Console relay",
                        f"{name}: added round-trip latency, {p}",
                        added,
                        "ms",
                        f"raw TCP round trip, {p}",
                        lat["raw"][f"{p}_ms"],
                        lat[key][f"{p}_ms"] / lat["raw"][f"{p}_ms"],
                        target,
                        met,
                    )
                )
        ch, gw = mem["channels"], mem["gateway"]
        out.append(
            Figure(
                "3 Console relay",
                f"Channels relay: memory per idle session ({ch['sessions']} open)",
                ch["per_session_kib"],
                "KiB",
                target="≤ 200 KiB",
                met=ch["per_session_kib"] <= 200,
                note=(
                    f"growth of daphne's RSS ({ch['process_rss_before_kib'] / KIB:.0f} → "
                    f"{ch['process_rss_kib'] / KIB:.0f} MiB) / sessions; whole RSS / sessions: "
                    f"{ch['per_session_total_rss_kib']:.0f} KiB"
                ),
            )
        )
        out.append(
            Figure(
                "3 Console relay",
                f"websockify gateway: memory per idle session ({gw['sessions']} open, PSS)",
                gw["per_session_pss_kib"],
                "KiB",
                note=(
                    f"proportional memory of the {gw['processes']} forked session processes / "
                    f"sessions; private {gw['per_session_uss_kib']:.0f} KiB each, RSS "
                    f"{gw['per_session_kib']:.0f} KiB each (mostly pages shared with the "
                    "listener)"
                ),
            )
        )

    load = sections.get("load")
    if load:
        for config, runs in load["served"].items():
            procs = config.removeprefix("daphne_x")
            where = "1 daphne process (Procfile)" if procs == "1" else f"{procs} daphne processes"
            static = runs["static"]
            for key, label in (("dashboard", "Dashboard"), ("api_list", "GET /api/desktops/")):
                r = runs[key]
                errors = f"{r['socket_errors']} socket errors, {r['status_errors']} HTTP errors"
                note = f"**{errors}**" if r["socket_errors"] or r["status_errors"] else errors
                if r.get("db_sampler_refused"):
                    note += "; peak DB connections: all slots taken (the sampler was refused)"
                else:
                    note += f"; peak DB connections {r.get('peak_db_connections', '?')}"
                if "daphne_cpu_ms_per_request" in r:
                    note += (
                        f"; CPU per request: daphne {r['daphne_cpu_ms_per_request']:.1f} ms, "
                        f"machine {r['machine_cpu_ms_per_request']:.1f} ms"
                    )
                out.append(
                    Figure(
                        "4 Portal under load",
                        f"{label}, {where}: requests/s",
                        r["rps"],
                        "req/s",
                        "static file, same server",
                        static["rps"],
                        r["rps"] / static["rps"],
                        note=note,
                    )
                )
                target, met = ("", None)
                if key == "dashboard":
                    target, met = "≤ 150 ms", r["p99_ms"] <= 150
                out.append(
                    Figure(
                        "4 Portal under load",
                        f"{label}, {where}: p99",
                        r["p99_ms"],
                        "ms",
                        "static file, same server",
                        static["p99_ms"],
                        r["p99_ms"] / static["p99_ms"],
                        target,
                        met,
                        note=f"p50 {r['p50_ms']:.0f} ms",
                    )
                )
        q = load["queries"]
        names = {
            "dashboard": "Dashboard",
            "api_list": "API list (own)",
            "helpdesk_list": "Help-desk list (?user=)",
        }
        for key, label in names.items():
            counts = q["counts"][key]
            per = ", ".join(
                f"{size}: {counts[str(size)] if str(size) in counts else counts[size]}"
                for size in q["sizes"]
            )
            values = list(counts.values())
            out.append(
                Figure(
                    "4 Portal under load",
                    f"{label}: queries per request",
                    float(max(values)),
                    "",
                    target="constant in the number of desktops",
                    met=q["constant"][key],
                    note=f"desktops of the user → queries: {per}",
                )
            )
    return out


# --- why a target was missed, and what would meet it ---------------------------------------


def missed_notes(results: dict[str, Any], figs: list[Figure]) -> list[str]:
    notes = []
    missed = {f.name for f in figs if f.met is False}
    sections = results.get("sections", {})
    relay = sections.get("relay", {})
    load = sections.get("load", {})
    desk = sections.get("desktop", {})
    if any(name.startswith("Linked clone") and "median time" in name for name in missed):
        notes.append(
            "**Linked clone > 30 ms.** The overlay itself is a few hundred KiB; the time is "
            "libvirt's storage round trips (pool lookup, volume lookup by path, createXML), "
            "so it depends on libvirtd's load, not on the base image."
        )
    if "Channels relay: throughput, one stream" in missed and relay:
        tp = relay["throughput_mb_s"]
        cpu = relay["relay_cpu_ms_per_mb"]
        notes.append(
            f"**Channels relay throughput below websockify** ({tp['channels']:.0f} vs "
            f"{tp['gateway']:.0f} MB/s; raw TCP {tp['raw']:.0f} MB/s). Why: daphne is "
            f"CPU-bound during the stream ({cpu['channels']:.1f} ms of CPU per MB relayed, "
            f"against {cpu['gateway']:.1f} ms for the gateway). The relay already skips "
            "Channels' per-message database clean-up hop (`ConsoleRelayConsumer.dispatch`; "
            "that took it from ~180 to ~275 MB/s). What is left is daphne's Twisted and "
            "autobahn WebSocket framing plus Channels' consumer dispatch per message, in one "
            "process that also serves HTTP, while the gateway is a bare select() loop per "
            "session. What would meet it: fewer, larger WebSocket messages from the guest "
            "(READ_CHUNK 64 KiB -> 256 KiB), or the relay in an ASGI server of its own with a "
            "faster WebSocket implementation (e.g. uvicorn with websockets)."
        )
    if "Channels relay: added round-trip latency, p50" in missed and relay:
        notes.append(
            "**Relay round trip > 0.5 ms.** Each message crosses daphne's framing and Channels' "
            "dispatch twice; see the throughput note for what would cut it."
        )
    if any(name.startswith("Channels relay: memory per idle session") for name in missed):
        notes.append(
            "**Channels relay > 200 KiB per idle session.** Each session holds a consumer, two "
            "asyncio tasks, a group membership and stream buffers (READ_CHUNK 64 KiB)."
        )
    if "Time the portal adds to the guest's own first frame" in missed and desk:
        steps = desk["median_steps_s"]
        detail = desk["median_detail_s"]
        notes.append(
            f"**The portal adds {desk['portal_added_s']:.2f} s (> 1 s).** Of the median run: "
            f"API launch {steps['api_launch']:.2f} s, worker queue + clone + define "
            f"{detail['worker_queue_clone_define']:.2f} s, QEMU start "
            f"{detail['worker_qemu_start']:.2f} s, console page + ticket "
            f"{detail['page_and_ticket']:.2f} s, relay to banner {detail['relay_to_banner']:.2f} "
            "s. What would meet it: load the console page while the desktop starts (it can "
            "wait for the 'running' push instead of being opened after it), so that the page "
            "and its ~30 noVNC modules are no longer on the critical path."
        )
    if load:
        failing = {
            config: runs
            for config, runs in load["served"].items()
            if any(runs[k]["status_errors"] or runs[k]["socket_errors"] for k in ENDPOINT_KEYS)
        }
        if failing:
            parts = []
            for config, runs in failing.items():
                bad = sum(runs[k]["status_errors"] for k in ENDPOINT_KEYS)
                peak = max(runs[k].get("peak_db_connections", 0) for k in ENDPOINT_KEYS)
                if any(runs[k].get("db_sampler_refused") for k in ENDPOINT_KEYS):
                    peak = "all free"
                parts.append(
                    f"{config.replace('daphne_x', '')} daphne process(es): {bad} HTTP errors, "
                    f"{runs.get('db_connections_refused', 0)} refused database connections "
                    f"logged, {peak} connection slots in use at the peak"
                )
            notes.append(
                "**Requests failed under load** (" + "; ".join(parts) + "). Under ASGI every "
                "request runs its sync view in a thread of its own (asgiref's "
                "ThreadSensitiveContext), and each thread opens its own database connection. "
                "With CONN_MAX_AGE = 0 that is at most one per request in flight "
                f"({load['clients']} here); with CONN_MAX_AGE > 0 the connections outlive their "
                "threads "
                "and pile up until PostgreSQL's max_connections (100 here) runs out, and "
                "requests fail with 500 (quick 500s also inflate requests/s: figures of a run "
                "with errors are not comparable). What fixes it: CONN_MAX_AGE = 0 under ASGI "
                "(Django's documentation advises against persistent connections in async "
                "servers) and, to save the connection set-up, "
                "Django's psycopg pool (`OPTIONS: {'pool': {'max_size': ...}}`, needs "
                "psycopg-pool), which caps and shares connections across threads."
            )
    if any(name.startswith("Dashboard") and name.endswith(": p99") for name in missed) and load:
        one = load["served"]["daphne_x1"]["dashboard"]
        two = load["served"].get("daphne_x2", {}).get("dashboard", one)
        clients = load["clients"]
        needed = clients * 1000 / 150
        cpu_d = one.get("daphne_cpu_ms_per_request", 0.0)
        cpu_m = one.get("machine_cpu_ms_per_request", 0.0)
        notes.append(
            f"**Dashboard p99 {one['p99_ms']:.0f} ms at {clients} clients (> 150 ms).** wrk "
            f"keeps {clients} requests in flight, so each waits behind the others: latency ≈ "
            f"{clients} / throughput (Little's law). One daphne process serves "
            f"{one['rps']:.0f} dashboards/s and is CPU-bound: its {clients} request threads "
            f"share one GIL, and it spends {cpu_d:.1f} ms of CPU per dashboard (the machine as "
            f"a whole {cpu_m:.1f} ms, with PostgreSQL and wrk). Two daphne processes (one per "
            f"core, SO_REUSEPORT) give {two['rps']:.0f}/s, p99 {two['p99_ms']:.0f} ms. "
            f"Meeting 150 ms at {clients} clients needs about {needed:.0f} dashboards/s, i.e. "
            f"at most {2000 / needed:.1f} ms of CPU per dashboard on 2 cores, about "
            f"{cpu_m / (2000 / needed):.0f}x less than now. What would meet it: a much "
            "cheaper dashboard (a one-off cProfile of the view in-process: ~11 ms of Django "
            "per request, about 40 % in its 10 queries - SQL compilation as much as "
            "execution - and 30 % in template rendering; e.g. one query for the desktop "
            "list, cached per-user template and quota parts, a lighter template), a worker "
            "per core, and pooled database connections - or a target "
            "stated for fewer concurrent clients per core."
        )
    if any("queries per request" in name for name in missed):
        notes.append("**Queries per request grow with the number of desktops** (an N+1 query).")
    return notes


# --- plots ------------------------------------------------------------------------------------


def plot_time_to_desktop(results: dict[str, Any], path: Path) -> Path | None:
    desk = results.get("sections", {}).get("desktop")
    if not desk:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = desk["median_steps_s"]
    direct = desk["direct"]
    d_start = sum(r["start_s"] for r in direct) / len(direct)
    d_frame = sum(r["frame_s"] for r in direct) / len(direct)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.6), height_ratios=[2, 1.6])
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    labels = ["API launch", "→ running", "→ VNC banner (relay)", "→ first frame (noVNC)"]
    left = 0.0
    for value, color, label in zip(steps.values(), colors, labels, strict=True):
        ax.barh("portal", value, left=left, color=color, label=label)
        left += value
    ax.barh("guest alone", d_start, color="#8c8c8c", label="clone+define+start")
    ax.barh("guest alone", d_frame, left=d_start, color="#bcbcbc", label="→ first frame (RFB)")
    ax.set_xlabel("seconds (median)")
    ax.set_title(
        f"Time to desktop: {desk['median_total_s']:.2f} s "
        f"(the portal adds {desk['portal_added_s']:.2f} s; target ≤ 1 s)"
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    storm = desk["storm"]
    for key, label, color in (
        ("starting_offsets_s", "cloned + defined", "#8172b2"),
        ("running_offsets_s", "running", "#dd8452"),
        ("frame_offsets_s", "console frame drawn", "#c44e52"),
    ):
        times = storm.get(key) or []
        if times:
            ax2.step([0, *times], range(len(times) + 1), where="post", label=label, color=color)
    ax2.set_xlabel("seconds from the launch")
    ax2.set_ylabel("desktops")
    ax2.set_title(f"Boot storm: {storm['desktops']} desktops launched at once")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_relay(results: dict[str, Any], path: Path) -> Path | None:
    relay = results.get("sections", {}).get("relay")
    if not relay:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["raw TCP", "Channels", "websockify"]
    keys = ["raw", "channels", "gateway"]
    colors = ["#8c8c8c", "#4c72b0", "#dd8452"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    tp = relay["throughput_mb_s"]
    axes[0].bar(names, [tp[k] for k in keys], color=colors)
    axes[0].set_title("Throughput, one stream (MB/s)")
    lat = relay["latency"]
    x = range(len(keys))
    axes[1].bar(
        [i - 0.2 for i in x], [lat[k]["p50_ms"] for k in keys], 0.4, label="p50", color=colors
    )
    axes[1].bar(
        [i + 0.2 for i in x],
        [lat[k]["p99_ms"] for k in keys],
        0.4,
        label="p99",
        color=colors,
        alpha=0.5,
        hatch="//",
    )
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("Round trip (ms): p50 solid, p99 hatched")
    mem = relay["memory"]
    axes[2].bar(
        ["Channels", "websockify\nRSS", "websockify\nPSS"],
        [
            mem["channels"]["per_session_kib"],
            mem["gateway"]["per_session_kib"],
            mem["gateway"]["per_session_pss_kib"],
        ],
        color=[colors[1], colors[2], colors[2]],
    )
    axes[2].axhline(200, color="#c44e52", linestyle="--", label="target 200 KiB")
    axes[2].set_yscale("log")
    axes[2].set_title(f"Memory per idle session (KiB), {mem['channels']['sessions']} sessions")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- writing -------------------------------------------------------------------------------------


def markdown(results: dict[str, Any], figs: list[Figure], plots: list[Path]) -> str:
    m = results["machine"]
    lines = [
        f"Run `{results['command']}` ({results['mode']}) on {m['date']}, "
        f"{results['duration_s']:.0f} s.",
        "",
        f"Portal commit {m.get('commit', '?')}. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, kernel "
        f"{m['kernel']}, guests under {m['virtualization']}; {m['qemu']}, libvirt {m['libvirt']}, "
        f"Python {m['python']}, Django {m['django']}.",
        "",
        "| Section | Figure | Value | Baseline (same run) | Ratio | Target | Met | Note |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for f in figs:
        baseline = f"{f.baseline}: {_fmt(f.baseline_value, f.unit)}" if f.baseline else ""
        ratio = f"{f.ratio:.3g}x" if f.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        lines.append(
            f"| {f.section} | {f.name} | {_fmt(f.value, f.unit)} | {baseline} | {ratio} | "
            f"{f.target} | {met} | {f.note} |"
        )
    errors = results.get("errors") or {}
    for section, text in errors.items():
        last = text.strip().splitlines()[-1]
        lines.append(f"| {section} | **failed** | | | | | | {last} |")
    notes = missed_notes(results, figs)
    if notes:
        lines += ["", "Missed targets:", ""] + [f"- {n}" for n in notes]
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(markdown_text: str, out: Path) -> bool:
    """Put the results table between the README's markers (plots linked from there)."""
    if not README.exists():
        return False
    text = README.read_text()
    if START not in text or END not in text:
        return False
    rel = out.resolve().relative_to(README.parent)
    body = markdown_text.replace("](", f"]({rel.as_posix()}/") if str(rel) != "." else markdown_text
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{body}{END}{tail}")
    return True


def write(results: dict[str, Any], out: Path, *, readme: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(results)
    plots = [
        p
        for p in (
            plot_time_to_desktop(results, out / "time_to_desktop.png"),
            plot_relay(results, out / "relay.png"),
        )
        if p is not None
    ]
    results["figures"] = [asdict(f) for f in figs]
    results["missed_target_notes"] = missed_notes(results, figs)
    write_json(out / "latest.json", results)
    text = markdown(results, figs, plots)
    (out / "latest.md").write_text(text)
    written = [out / "latest.json", out / "latest.md", *plots]
    if readme and update_readme(text, out):
        written.append(README)
    return written


if __name__ == "__main__":  # re-render a results folder: python -m bench.report bench/results
    import json
    import sys

    folder = Path(sys.argv[1])
    saved = json.loads((folder / "latest.json").read_text())
    for section in saved.get("sections", {}).values():  # JSON made the size keys strings
        for counts in section.get("queries", {}).get("counts", {}).values():
            for key in list(counts):
                counts[int(key)] = counts.pop(key)
    write(saved, folder, readme="--readme" in sys.argv)
