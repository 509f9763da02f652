"""The hypervisor seam of monitoring: one bulk call on libvirt's test driver, and the
reading of QEMU-shaped records (disks and cards summed, the guest's own memory figure
preferred to QEMU's RSS)."""

from __future__ import annotations

from vms.hypervisor import get_hypervisor
from vms.hypervisor.stats import domain_stats_from


def test_the_test_driver_answers_in_one_call() -> None:
    hypervisor = get_hypervisor("test:///default")
    # The driver's own running domain, "test" (earlier tests in this process may have
    # started more: the default test driver's state is shared by the whole process).
    [stats] = [found for found in hypervisor.domain_stats(prefix="") if found.name == "test"]
    assert stats.uuid  # (the test driver keeps no counters)
    assert hypervisor.domain_stats(prefix="dpm-") == []
    usage = hypervisor.pool_usage(pool="default-pool")
    assert usage is not None and usage.capacity_bytes > 0
    assert hypervisor.pool_usage(pool="no-such-pool") is None


def test_qemu_records_are_summed_and_memory_prefers_the_guests_account() -> None:
    record = {
        "cpu.time": 5_000_000_000, "vcpu.current": 2, "balloon.maximum": 262144,
        "balloon.rss": 190000, "block.count": 2, "block.0.rd.bytes": 100,
        "block.1.rd.bytes": 50, "block.0.wr.reqs": 3, "net.count": 1, "net.0.tx.pkts": 9,
    }  # fmt: skip
    stats = domain_stats_from(name="d", uuid="u", record=record)
    assert (stats.cpu_time_ns, stats.vcpus, stats.memory_max_kib) == (5_000_000_000, 2, 262144)
    assert (stats.block_rd_bytes, stats.block_wr_reqs, stats.net_tx_packets) == (150, 3, 9)
    assert stats.memory_used_kib == 190000  # RSS: no balloon statistics
    guest = record | {"balloon.available": 250000, "balloon.unused": 100000}
    assert domain_stats_from(name="d", uuid="u", record=guest).memory_used_kib == 150000
    assert domain_stats_from(name="d", uuid="u", record={}).cpu_time_ns is None
