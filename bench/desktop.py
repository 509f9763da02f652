"""2. Time to desktop, and a boot storm.

One desktop: API launch (POST /api/desktops/) -> running (the worker cloned, defined and
started it) -> the VNC banner through the Channels relay -> the first framebuffer update
drawn by noVNC, in the portal's own console page in headless Chromium. The page's timings
come from an init script that wraps WebSocket (first message = the RFB banner) and canvas
drawImage (noVNC's first flip onto the visible canvas = the first frame).

Baseline in the same run: the same guest started straight through the hypervisor layer
(clone, define, start) and read by a bare RFB client over TCP until its first complete
FramebufferUpdate - the guest's own time to a first console frame, without the portal.

Boot storm: 10 employees launch one desktop each at the same moment; time until all run and
until every console page has drawn a frame, while two observers poll GET /api/desktops/
and the dashboard (10 requests/s each) for their latency.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import string
import struct
import threading
import time
from pathlib import Path
from typing import Any

import redis
import requests
from django.conf import settings
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.common import (
    LIBVIRT_URI,
    POOL,
    PREFIX,
    WORK,
    celery_command,
    daphne_command,
    free_port,
    log,
    median,
    percentile,
    running,
    server_stacks,
)
from bench.fixtures import make_user, session_key
from tests.browsernet import browser_network
from tests.requestlog import request_summary, track_requests
from vms.console.rfb import UpstreamHandshake
from vms.hypervisor import DomainSpec, GraphicsType, get_hypervisor
from vms.models import AuditEvent, Desktop, Host, Template

# Chromium as the suite runs it (tests/browser/chromium says why not /usr/bin/chromium).
CHROMIUM = str(Path(__file__).resolve().parent.parent / "tests" / "browser" / "chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

INIT_SCRIPT = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const marks = (window.__dpb = {});
  const Native = window.WebSocket;
  // A plain function returning the native socket: noVNC checks the prototype's own names.
  function TimedWebSocket(...args) {
    const socket = new Native(...args);
    if (String(args[0]).includes("/ws/console/")) {
      marks.ws_created = marks.ws_created || now();
      socket.addEventListener("open", () => { marks.ws_open = marks.ws_open || now(); });
      socket.addEventListener("message", () => { marks.banner = marks.banner || now(); });
    }
    return socket;
  }
  TimedWebSocket.prototype = Native.prototype;
  for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) {
    TimedWebSocket[name] = Native[name];
  }
  window.WebSocket = TimedWebSocket;
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    if (!marks.frame && marks.banner && this.canvas && this.canvas.isConnected) {
      marks.frame = now();
    }
    return draw.apply(this, args);
  };
})();
"""

GIB = 1024**3


class Portal:
    """daphne + a Celery worker on the bench database; HTTP sessions as a browser has them."""

    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, key: str) -> requests.Session:
        token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        session = requests.Session()
        session.cookies.set("sessionid", key, domain="127.0.0.1")
        session.cookies.set("csrftoken", token, domain="127.0.0.1")
        session.headers["X-CSRFToken"] = token
        return session


def _poll_status(desktop_ids: list[str], until: str, timeout: float) -> dict[str, float]:
    """Poll the database every 20 ms; return when each desktop first showed `until`."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(desktop_ids) and time.monotonic() < deadline:
        rows = Desktop.objects.filter(pk__in=desktop_ids).values_list("pk", "status", "last_error")
        for pk, status, error in rows:
            if status == until and str(pk) not in seen:
                seen[str(pk)] = time.time()
            if status == "error":
                raise RuntimeError(f"desktop {pk} failed: {error}")
        time.sleep(0.02)
    return seen


def _audit_times(desktop_ids: list[str]) -> dict[str, dict[str, float]]:
    """When the services recorded each desktop's creation, 'starting' and 'running'."""
    rows = AuditEvent.objects.filter(
        desktop_id__in=desktop_ids,
        action__in=["desktop.create", "desktop.starting", "desktop.running"],
    ).values_list("desktop_id", "action", "created_at")
    times: dict[str, dict[str, float]] = {pk: {} for pk in desktop_ids}
    for pk, action, created_at in rows:
        times[str(pk)].setdefault(action.removeprefix("desktop."), created_at.timestamp())
    return times


def _launch(api: requests.Session, base: str, template: Template) -> tuple[str, float, float]:
    t0 = time.time()
    response = api.post(f"{base}/api/desktops/", json={"template": template.pk}, timeout=60)
    accepted = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"launch refused: {response.status_code} {response.text[:300]}")
    return str(response.json()["id"]), t0, accepted


def _delete(api: requests.Session, base: str, desktop_ids: list[str]) -> None:
    for pk in desktop_ids:
        api.delete(f"{base}/api/desktops/{pk}/", timeout=60)
    _poll_status(desktop_ids, "deleted", timeout=120)


FRAME_OR_FAILURE = """() => window.__dpb && (window.__dpb.frame ||
    document.body.dataset.console === "disconnected" ||
    (document.getElementById("console-status") || {dataset: {}}).dataset.kind === "error")"""


def _console_context(browser: Browser, key: str, base: str, **options: Any) -> BrowserContext:
    """A logged-in context with the timing script, that keeps what its requests came to."""
    context = browser.new_context(**options)
    context.add_cookies([{"name": "sessionid", "value": key, "url": base}])
    context.add_init_script(INIT_SCRIPT)
    track_requests(context)
    return context


def _page_marks(page: Page, timeout_ms: float = 90_000) -> dict[str, float]:
    """The page's timings once noVNC drew its first frame.

    A console that fails is reconnected with the page's own Reconnect button, as a person
    would (at most 3 times; a page whose scripts did not load is reloaded, as it asks);
    the time lost stays in the figures and the count is reported.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    reconnects = 0
    while True:
        remaining = max(1.0, (deadline - time.monotonic()) * 1000)
        try:
            page.wait_for_function(FRAME_OR_FAILURE, timeout=remaining, polling=20)
        except PlaywrightTimeout:
            status = page.evaluate(
                "[JSON.stringify(window.__dpb), (document.getElementById('console-status') "
                "|| {}).textContent]"
            )
            page.screenshot(path=str(WORK / "no-frame.png"))
            raise RuntimeError(
                f"no console frame on {page.url}: {status}; {request_summary(page)}"
            ) from None
        marks: dict[str, float] = page.evaluate("window.__dpb")
        if marks.get("frame"):
            break
        if reconnects >= 3:
            status = page.inner_text("#console-status")
            raise RuntimeError(f"console failed {reconnects + 1} times on {page.url}: {status}")
        reconnects += 1
        if page.evaluate("document.body.dataset.scripts === 'failed'"):
            # static/js/load-check.js: a module never arrived; the page asks for a reload.
            log(f"console page's scripts failed ({request_summary(page)}); reloading it")
            page.reload(wait_until="commit")
            continue
        log(f"console failed ({page.inner_text('#console-status')}); pressing Reconnect")
        page.wait_for_timeout(1000)
        page.evaluate(
            "document.body.dataset.console = 'retrying'; "
            "document.getElementById('console-status').dataset.kind = 'info'"
        )
        page.click("#btn-reconnect")
    result = {k: v / 1000.0 for k, v in marks.items()}  # epoch seconds
    result["reconnects"] = reconnects
    return result


def _one_desktop(portal: Portal, browser: Any, template: Template, key: str) -> dict[str, Any]:
    api = portal.api(key)
    context = _console_context(browser, key, portal.base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{portal.base}/")  # warm: the first page of a fresh context loads its assets
    desktop_id = ""
    try:
        desktop_id, t0, accepted = _launch(api, portal.base, template)
        _poll_status([desktop_id], "running", timeout=120)
        audit = _audit_times([desktop_id])[desktop_id]
        t_running = audit["running"]
        page.goto(f"{portal.base}/desktops/{desktop_id}/console/", wait_until="commit")
        marks = _page_marks(page)
    finally:
        context.close()
        if desktop_id:
            _delete(api, portal.base, [desktop_id])
    steps = {
        "api_launch": accepted - t0,
        "provisioning": t_running - accepted,
        "console_open": marks["banner"] - t_running,
        "first_frame": marks["frame"] - marks["banner"],
    }
    detail = {
        "worker_queue_clone_define": audit["starting"] - accepted,
        "worker_qemu_start": audit["running"] - audit["starting"],
        "page_and_ticket": marks["ws_created"] - t_running,
        "relay_to_banner": marks["banner"] - marks["ws_created"],
    }
    return {
        "total_s": marks["frame"] - t0,
        "steps_s": steps,
        "detail_s": detail,
        "reconnects": int(marks["reconnects"]),
    }


def _direct_boot(template: Template, index: int) -> dict[str, float]:
    """The guest alone: clone, define, start through the hypervisor layer; bare RFB client."""
    hv = get_hypervisor(LIBVIRT_URI)
    name = f"{PREFIX}direct-{index}"
    password = secrets.token_urlsafe(6)[:8]
    t0 = time.time()
    try:
        vol = hv.clone_volume(
            pool=POOL, name=f"{name}.qcow2", base_path=template.base_image_path,
            capacity_bytes=template.disk_gib * GIB,
        )  # fmt: skip
        hv.define_domain(
            DomainSpec(
                name=name,
                vcpus=template.vcpus,
                memory_mib=template.memory_mib,
                disk_path=vol.path,
                graphics=GraphicsType.vnc,
                virt_type="kvm" if hv.kvm_available() else "qemu",
                title=name,
                description="bench: the guest without the portal",
                desktop_id=name,
                console_password=password,
                console_password_valid_to=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            )
        )
        hv.start(name=name)
        t_started = time.time()
        endpoint = hv.console_endpoint(name=name)
        _first_frame(endpoint.host, endpoint.port, password)
        t_frame = time.time()
    finally:
        hv.undefine(name=name)
        hv.delete_volume(pool=POOL, name=f"{name}.qcow2")
    return {"total_s": t_frame - t0, "start_s": t_started - t0, "frame_s": t_frame - t_started}


def _first_frame(host: str, port: int, password: str) -> None:
    """Connect, authenticate, ask for the whole screen and read the first FramebufferUpdate."""
    with socket.create_connection((host, port), timeout=30) as sock:
        handshake = UpstreamHandshake(password)
        while not handshake.done:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("QEMU closed during the handshake")
            reply = handshake.receive(data)
            if reply:
                sock.sendall(reply)
        width, height = struct.unpack_from(">HH", handshake.server_init)
        bytes_per_pixel = handshake.server_init[4] // 8
        sock.sendall(b"\x03\x00" + struct.pack(">HHHH", 0, 0, width, height))
        buffer = bytearray(handshake.leftover)

        def need(count: int) -> bytes:
            while len(buffer) < count:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("QEMU closed before the first frame")
                buffer.extend(chunk)
            data = bytes(buffer[:count])
            del buffer[:count]
            return data

        while True:
            kind = need(1)[0]
            if kind == 0:  # FramebufferUpdate: raw rectangles (no other encoding was asked)
                (rects,) = struct.unpack(">xH", need(3))
                for _ in range(rects):
                    _, _, w, h, encoding = struct.unpack(">HHHHi", need(12))
                    if encoding == 0:
                        need(w * h * bytes_per_pixel)
                return
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                (length,) = struct.unpack(">3xI", need(7))
                need(length)
                continue
            raise ConnectionError(f"unexpected server message {kind}")


class Observer(threading.Thread):
    """GET one URL ten times a second, recording each latency under the current phase."""

    def __init__(self, api: requests.Session, url: str) -> None:
        super().__init__(daemon=True)
        self.api, self.url = api, url
        self.phase = "idle"
        self.latencies_ms: dict[str, list[float]] = {"idle": [], "storm": []}
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            phase = self.phase
            started = time.perf_counter()
            try:
                ok = self.api.get(self.url, timeout=30, allow_redirects=False).status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            if ok:
                self.latencies_ms[phase].append(elapsed)
            else:
                self.failures += 1
            self.stop.wait(max(0.0, 0.1 - elapsed / 1000))

    def summary(self) -> dict[str, Any]:
        idle, storm = self.latencies_ms["idle"], self.latencies_ms["storm"]
        return {
            "p50": percentile(storm, 50),
            "p99": percentile(storm, 99),
            "samples": len(storm),
            "failures": self.failures,
            "idle_p50": percentile(idle, 50),
            "idle_p99": percentile(idle, 99),
            "idle_samples": len(idle),
        }


def _storm(portal: Portal, browser: Any, template: Template, keys: list[str]) -> dict[str, Any]:
    apis = [portal.api(key) for key in keys]
    pages = []
    for key in keys:
        context = _console_context(
            browser, key, portal.base, viewport={"width": 1024, "height": 768}
        )
        page = context.new_page()
        page.goto(f"{portal.base}/")
        pages.append(page)
    observers = [
        Observer(portal.api(keys[0]), f"{portal.base}/api/desktops/"),
        Observer(portal.api(keys[0]), f"{portal.base}/"),
    ]
    for observer in observers:
        observer.start()
    time.sleep(3)  # the observers' baseline: the same requests before the storm
    for observer in observers:
        observer.phase = "storm"
    barrier = threading.Barrier(len(keys))
    launched: list[Any] = [None] * len(keys)

    def launch(i: int) -> None:
        barrier.wait()
        try:
            launched[i] = _launch(apis[i], portal.base, template)
        except Exception as exc:
            launched[i] = exc

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(len(keys))]
    t0 = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures = [r for r in launched if isinstance(r, Exception)]
    ids = [r[0] for r in launched if not isinstance(r, Exception)]
    try:
        if failures:
            raise RuntimeError(f"{len(failures)} launches failed: {failures[0]}")
        running_at: dict[str, float] = {}
        opened: set[str] = set()
        deadline = time.monotonic() + 300
        while len(opened) < len(ids) and time.monotonic() < deadline:
            running_at.update(
                {k: v for k, v in _poll_status(ids, "running", timeout=0.05).items()
                 if k not in running_at}
            )  # fmt: skip
            for i, pk in enumerate(ids):
                if pk in running_at and pk not in opened:
                    pages[i].goto(f"{portal.base}/desktops/{pk}/console/", wait_until="commit")
                    opened.add(pk)
        if len(opened) < len(ids):
            raise RuntimeError("not every storm desktop reached running in 300 s")
        page_marks = [_page_marks(page, 180_000) for page in pages[: len(ids)]]
        frames = [marks["frame"] for marks in page_marks]
    finally:
        for observer in observers:
            observer.stop.set()
        for observer in observers:
            observer.join()
        for page in pages:
            page.context.close()
        for api, pk in zip(apis, ids, strict=False):
            api.delete(f"{portal.base}/api/desktops/{pk}/", timeout=60)
        _poll_status(ids, "deleted", timeout=180)
    audit = _audit_times(ids)
    starting = sorted(audit[pk]["starting"] - t0 for pk in ids)
    running = sorted(audit[pk]["running"] - t0 for pk in ids)
    return {
        "desktops": len(ids),
        "starting_offsets_s": starting,
        "running_offsets_s": running,
        "frame_offsets_s": sorted(frame - t0 for frame in frames),
        "qemu_start_s": sorted(audit[pk]["running"] - audit[pk]["starting"] for pk in ids),
        "all_running_s": running[-1],
        "all_frames_s": max(frames) - t0,
        "reconnects": int(sum(marks["reconnects"] for marks in page_marks)),
        "api_list_ms": observers[0].summary(),
        "dashboard_ms": observers[1].summary(),
    }


def run(*, template: Template, host: Host, quick: bool) -> dict[str, Any]:
    singles, directs, storm_size = (1, 1, 2) if quick else (5, 3, 10)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # no stale tasks for the worker
    key = session_key(make_user("ttd-employee"))
    storm_keys = [session_key(make_user(f"storm-{i:02d}")) for i in range(storm_size)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    portal = Portal(base)
    results: dict[str, Any] = {"runs": [], "direct": []}
    with (
        running(celery_command("bench-worker"), name="desktop-worker"),
        running(daphne_command(port), name="desktop-daphne", port=port) as daphne,
        browser_network(chromium=CHROMIUM, ports=[port]) as executable,
        sync_playwright() as playwright,
    ):
        # In a network namespace of its own: tests/browsernet.py says why.
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        _wait_for_worker()
        try:
            for i in range(max(singles, directs)):
                if i < singles:
                    log(f"desktop: time to desktop {i + 1}/{singles}")
                    results["runs"].append(_one_desktop(portal, browser, template, key))
                if i < directs:
                    log(f"desktop: the guest alone {i + 1}/{directs}")
                    results["direct"].append(_direct_boot(template, i))
            log(f"desktop: boot storm of {storm_size}")
            results["storm"] = _storm(portal, browser, template, storm_keys)
        except RuntimeError as exc:
            stacks = server_stacks(daphne)
            raise RuntimeError(f"{exc}\nthe portal server's stacks:\n{stacks}") from exc
        finally:
            browser.close()
    runs = results["runs"]
    results["median_total_s"] = median(r["total_s"] for r in runs)
    results["median_steps_s"] = {
        step: median(r["steps_s"][step] for r in runs) for step in runs[0]["steps_s"]
    }
    results["median_detail_s"] = {
        step: median(r["detail_s"][step] for r in runs) for step in runs[0]["detail_s"]
    }
    step_sum = sum(results["median_steps_s"].values())
    results["step_shares"] = {k: v / step_sum for k, v in results["median_steps_s"].items()}
    results["direct_median_s"] = median(r["total_s"] for r in results["direct"])
    results["portal_added_s"] = results["median_total_s"] - results["direct_median_s"]
    results["storm"]["ratio_all_running_to_single"] = results["storm"]["all_running_s"] / (
        results["median_steps_s"]["api_launch"] + results["median_steps_s"]["provisioning"]
    )
    return results


def _wait_for_worker() -> None:
    from portal.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError("the bench's Celery worker did not answer within 60 s")
