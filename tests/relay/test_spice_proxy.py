"""The SPICE proxy (`manage.py spiceproxy`, HTTP CONNECT) that .vv files point at: what it
refuses, its limits, one connection set per file, its own end of every SPICE link (the
file's password is a display token only the proxy takes), and a real remote-viewer under
Xvfb showing a real QEMU guest through it (read back by OCR)."""

from __future__ import annotations

import base64
import configparser
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from tests.browser.conftest import GUEST_BANNER, wait_for_boot, wait_for_text
from tests.fixtures import make_desktop, wait_for_status
from tests.relay.conftest import mint_ticket
from tests.servers import var_path
from vms.console.spicelink import (
    CAP_AUTH_SELECTION,
    CAP_MINI_HEADER,
    CHANNEL_DISPLAY,
    CHANNEL_INPUTS,
    CHANNEL_MAIN,
    HEADER,
    LINK_ERR_BAD_CONNECTION_ID,
    LINK_ERR_PERMISSION_DENIED,
    LINK_OK,
    build_mess,
    encrypt_ticket,
    parse_reply,
)
from vms.hypervisor import ConsoleEndpoint, GraphicsType
from vms.models import AuditEvent, ConsoleSession, Desktop, DesktopStatus, Template
from vms.selectors import SPICE_SET_OPEN_ACTION, console_watchers
from vms.services.consoles import console_arm, console_session_end, console_sessions_reap
from vms.services.consoles.leases import lease_seconds
from vms.services.consoles.spiceproxy import GRANT_PREFIX, credential_key, spice_grant_issue
from vms.services.core.audit import audit_record
from vms.services.desktops.requests import desktop_act

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def proxy_url(settings: Any, spice_proxy: int) -> None:
    """The .vv files the portal issues here name the test's proxy (plain SPICE)."""
    settings.SPICE_PROXY_URL, settings.SPICE_TLS_DIR = f"http://127.0.0.1:{spice_proxy}", ""


# --- a raw proxy client ---------------------------------------------------------------------


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"spice:{token}".encode()).decode()


def connect_request(target: str, token: str | None) -> bytes:
    """A CONNECT as remote-viewer (GLib) sends it."""
    lines = [f"CONNECT {target} HTTP/1.0", f"Host: {target}"]
    if token is not None:
        lines.append(f"Proxy-Authorization: {_basic(token)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, str]:
    """The proxy's status code and its whole answer (head and body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.decode("latin-1")
    if not head.startswith("HTTP/1.1 200"):
        sock.settimeout(2)
        try:
            while chunk := sock.recv(4096):
                head += chunk.decode("latin-1")
        except ConnectionResetError:  # closed with the client's unread bytes (431)
            return int(head.split(" ", 2)[1]), head
    return int(head.split(" ", 2)[1]), head


def ask(port: int, request: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        return read_answer(sock)


def token_of(vv: str) -> str:
    """The proxy credential in a .vv file's `proxy=` URL."""
    proxy = vv_fields(vv)["proxy"]
    return proxy.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


FILE_TARGET = "127.0.0.1:5900"  # what files name here: the proxy's host, the plain port


def file_target(vv: str) -> str:
    """The address a .vv file tells remote-viewer to CONNECT to."""
    file = vv_fields(vv)
    return f"{file['host']}:{file.get('port') or file['tls-port']}"


def vv_fields(vv: str) -> configparser.SectionProxy:
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(vv)
    return config["virt-viewer"]


# --- grants without a guest: enough for every refusal before the guest is reached -----------


@pytest.fixture
def grant(employee, fake_template, fake_host) -> tuple[str, ConsoleSession]:
    """A SPICE file's proxy credential for a running desktop row (no guest behind it)."""
    desktop = make_desktop(employee, fake_template, name="row", status=DesktopStatus.RUNNING)
    session = ConsoleSession.objects.create(
        desktop=desktop, user=employee, mode="full", relay="spice-file"
    )
    endpoint = ConsoleEndpoint(type=GraphicsType.spice, host="127.0.0.1", port=5999, tls_port=None)
    return spice_grant_issue(session=session, endpoint=endpoint), session


def test_only_connect_is_served(spice_proxy) -> None:
    status, answer = ask(spice_proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and "Allow: CONNECT" in answer and "CONNECT only" in answer
    status, _ = ask(spice_proxy, b"CONNECT nowhere HTTP/1.1\r\n\r\n")
    assert status == 400


def test_a_connect_without_the_files_credential_is_407(spice_proxy) -> None:
    status, answer = ask(spice_proxy, connect_request("127.0.0.1:5999", None))
    assert status == 407 and 'Proxy-Authenticate: Basic realm="desktop-portal"' in answer
    status, _ = ask(spice_proxy, connect_request("127.0.0.1:5999", secrets.token_urlsafe(32)))
    assert status == 403  # a credential no file carries


def test_an_address_the_file_does_not_name_is_refused(spice_proxy, grant) -> None:
    token, session = grant
    # The file names the proxy's host and port 5900; the display's own address is no key.
    for target in ("127.0.0.1:5999", "127.0.0.1:5901", "127.0.0.2:5900", "localhost:5900"):
        status, answer = ask(spice_proxy, connect_request(target, token))
        assert status == 403 and "does not name that address" in answer, target
    session.refresh_from_db()
    assert session.ended_at is None  # refusals open nothing


def test_an_expired_file_is_refused(spice_proxy, grant) -> None:
    token, _session = grant
    store = redis.Redis.from_url(django_settings.REDIS_URL)
    key = GRANT_PREFIX + credential_key(token)
    stored = json.loads(store.get(key))
    stored["issued"] -= 61  # issued a minute and a second ago
    store.set(key, json.dumps(stored), keepttl=True)
    status, answer = ask(spice_proxy, connect_request(FILE_TARGET, token))
    assert status == 410 and "expired" in answer


def test_the_proxy_limits_head_size_time_and_connections(spice_proxy) -> None:
    huge = b"CONNECT 127.0.0.1:5999 HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert ask(spice_proxy, huge)[0] == 431
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", spice_proxy), timeout=20) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:5999 HTTP/1.1\r\n")  # and then nothing
        assert read_answer(sock)[0] == 408
    assert 2.5 < time.monotonic() - started < 10
    idle = [socket.create_connection(("127.0.0.1", spice_proxy), timeout=20) for _ in range(12)]
    try:
        time.sleep(0.5)
        assert ask(spice_proxy, connect_request("127.0.0.1:5999", None))[0] == 503
    finally:
        for sock in idle:
            sock.close()


def test_reconcile_closes_a_set_whose_proxy_went_away(grant) -> None:
    """A set the proxy opened outlives the file's minute only while its lease is renewed."""
    _token, session = grant
    audit_record(
        action=SPICE_SET_OPEN_ACTION,
        actor=session.user,
        desktop=session.desktop,
        session=session.pk,
        spice_set=str(session.pk),
    )  # what the proxy records when the set opens; then the proxy is gone (no lease)
    later = timezone.now() + timedelta(seconds=61)
    assert console_sessions_reap(now=later) == 0  # a missing lease is only noted at first
    assert ended(session.pk) is None
    assert console_sessions_reap(now=later + timedelta(seconds=lease_seconds())) == 1
    assert ConsoleSession.objects.get(pk=session.pk).close_reason == (
        "the relay carrying it went away"
    )


# --- a real SPICE guest -------------------------------------------------------------------------


def spice_desktop(api: Any, template: Template) -> Desktop:
    Template.objects.filter(pk=template.pk).update(console_type="spice")
    launched = api.post("/api/desktops/", {"template": template.pk}, format="json")
    return wait_for_status(launched.json()["id"], "running")


def download_vv(user: Any, desktop: Desktop, **ticket: str) -> str:
    """A .vv file from the portal, as the console page downloads it."""
    minted = mint_ticket(user, desktop, **ticket)["ticket"]
    browser = Client()
    browser.force_login(user)
    response = browser.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": minted})
    assert response.status_code == 200, response.content
    return response.content.decode()


def wait_until(check: Any, *, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def ended(session_id: int) -> ConsoleSession | None:
    session = ConsoleSession.objects.get(pk=session_id)
    return session if session.ended_at is not None else None


@contextmanager
def stopped_at_end(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop and wait for a process the test started, whatever happens."""
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def xvfb() -> Iterator[str]:
    """A virtual X screen, ready when Xvfb itself says so: it picks a free display and
    writes its number to `-displayfd` once it accepts clients (a socket file in
    /tmp/.X11-unix can exist before that, or be left over from an earlier server)."""
    command = ["Xvfb", "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-displayfd"]
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as ready, open(var_path("test-xvfb.log"), "wb") as log:
        try:
            process = subprocess.Popen(
                [*command, str(write_end)], pass_fds=(write_end,), stderr=log
            )
        finally:
            os.close(write_end)
        with stopped_at_end(process):
            readable, _, _ = select.select([ready], [], [], 30)
            number = ready.readline().strip() if readable else b""
            assert number.isdigit(), f"Xvfb is not ready; see var/test-xvfb.log ({number!r})"
            yield f":{number.decode()}"


def test_virtual_screens_started_together_are_ready_and_each_their_own() -> None:
    """Two virtual screens started at once (two runs on one machine): each is a display of
    its own that serves a client as soon as xvfb() yields it."""
    both_up = threading.Barrier(2, timeout=60)

    def one_screen(_: int) -> tuple[str, int]:
        with xvfb() as display:
            shot = screenshot(display)
            both_up.wait()
            return display, len(shot)

    with ThreadPoolExecutor(max_workers=2) as pool:
        (first, first_size), (second, second_size) = pool.map(one_screen, range(2))
    assert first != second and first_size > 0 and second_size > 0


def proxy_log() -> str:
    return var_path("test-spiceproxy.log").read_text()


def screenshot(display: str) -> bytes:
    done = subprocess.run(
        ["import", "-display", display, "-window", "root", "png:-"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout


@pytest.mark.libvirt
def test_remote_viewer_shows_the_guest_through_the_proxy(
    spice_proxy,
    celery_worker,
    api_for,
    employee,
    other_employee,
    demo_template,
    hypervisor,
    tmp_path,
) -> None:
    desktop = spice_desktop(api_for(employee), demo_template)
    # The guest has booted before the file is made: the file's password lasts 60 s.
    wait_for_boot(lambda: hypervisor.screenshot(name=desktop.domain_name))
    logged_before = len(proxy_log())
    vv = download_vv(employee, desktop)
    file = vv_fields(vv)
    assert (file["host"], file["port"]) == ("127.0.0.1", "5900")  # the proxy's, not the host's
    assert file["proxy"].startswith("spice:", len("http://"))
    assert file["proxy"].endswith(f"@127.0.0.1:{spice_proxy}")
    session = ConsoleSession.objects.get(desktop=desktop)
    (tmp_path / "desktop.vv").write_text(vv)

    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    with xvfb() as display:
        viewer = subprocess.Popen(
            ["remote-viewer", f"--display={display}", str(tmp_path / "desktop.vv")],
            env=env,
            stdout=open(var_path("test-remote-viewer.log"), "wb"),
            stderr=subprocess.STDOUT,
        )
        with stopped_at_end(viewer):
            try:
                text = wait_for_text(lambda: screenshot(display), GUEST_BANNER, timeout=90)
            except AssertionError as failure:
                said = var_path("test-remote-viewer.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"{failure}\nremote-viewer said:\n{said}") from None
            var_path("remote-viewer.png").write_bytes(screenshot(display))
            assert viewer.poll() is None, text
            assert not (tmp_path / "desktop.vv").exists()  # delete-this-file=1 was honoured
            assert ended(session.pk) is None
    # The viewer is gone: its set ended, and the session with it, counting the bytes.
    wait_until(lambda: ended(session.pk) is not None)
    closed = ConsoleSession.objects.get(pk=session.pk)
    assert closed.close_reason == "remote-viewer disconnected"
    assert closed.bytes_from_guest > 10_000 and closed.bytes_to_guest > 100
    target = file_target(vv)
    status, answer = ask(spice_proxy, connect_request(target, token_of(vv)))
    assert status == 410 and "used already" in answer  # a second use

    # Another user's file reaches only their own desktop (the credential picks the display,
    # never the address asked for), never this one.
    theirs = make_desktop(other_employee, demo_template, name="theirs", status="running")
    their_session = ConsoleSession.objects.create(
        desktop=theirs, user=other_employee, mode="full", relay="spice-file"
    )
    fake = ConsoleEndpoint(type=GraphicsType.spice, host="127.0.0.1", port=1, tls_port=None)
    their_token = spice_grant_issue(session=their_session, endpoint=fake)
    assert ask(spice_proxy, connect_request(target, their_token))[0] != 200
    assert (
        not AuditEvent.objects.filter(action=SPICE_SET_OPEN_ACTION, desktop=desktop)
        .exclude(actor=employee)
        .exists()
    )
    browser = Client()
    browser.force_login(other_employee)
    assert browser.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": "x"}).status_code == 404
    log = proxy_log()
    assert token_of(vv) not in log and file["password"] not in log and "opened from" in log
    log = log[logged_before:]
    assert "channel closed" not in log  # every channel of remote-viewer linked


def _open_set(port: int, target: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(connect_request(target, token))
    status, answer = read_answer(sock)
    assert status == 200, answer
    return sock


def _closed_by_proxy(sock: socket.socket, *, timeout: float) -> bool:
    """Whether the proxy closes the connection within `timeout` (whatever QEMU still sends)."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


# --- a raw SPICE client (as remote-viewer links: auth selection, mini header) ----------------

CAPS = ((1 << CAP_AUTH_SELECTION) | (1 << CAP_MINI_HEADER),)
MINI = struct.Struct("<HI")
MSG_MAIN_INIT, MSGC_DISPLAY_INIT = 103, 101
DISPLAY_INIT = struct.pack("<BQBI", 1, 10 << 20, 0, 0)


def _exactly(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        assert chunk, "closed"
        data += chunk
    return data


def spice_link(
    sock: socket.socket, *, kind: int, connection_id: int, password: str
) -> tuple[int, bytes]:
    """Link a channel with `password`: the link error or result, and the key offered."""
    sock.settimeout(20)
    sock.sendall(
        build_mess(connection_id=connection_id, channel_type=kind, channel_id=0, common=CAPS)
    )
    size = HEADER.unpack(_exactly(sock, HEADER.size))[3]
    reply = parse_reply(_exactly(sock, size))
    if reply.error != LINK_OK:
        return reply.error, b""
    sock.sendall(struct.pack("<I", 1) + encrypt_ticket(pub_key=reply.pub_key, password=password))
    return struct.unpack("<I", _exactly(sock, 4))[0], reply.pub_key


def spice_session_of(main: socket.socket) -> int:
    """The SPICE session id in the main channel's SPICE_MSG_MAIN_INIT."""
    while True:
        kind, size = MINI.unpack(_exactly(main, MINI.size))
        body = _exactly(main, size)
        if kind == MSG_MAIN_INIT:
            return int(struct.unpack_from("<I", body)[0])


def qemu_key(endpoint: ConsoleEndpoint) -> bytes:
    """The key QEMU itself offers (a link begun and dropped before its ticket)."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=20) as sock:
        sock.sendall(
            build_mess(connection_id=0, channel_type=CHANNEL_MAIN, channel_id=0, common=CAPS)
        )
        size = HEADER.unpack(_exactly(sock, HEADER.size))[3]
        return parse_reply(_exactly(sock, size)).pub_key


def display_password(desktop: Desktop) -> str:
    """The password QEMU's display has now (libvirt's secure XML)."""
    conn = libvirt.open(django_settings.LIBVIRT_URI)
    try:
        xml = conn.lookupByName(desktop.domain_name).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    finally:
        conn.close()
    graphics = ET.fromstring(xml).find("./devices/graphics")  # noqa: S314  # libvirt's own
    assert graphics is not None
    return graphics.get("passwd", "")


@pytest.mark.libvirt
def test_the_file_holds_a_token_only_the_proxy_takes_never_the_display_password(
    spice_proxy, celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    desktop = spice_desktop(api_for(employee), demo_template)
    endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    before = display_password(desktop)
    vv = download_vv(employee, desktop)
    target = file_target(vv)
    token = vv_fields(vv)["password"]
    assert display_password(desktop) == before != token  # the file armed nothing
    assert "tls-port" not in vv_fields(vv)

    # The token does not open QEMU's display without the proxy (a stolen file is no key).
    with socket.create_connection((endpoint.host, endpoint.port), timeout=20) as direct:
        assert spice_link(direct, kind=CHANNEL_MAIN, connection_id=0, password=token)[0] == (
            LINK_ERR_PERMISSION_DENIED
        )
    # Through the proxy it does: the proxy answers the link with its own key.
    with _open_set(spice_proxy, target, token_of(vv)) as main:
        result, key = spice_link(main, kind=CHANNEL_MAIN, connection_id=0, password=token)
        assert result == LINK_OK and key != qemu_key(endpoint)
        spice_session = spice_session_of(main)
        with _open_set(spice_proxy, target, token_of(vv)) as display:
            shown = spice_link(
                display, kind=CHANNEL_DISPLAY, connection_id=spice_session, password=token
            )
            assert shown[0] == LINK_OK
            display.sendall(MINI.pack(MSGC_DISPLAY_INIT, len(DISPLAY_INIT)) + DISPLAY_INIT)
            assert len(display.recv(65536)) > 0  # QEMU serves the display
            with _open_set(spice_proxy, target, token_of(vv)) as stranger:
                refused = spice_link(
                    stranger, kind=CHANNEL_INPUTS, connection_id=spice_session + 1, password=token
                )
                assert refused[0] == LINK_ERR_BAD_CONNECTION_ID  # not this set's SPICE session
    session = ConsoleSession.objects.get(desktop=desktop)
    wait_until(lambda: ended(session.pk) is not None)

    # A wrong token, or the display's real password, is refused and ends the file's set.
    vv = download_vv(employee, desktop)
    with _open_set(spice_proxy, target, token_of(vv)) as main:
        assert spice_link(main, kind=CHANNEL_MAIN, connection_id=0, password="guess")[0] == (
            LINK_ERR_PERMISSION_DENIED
        )
        assert _closed_by_proxy(main, timeout=10)
    assert ask(spice_proxy, connect_request(target, token_of(vv)))[0] == 410
    vv = download_vv(employee, desktop)
    latest = ConsoleSession.objects.filter(desktop=desktop).latest("started_at")
    with console_arm(session=latest) as access:  # what only the server knows
        real = access.password
    with _open_set(spice_proxy, target, token_of(vv)) as main:
        assert spice_link(main, kind=CHANNEL_MAIN, connection_id=0, password=real)[0] == (
            LINK_ERR_PERMISSION_DENIED
        )
    log = proxy_log()
    assert token not in log and real not in log and "a wrong display token" in log


@pytest.mark.libvirt
def test_a_helpdesk_set_keeps_the_notice_until_the_owner_ends_it_or_the_desktop_stops(
    spice_proxy, celery_worker, api_for, employee, helpdesk_user, demo_template, hypervisor
) -> None:
    desktop = spice_desktop(api_for(employee), demo_template)
    vv = download_vv(helpdesk_user, desktop, mode="full", reason="ticket 13")
    target = file_target(vv)
    session = ConsoleSession.objects.get(desktop=desktop)
    with (
        _open_set(spice_proxy, target, token_of(vv)) as first,
        _open_set(spice_proxy, target, token_of(vv)) as second,
    ):  # a second channel joins the set
        password = vv_fields(vv)["password"]
        assert spice_link(first, kind=CHANNEL_MAIN, connection_id=0, password=password)[0] == 0
        spice_session = spice_session_of(first)
        linked = spice_link(
            second, kind=CHANNEL_DISPLAY, connection_id=spice_session, password=password
        )
        assert linked[0] == LINK_OK
        second.sendall(MINI.pack(MSGC_DISPLAY_INIT, len(DISPLAY_INIT)) + DISPLAY_INIT)
        [notice] = console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)]
        assert notice["user"] == helpdesk_user.username and notice["spice_client"]
        assert "until" not in notice  # the notice stays while the set lives
        console_sessions_reap(now=timezone.now() + timedelta(seconds=61))
        assert ended(session.pk) is None  # past the file's minute: the set still lives
        session.refresh_from_db()
        console_session_end(actor=employee, session=session)
        assert _closed_by_proxy(first, timeout=10) and _closed_by_proxy(second, timeout=5)
    assert ConsoleSession.objects.get(pk=session.pk).close_reason == "ended by the desktop's owner"
    assert ask(spice_proxy, connect_request(target, token_of(vv)))[0] == 410

    vv = download_vv(helpdesk_user, desktop, mode="full", reason="ticket 14")
    with _open_set(spice_proxy, target, token_of(vv)) as channel:
        password = vv_fields(vv)["password"]
        assert spice_link(channel, kind=CHANNEL_MAIN, connection_id=0, password=password)[0] == 0
        desktop_act(actor=employee, desktop=desktop, action="stop")
        assert _closed_by_proxy(channel, timeout=30)
    stopped = ConsoleSession.objects.filter(desktop=desktop).order_by("-started_at").first()
    assert stopped is not None
    wait_until(lambda: ended(stopped.pk) is not None)
    assert "The desktop is" in ConsoleSession.objects.get(pk=stopped.pk).close_reason
    wait_for_status(desktop.pk, "stopped")


@pytest.mark.libvirt
def test_a_display_channel_closed_before_or_at_its_init_does_not_stop_the_guests_spice(
    spice_proxy, celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    """QEMU 7.2's SPICE worker crash (docs/threat-model.md), triggered through the proxy:
    a display channel closed before its init, one closed at its init, then a new session
    at once, which the same QEMU serves."""
    desktop = spice_desktop(api_for(employee), demo_template)
    target = FILE_TARGET
    pid = Path(f"/run/libvirt/qemu/{desktop.domain_name}.pid").read_text()
    files = [download_vv(employee, desktop) for _ in range(3)]

    def session(vv: str, *, send_init: bool, wait: bool) -> int:
        password = vv_fields(vv)["password"]
        with _open_set(spice_proxy, target, token_of(vv)) as main:
            assert spice_link(main, kind=CHANNEL_MAIN, connection_id=0, password=password)[0] == 0
            spice_session = spice_session_of(main)
            with _open_set(spice_proxy, target, token_of(vv)) as display:
                linked = spice_link(
                    display, kind=CHANNEL_DISPLAY, connection_id=spice_session, password=password
                )
                assert linked[0] == LINK_OK
                if send_init:
                    display.sendall(MINI.pack(MSGC_DISPLAY_INIT, len(DISPLAY_INIT)) + DISPLAY_INIT)
                return _received(display, seconds=3) if wait else 0

    session(files[0], send_init=False, wait=False)
    session(files[1], send_init=True, wait=False)
    assert session(files[2], send_init=True, wait=True) > 1000
    assert Path(f"/run/libvirt/qemu/{desktop.domain_name}.pid").read_text() == pid


def _received(sock: socket.socket, *, seconds: float) -> int:
    got, deadline = 0, time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not (data := sock.recv(65536)):
                break
            got += len(data)
    except TimeoutError:
        pass
    return got
