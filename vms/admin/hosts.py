"""Hypervisor hosts: registering one (its URI must name a kind of host some backend serves,
and its capacity comes from the host itself), and what each has allocated, as bars."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.timesince import timesince

from vms.admin.host_metrics import host_monitoring_context
from vms.admin.usage import usage_view
from vms.hypervisor import HostCapacity
from vms.models import DesktopStatus, Host, HostStatus
from vms.services.core.errors import ServiceError
from vms.services.fleet.hosts import host_capacity_read, host_check_uri
from vms.services.fleet.membership import host_disable, host_maintenance_set
from vms.services.fleet.placement import allocation_annotations
from vms.services.networks.desktop_networks import guards_refresh

CAPACITY_FIELDS = ["capacity_vcpus", "capacity_memory_mib", "capacity_disk_gib"]
OVERCOMMIT_FIELDS = ["cpu_overcommit", "memory_overcommit"]
HEARTBEAT_FIELDS = ["status", "status_changed_at", "maintenance", "last_heartbeat_at",
                    "load_cpus", "load_memory_mib", "load_available_memory_mib",
                    "load_running_guests", "load_cpu_percent"]  # fmt: skip
READ_CAPACITY = "_read_capacity"  # the add form's "Read capacity from the host" button


def capacity_summary(found: HostCapacity, pool: str) -> str:
    disk = (
        f"pool '{pool}' {found.pool_gib} GiB"
        if found.pool_gib is not None
        else (f"no pool '{pool}' yet")
    )
    return f"{found.cpus} CPUs, {found.memory_mib} MiB of memory, {disk}"


class HostForm(forms.ModelForm[Host]):
    """A host's URI must name a kind of host some backend serves (docs/hypervisors.md).

    A new host's capacity is read from the host: empty fields take what it has, and a
    figure above what it has is refused. When the host cannot be reached, the form says
    so; figures typed by hand are then saved unchecked (`unchecked_because` says why).
    """

    class Meta:
        model = Host
        fields = ["name", "uri", "console_address", "storage_pool", "enabled", *CAPACITY_FIELDS,
                  *OVERCOMMIT_FIELDS]  # fmt: skip
        labels = {
            "capacity_vcpus": "vCPUs",
            "capacity_memory_mib": "Memory (MiB)",
            "capacity_disk_gib": "Disk (GiB)",
        }

    unchecked_because = ""
    read_from_host = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["console_address"].required = False  # empty: the model's loopback
        for name in OVERCOMMIT_FIELDS:
            self.fields[name].required = False  # empty: 1, no overcommit
        if self.instance._state.adding:
            for name in CAPACITY_FIELDS:
                field = self.fields[name]
                field.required = False
                field.initial = self.initial.get(name)  # not the model's 16 vCPUs
                field.help_text = "Empty: what the host has, read when you save."

    def clean_console_address(self) -> str:
        address = self.cleaned_data.get("console_address")
        return address or str(Host._meta.get_field("console_address").default)

    def clean_cpu_overcommit(self) -> float:
        return self.cleaned_data.get("cpu_overcommit") or 1.0

    def clean_memory_overcommit(self) -> float:
        return self.cleaned_data.get("memory_overcommit") or 1.0

    def clean_uri(self) -> str:
        try:
            return host_check_uri(self.cleaned_data["uri"])
        except ServiceError as exc:
            raise ValidationError(exc.message) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.instance._state.adding:
            self._leaving(data)
        if not self.instance._state.adding or self.has_error("uri") or "uri" not in data:
            return data
        pool = data.get("storage_pool") or "desktops"
        try:
            found = host_capacity_read(uri=data["uri"], pool=pool)
        except ServiceError as exc:
            self._unreachable(data, exc.message)
            return data
        self.read_from_host = capacity_summary(found, pool)
        self._fill_and_check(data, found, pool)
        return data

    def _leaving(self, data: dict[str, Any]) -> None:
        """Unticking "enabled" takes the host out of the fleet through the service: its
        stopped desktops go to other hosts first, and anything left refuses it, listed."""
        if not self.instance.enabled or data.get("enabled", True) or self.errors:
            return
        try:
            host_disable(name=self.instance.name)
        except ServiceError as exc:
            self.add_error("enabled", exc.message)

    def _unreachable(self, data: dict[str, Any], reason: str) -> None:
        if any(data.get(name) is None for name in CAPACITY_FIELDS):
            self.add_error(
                None,
                f"{reason} Correct the URI, or enter the host's vCPUs, memory and disk "
                "by hand to register it anyway.",
            )
        else:
            self.unchecked_because = reason

    def _fill_and_check(self, data: dict[str, Any], found: HostCapacity, pool: str) -> None:
        has = {
            "capacity_vcpus": (found.cpus, f"The host has {found.cpus} CPUs"),
            "capacity_memory_mib": (
                found.memory_mib,
                f"The host has {found.memory_mib} MiB of memory",
            ),
            "capacity_disk_gib": (found.pool_gib, f"Pool '{pool}' has {found.pool_gib} GiB"),
        }
        for name, (available, said) in has.items():
            value = data.get(name)
            if available is None:  # no pool yet: its size is unknown
                if value is None:
                    self.add_error(
                        name,
                        f"The host has no storage pool '{pool}' yet, so its size is unknown: "
                        "enter the disk space desktops may use.",
                    )
            elif value is None:
                data[name] = available  # cleaned_data: it reaches the instance
            elif value > available:
                self.add_error(name, f"{said}; enter {available} or less.")


def _bar(used: int, capacity: int, unit: str) -> str:
    """A capacity bar with the figures in words beside it (the bar alone says nothing to a
    screen reader, and colours are not the only sign: 'over' is written out)."""
    over = used > capacity
    return format_html(
        '<span class="capacity{}"><meter min="0" max="{}" low="{}" high="{}" optimum="0" '
        'value="{}" aria-hidden="true"></meter><span>{} / {} {}{}</span></span>',
        " over" if over else "",
        capacity,
        capacity * 0.7,
        capacity * 0.9,
        min(used, capacity),
        used,
        capacity,
        unit,
        " (over)" if over else "",
    )


@admin.register(Host)
class HostAdmin(admin.ModelAdmin[Host]):
    form = HostForm
    list_display = [
        "name",
        "uri",
        "state",
        "vcpus",
        "memory",
        "disk",
        "load",
        "health",
        "recovery",
        "virt_type",
    ]
    readonly_fields = ["last_checked_at", "last_check_ok", "last_check_error", "virt_type",
                       "disk_lock_ok", "disk_lock_note", *HEARTBEAT_FIELDS]  # fmt: skip
    actions = ["maintenance_on", "maintenance_off"]

    def delete_model(self, request: HttpRequest, obj: Host) -> None:
        super().delete_model(request, obj)
        guards_refresh()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        super().delete_queryset(request, queryset)
        guards_refresh()

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        capacity = "What the desktops placed on this host may use in total."
        if obj is None:
            capacity += (
                " Empty fields take what the host has when you save; "
                "“Read capacity from the host” fills them in now. More than it has is refused."
            )
        sets: list[Any] = [
            (None, {"fields": ["name", "uri", "console_address", "storage_pool", "enabled"]}),
            ("Capacity for desktops", {"fields": CAPACITY_FIELDS, "description": capacity}),
            ("Overcommit", {"fields": OVERCOMMIT_FIELDS}),
        ]
        if obj is not None:  # the heartbeat's findings exist only once the host does
            sets.append(("Health (from the heartbeat)", {"fields": self.readonly_fields}))
        return sets

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        # What placement counts as allocated, and the desktops still there (a drain's
        # progress), in the same query as the list.
        left = ~Q(desktops__status=DesktopStatus.DELETED)
        return (
            super()
            .get_queryset(request)
            .annotate(**allocation_annotations(), desktop_count=Count("desktops", filter=left))
        )

    @admin.display(description="State", ordering="status")
    def state(self, host: Host) -> str:
        """Up, down, disabled, or in maintenance with the desktops a drain has yet to move."""
        left = getattr(host, "desktop_count", 0) or 0
        if not host.enabled:
            return format_html('<span class="host-state off">{}</span>', "Disabled")
        if host.status == HostStatus.DOWN:
            return format_html('<span class="host-state bad">{}</span>', "Down: recovering")
        if host.maintenance:
            said = f"Maintenance: draining, {left} left" if left else "Maintenance: empty"
            return format_html('<span class="host-state maint">{}</span>', said)
        count = f"{left} desktop" if left == 1 else f"{left} desktops"
        return format_html('<span class="host-state ok">Up, {}</span>', count)

    @admin.display(description="Live load")
    def load(self, host: Host) -> str:
        """The last heartbeat's sample of what the host really uses."""
        if host.load_memory_mib is None:
            return "Not sampled yet"
        cpu = "not yet known" if host.load_cpu_percent is None else f"{host.load_cpu_percent:g} %"
        return (
            f"CPU {cpu}, {host.load_available_memory_mib} of {host.load_memory_mib} MiB free, "
            f"{host.load_running_guests} running"
        )

    @admin.action(description="Put in maintenance (move its desktops away)")
    def maintenance_on(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._maintenance(request, queryset, enabled=True)

    @admin.action(description="Take out of maintenance")
    def maintenance_off(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._maintenance(request, queryset, enabled=False)

    def _maintenance(self, request: HttpRequest, hosts: QuerySet[Host], *, enabled: bool) -> None:
        actor = request.user
        assert isinstance(actor, User)
        changed = [
            h.name for h in hosts if host_maintenance_set(actor=actor, host=h, enabled=enabled)
        ]
        if not changed:
            messages.info(request, "Nothing changed: those hosts already were so.")
            return
        what = "In maintenance, its desktops moving away" if enabled else "Back in service"
        messages.success(request, f"{what}: {', '.join(changed)}.")

    @admin.display(description="vCPUs used")
    def vcpus(self, host: Host) -> str:
        return _bar(getattr(host, "used_vcpus", 0) or 0, host.capacity_vcpus, "")

    @admin.display(description="Memory used")
    def memory(self, host: Host) -> str:
        return _bar(getattr(host, "used_memory_mib", 0) or 0, host.capacity_memory_mib, "MiB")

    @admin.display(description="Disk used")
    def disk(self, host: Host) -> str:
        return _bar(getattr(host, "used_disk_gib", 0) or 0, host.capacity_disk_gib, "GiB")

    @admin.display(description="Health", ordering="last_check_ok")
    def health(self, host: Host) -> str:
        if host.last_checked_at is None:
            return format_html('<span class="host-health">{}</span>', "Not checked yet")
        ago = f"{timesince(host.last_checked_at)} ago"
        if host.last_check_ok:
            return format_html('<span class="host-health ok">OK, {}</span>', ago)
        return format_html(
            '<span class="host-health bad" title="{}">Failing, {}: {}</span>',
            host.last_check_error,
            ago,
            host.last_check_error[:80],
        )

    @admin.display(description="Recovery", ordering="disk_lock_ok")
    def recovery(self, host: Host) -> str:
        """Whether the host takes part in recovering lost hosts' desktops, and why not:
        only with its disk lock manager proven by the heartbeat (docs/fleet.md)."""
        if host.disk_lock_ok:
            return format_html('<span class="host-health ok">{}</span>', "Disk locks verified")
        why = host.disk_lock_note or "Disk locks not checked yet."
        return format_html('<span class="host-health bad">No recovery: {}</span>', why)

    def get_urls(self) -> list[URLPattern]:
        report = path("usage/", self.admin_site.admin_view(usage_view), name="vms_usage_report")
        return [report, *super().get_urls()]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The host's fields, below its load as pictures, capacity bars and alerts."""
        host = self.get_object(request, object_id)
        if host is not None:
            bars = [("vCPUs", self.vcpus(host)), ("Memory", self.memory(host)),
                    ("Disk", self.disk(host))]  # fmt: skip
            extra_context = {**(extra_context or {}), **host_monitoring_context(host, bars=bars)}
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if request.method == "POST" and READ_CAPACITY in request.POST:
            return self._prefilled_add_form(request)
        return super().add_view(request, form_url, extra_context)

    def _prefilled_add_form(self, request: HttpRequest) -> HttpResponse:
        """The add form again, with the capacity the host reports filled in (or why not)."""
        typed = {
            name: request.POST.get(name, "").strip() for name in ("name", "uri", "storage_pool")
        }
        typed["enabled"] = "1" if request.POST.get("enabled") else ""
        pool = typed["storage_pool"] or "desktops"
        try:
            found = host_capacity_read(uri=typed["uri"], pool=pool)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Read from the host: {capacity_summary(found, pool)}.")
            typed |= {
                "capacity_vcpus": str(found.cpus),
                "capacity_memory_mib": str(found.memory_mib),
            }
            if found.pool_gib is not None:
                typed["capacity_disk_gib"] = str(found.pool_gib)
        return HttpResponseRedirect(f"{reverse('admin:vms_host_add')}?{urlencode(typed)}")

    def save_model(self, request: HttpRequest, obj: Host, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change or {"uri", "console_address"} & set(form.changed_data):
            guards_refresh()  # desktops' guards drop every host's addresses
        if form.read_from_host:
            messages.info(request, f"Checked against the host: {form.read_from_host}.")
        if form.unchecked_because:
            messages.warning(
                request,
                f"{form.unchecked_because} The capacity you entered was saved unchecked.",
            )
