"""The admins' usage report page (/admin/vms/host/usage/): desktop-hours, console-hours
and peak resources per user, group or template for a chosen period, and its CSV."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from vms.services.metrics.usage import GROUPINGS, usage_csv, usage_report

MAX_DAYS = 366


class UsageForm(forms.Form):
    """The period (whole days, both included) and what to group by; last 7 days by default."""

    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    by = forms.ChoiceField(choices=list(GROUPINGS.items()), required=False, label="Per")

    def clean_by(self) -> str:
        return self.cleaned_data.get("by") or "user"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and end < start:
            raise forms.ValidationError("The period must end on or after its first day.")
        if start and end and (end - start).days >= MAX_DAYS:
            raise forms.ValidationError(f"A report covers at most {MAX_DAYS} days.")
        return data

    def period(self) -> tuple[dt.datetime, dt.datetime]:
        zone = timezone.get_current_timezone()
        start = dt.datetime.combine(self.cleaned_data["start"], dt.time(), zone)
        end = dt.datetime.combine(self.cleaned_data["end"], dt.time(), zone)
        return start, end + dt.timedelta(days=1)


def usage_view(request: HttpRequest) -> HttpResponse:
    """The report page; `?format=csv` downloads the same rows (400 on bad input)."""
    today = timezone.localdate()
    given = request.GET if "start" in request.GET else None
    initial = {"start": today - dt.timedelta(days=6), "end": today, "by": "user"}
    form = UsageForm(given or {k: str(v) for k, v in initial.items()})
    rows = None
    if form.is_valid():
        start, end = form.period()
        by = form.cleaned_data["by"]
        rows = usage_report(start=start, end=end, by=by)
        if request.GET.get("format") == "csv":
            response = HttpResponse(usage_csv(rows, by=by), content_type="text/csv")
            name = f"usage-{by}-{form.cleaned_data['start']}-{form.cleaned_data['end']}.csv"
            response["Content-Disposition"] = f'attachment; filename="{name}"'
            return response
    elif request.GET.get("format") == "csv":
        errors = "; ".join(
            f"{form[name].label}: {e}" if name in form.fields else str(e)
            for name, errs in form.errors.items()
            for e in errs
        )
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    context = {
        **admin.site.each_context(request),
        "title": "Usage report",
        "form": form,
        "rows": rows,
        "by_label": GROUPINGS.get(form.data.get("by", "user"), "User"),
        "csv_query": request.GET.urlencode() if given else "",
    }
    return TemplateResponse(request, "admin/vms/usage_report.html", context)
