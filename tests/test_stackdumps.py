"""portal/stackdumps.py: a running portal server tells where it waits, and goes on serving."""

from __future__ import annotations

import pytest
import requests

from tests.servers import daphne_command, free_port, running, server_stacks


@pytest.mark.servers
@pytest.mark.django_db(transaction=True)
def test_a_running_server_dumps_its_stacks_and_goes_on_serving() -> None:
    port = free_port()
    with running(daphne_command(port), port=port, log_name="stackdump-daphne.log"):
        stacks = server_stacks(port)
        # SIGUSR1: the threads (the main one waits in the event loop); SIGUSR2: the tasks.
        assert "Current thread" in stacks and "run_forever" in stacks, stacks
        assert "asyncio tasks" in stacks, stacks
        answer = requests.get(f"http://127.0.0.1:{port}/static/js/page.js", timeout=10)
        assert answer.status_code == 200 and "export" in answer.text


def test_a_port_without_a_server_says_so() -> None:
    assert "no server of this test run" in server_stacks(free_port())
