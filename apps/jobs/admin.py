import uuid

from django.conf import settings
from django.contrib import admin, messages
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.accounts.permissions import (
    MANAGE_ANY_JOB,
    MANAGE_SCHEDULES,
    READ_JOBS,
    READ_SCENARIOS,
    READ_SCHEDULES,
    SUBMIT_JOBS,
    has_permission,
)
from apps.core.admin import (
    OrganizationScopedAdmin,
    PlatformAdmin,
    ReadOnlyTabularInline,
    StoredFileAdminMixin,
    admin_actor,
    json_block,
    organizations_where,
)
from apps.core.artifact_storage import stored_file_response
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs import services, task_events
from apps.jobs.models import TERMINAL_STATUSES, Artifact, Job, JobEvent, JobStatus, QueueState, Schedule, WorkerHost

# The live view answers for at most this many jobs per poll (a change list page shows 100).
LIVE_MAX_JOBS = 100


def live_job(job: Job) -> dict:
    """What the admin's polling script shows of a job (apps/core/static/switchyard/live.js)."""
    duration = job.duration
    return {
        "status": job.status,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "attempt": f"{job.attempt}/{job.max_attempts}",
        "worker_host": job.worker_host,
        "duration": f"{duration.total_seconds():.1f}s" if duration is not None else None,
    }


def live_status(job: Job):
    """A job's status, refreshed in place by the polling script."""
    return format_html(
        '<span class="job-status job-status-{}" data-live-job="{}" data-live-field="status" data-live-status="{}">'
        "{}</span>",
        job.status,
        job.pk,
        job.status,
        job.status,
    )


def live_progress(job: Job):
    percent = round(job.progress * 100)
    return format_html(
        '<span data-live-job="{}" data-live-field="progress" data-live-status="{}">'
        '<progress value="{}" max="100" style="width:90px" title="{}"></progress> '
        "<span data-live-percent>{}%</span></span>",
        job.pk,
        job.status,
        percent,
        job.progress_message,
        percent,
    )


class JobEventInline(ReadOnlyTabularInline):
    model = JobEvent
    fields = ["created_at", "from_status", "to_status", "attempt", "worker", "actor", "message"]


class ArtifactInline(ReadOnlyTabularInline):
    model = Artifact
    fields = ["role", "link", "size_bytes", "sha256", "attempt", "created_at"]

    @admin.display(description="file")
    def link(self, artifact):
        url = reverse("admin:jobs_job_artifact", args=[artifact.job_id, artifact.id])
        return format_html('<a href="{}">{}</a>', url, artifact.name)


class ChildJobInline(ReadOnlyTabularInline):
    """A fan-out's children (a sweep's runs), with their status and outcome."""

    model = Job
    fk_name = "parent"
    fields = ["child_link", "status", "progress", "attempt", "worker_host", "started_at", "finished_at", "outcome"]
    verbose_name = "child job"
    verbose_name_plural = "child jobs"
    max_num = 500
    ordering = ["created_at"]

    @admin.display(description="job")
    def child_link(self, job):
        point = (job.params or {}).get("overrides")
        label = f"{job.short_id} {point}" if point else job.short_id
        return format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[job.pk]), label)

    @admin.display(description="outcome")
    def outcome(self, job):
        if job.error:
            return f"{job.error.get('code')}: {job.error.get('message')}"
        final = (job.result or {}).get("final")
        return ", ".join(f"{name} {value:.3f}" for name, value in final.items()) if final else "-"


class ScenarioFilter(admin.SimpleListFilter):
    """Runs and sweeps of one scenario (linked from the scenario list)."""

    title = "scenario"
    parameter_name = "scenario"

    def lookups(self, request, model_admin):
        from apps.agents.models import Scenario

        scenarios = Scenario.objects.all()
        if not request.user.is_superuser:
            scenarios = scenarios.filter(organization__in=organizations_where(request.user, READ_SCENARIOS))
        return [(str(pk), name) for pk, name in scenarios.values_list("pk", "name")[:100]]

    def queryset(self, request, queryset):
        if not self.value() or not self.value().isdigit():
            return queryset
        return queryset.filter(kind__in=("simulation", "simulation_sweep"), params__scenario_id=int(self.value()))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _run_action(modeladmin, request, queryset, service, verb: str):
    done, refused = 0, []
    for job in queryset:
        try:
            service(job=job, actor=admin_actor(request, job.organization))
            done += 1
        except DomainError as exc:
            refused.append(f"{job.short_id}: {exc.message}")
    if done:
        modeladmin.message_user(request, f"{verb} {done} job(s).", messages.SUCCESS)
    for line in refused[:20]:
        modeladmin.message_user(request, line, messages.WARNING)


@admin.register(Job)
class JobAdmin(OrganizationScopedAdmin):
    view_action = READ_JOBS
    # Every field is read-only; the actions go through the services, which decide per job
    # (own job: jobs.submit; someone else's: jobs.manage_any).
    change_action = SUBMIT_JOBS
    list_display = [
        "short_id",
        "kind",
        "status_display",
        "queue",
        "priority",
        "progress_bar",
        "duration_display",
        "owner",
        "worker_host",
        "attempt_display",
        "created_at",
    ]
    list_filter = ["status", "failure", "kind", "queue", "priority", "organization", ScenarioFilter]
    search_fields = ["id", "kind", "owner__username", "worker_host", "idempotency_key"]
    list_select_related = ["owner", "organization"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    inlines = [JobEventInline, ArtifactInline, ChildJobInline]
    actions = ["cancel_jobs", "retry_jobs", "requeue_jobs"]
    readonly_fields = [
        "id",
        "organization",
        "owner",
        "kind",
        "status_display",
        "priority",
        "queue",
        "params_display",
        "result_display",
        "test_cases",
        "error_display",
        "failure",
        "progress_bar",
        "progress_message_display",
        "wait_reason",
        "charts",
        "attempt",
        "max_attempts",
        "idempotency_key",
        "parent",
        "worker_host",
        "flower_link",
        "lease_expires_at",
        "run_after",
        "concurrency_key",
        "concurrency_limit",
        "created_at",
        "queued_at",
        "dispatched_at",
        "started_at",
        "finished_at",
    ]
    # Shown through the displays above (live, or pretty-printed): never as form fields.
    exclude = [
        "progress",
        "task_id",
        "status",
        "params",
        "result",
        "error",
        "progress_message",
        "idempotency_fingerprint",
    ]
    # The operations of the job page's buttons: service, who may press it, the states it applies to.
    OPERATIONS = {
        "cancel": (services.job_cancel, "Cancel", (JobStatus.QUEUED, JobStatus.RUNNING)),
        "retry": (services.job_retry, "Retry", (JobStatus.FAILED, JobStatus.CANCELLED)),
        "requeue": (services.job_requeue, "Requeue", (JobStatus.QUEUED,)),
    }

    def has_add_permission(self, request):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("live/", view(self.live_view), name="jobs_job_live"),
            path("<uuid:job_id>/artifacts/<uuid:artifact_id>/", view(self.artifact_view), name="jobs_job_artifact"),
            *(
                path(f"<uuid:job_id>/{name}/", view(self.operation_view), {"operation": name}, name=f"jobs_job_{name}")
                for name in self.OPERATIONS
            ),
            *super().get_urls(),
        ]

    def live_view(self, request):
        """Status and progress of the asked-for jobs (?id=...&id=...), of those this user may see."""
        ids = [value for value in request.GET.getlist("id") if _is_uuid(value)][:LIVE_MAX_JOBS]
        jobs = (
            self.get_queryset(request).filter(pk__in=ids) if self.has_view_permission(request) else Job.objects.none()
        )
        return JsonResponse({"jobs": {str(job.pk): live_job(job) for job in jobs}})

    def operation_view(self, request, job_id, operation):
        """The job page's Cancel, Retry and Requeue buttons: the same services, permissions and audit as the API."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_queryset(request).select_related("organization", "owner").filter(pk=job_id).first()
        if job is None or not self.has_view_permission(request, job):
            raise Http404("No such job.")
        service, label, _ = self.OPERATIONS[operation]
        try:
            actor = admin_actor(request, job.organization)
            if operation == "requeue" and not has_permission(actor, MANAGE_ANY_JOB):
                # Publishing a job again is an operator's repair, not an owner's button.
                raise PermissionDenied(f"Role '{actor.role}' may not requeue jobs.")
            service(job=job, actor=actor)
        except DomainError as exc:
            self.message_user(request, f"{label}: {exc.message}", messages.WARNING)
        else:
            self.message_user(request, f"{label}: done for job {job.short_id}.", messages.SUCCESS)
        return redirect(reverse("admin:jobs_job_change", args=[job.pk]))

    def job_operations(self, request, job: Job) -> list[dict]:
        """The buttons the job page offers now (the services still decide when one is pressed)."""
        try:
            actor = admin_actor(request, job.organization)
        except DomainError:
            return []
        may_manage = has_permission(actor, MANAGE_ANY_JOB) or (
            job.owner_id == actor.user_id and has_permission(actor, SUBMIT_JOBS)
        )
        if not may_manage:
            return []
        return [
            {"name": name, "label": label, "url": reverse(f"admin:jobs_job_{name}", args=[job.pk])}
            for name, (_, label, states) in self.OPERATIONS.items()
            if job.status in states and (name != "requeue" or has_permission(actor, MANAGE_ANY_JOB))
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"job_operations": self.job_operations(request, job) if job else []}
        if job is not None:
            extra["job_ended"] = job.status in TERMINAL_STATUSES
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.display(description="status", ordering="status")
    def status_display(self, job):
        return live_status(job)

    @admin.display(description="params")
    def params_display(self, job):
        return json_block(job.params)

    @admin.display(description="result")
    def result_display(self, job):
        return json_block(job.result)

    @admin.display(description="error")
    def error_display(self, job):
        return json_block(job.error, open_up_to=4000)

    @admin.display(description="progress message")
    def progress_message_display(self, job):
        return format_html(
            '<span data-live-job="{}" data-live-field="progress_message" data-live-status="{}">{}</span>',
            job.pk,
            job.status,
            job.progress_message or "-",
        )

    def artifact_view(self, request, job_id, artifact_id):
        """A job's file for whoever may see the job here (the chart on the job page, for one)."""
        job = self.get_queryset(request).filter(pk=job_id).first()
        if job is None or not self.has_view_permission(request, job):
            raise Http404("No such job.")
        artifact = Artifact.objects.filter(pk=artifact_id, job=job).first()
        if artifact is None:
            raise Http404("No such artifact.")
        return stored_file_response(artifact.file.name, size=artifact.size_bytes, content_type=artifact.content_type)

    @admin.display(description="charts")
    def charts(self, job):
        images = job.artifacts.filter(content_type="image/png").order_by("created_at")
        if not images:
            return "-"
        return format_html_join(
            "",
            '<div><img src="{}" alt="{}" style="max-width:100%;height:auto;border:1px solid #ddd"></div>',
            ((reverse("admin:jobs_job_artifact", args=[job.pk, image.pk]), image.name) for image in images),
        )

    @admin.display(description="test cases")
    def test_cases(self, job):
        """A judge submission's verdict per case, with its resource use and returned files."""
        result = job.result or {}
        if result.get("mode") != "judge":
            return "-"
        artifacts = {str(a.pk): a for a in job.artifacts.all()}
        rows = []
        for case in result.get("cases") or []:
            links = format_html_join(
                ", ",
                '<a href="{}">{}</a>',
                (
                    (reverse("admin:jobs_job_artifact", args=[job.pk, file["artifact"]]), file.get("path", ""))
                    for file in case.get("files") or []
                    if file.get("artifact") in artifacts
                ),
            )
            rows.append(
                (
                    case.get("index"),
                    case.get("verdict"),
                    case.get("cpu_seconds"),
                    case.get("wall_seconds"),
                    case.get("peak_memory_mb"),
                    case.get("tree_peak_memory_mb"),
                    case.get("message") or "",
                    links,
                )
            )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html(
            "<p>verdict <b>{}</b>, {} of {} accepted</p><table><thead><tr><th>case</th><th>verdict</th>"
            "<th>CPU s</th><th>wall s</th><th>peak MB</th><th>tree peak MB</th><th>message</th><th>files</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            result.get("verdict"),
            result.get("passed", 0),
            result.get("total", 0),
            body,
        )

    @admin.display(description="waiting because")
    def wait_reason(self, job):
        from apps.jobs.selectors import job_wait_reason

        reason = job_wait_reason(job)
        return reason["message"] if reason else "-"

    @admin.display(description="progress")
    def progress_bar(self, job):
        return live_progress(job)

    @admin.display(description="duration")
    def duration_display(self, job):
        duration = job.duration
        return f"{duration.total_seconds():.1f}s" if duration is not None else "-"

    @admin.display(description="attempt")
    def attempt_display(self, job):
        return f"{job.attempt}/{job.max_attempts}"

    @admin.display(description="Flower")
    def flower_link(self, job):
        # Each attempt is a task of its own in Flower, named after the kind (apps.jobs.task_events).
        if not job.attempt:
            return "-"
        task = task_events.task_uuid(job.pk, job.attempt)
        return format_html('<a href="{}/task/{}" target="_blank">{}</a>', settings.FLOWER_URL, task, task)

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        _run_action(self, request, queryset, services.job_cancel, "Cancelled")

    @admin.action(description="Retry selected failed/cancelled jobs")
    def retry_jobs(self, request, queryset):
        _run_action(self, request, queryset, services.job_retry, "Retried")

    @admin.action(description="Requeue selected queued jobs (publish again)")
    def requeue_jobs(self, request, queryset):
        _run_action(self, request, queryset, services.job_requeue, "Requeued")


@admin.register(QueueState)
class QueueStateAdmin(PlatformAdmin):
    """Pause and resume job queues (through the service: audited, doorbells rung on resume)."""

    list_display = ["name", "paused", "reason", "changed_by", "changed_at"]
    readonly_fields = ["name", "paused", "reason", "changed_by", "changed_at"]
    actions = ["pause_queues", "resume_queues"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def _set(self, request, queryset, paused: bool):
        for state in queryset:
            try:
                services.queue_set_paused(queue=state.name, paused=paused, actor=request.user, reason="from the admin")
            except DomainError as exc:
                self.message_user(request, f"{state.name}: {exc.message}", messages.WARNING)

    @admin.action(description="Pause selected queues (no new claims)")
    def pause_queues(self, request, queryset):
        self._set(request, queryset, paused=True)

    @admin.action(description="Resume selected queues")
    def resume_queues(self, request, queryset):
        self._set(request, queryset, paused=False)


@admin.register(WorkerHost)
class WorkerHostAdmin(PlatformAdmin):
    list_display = [
        "hostname",
        "alive",
        "queues",
        "providers",
        "warning",
        "bwrap",
        "version",
        "last_heartbeat_at",
        "started_at",
    ]
    search_fields = ["hostname"]
    readonly_fields = [
        "hostname",
        "warning",
        "queues",
        "capabilities_display",
        "version",
        "pid",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
    ]
    exclude = ["capabilities"]

    def has_add_permission(self, request):
        return False

    @admin.display(boolean=True)
    def alive(self, host):
        return host.is_alive

    @admin.display(description="providers")
    def providers(self, host):
        return ", ".join(host.capabilities.get("providers", []))

    @admin.display(description="warning")
    def warning(self, host):
        problem = host.gpu_problem
        return format_html('<span class="host-warning">{}</span>', problem) if problem else "-"

    @admin.display(description="capabilities")
    def capabilities_display(self, host):
        return json_block(host.capabilities)

    @admin.display(description="bwrap", boolean=True)
    def bwrap(self, host):
        return bool(host.capabilities.get("bwrap"))


@admin.register(Artifact)
class ArtifactAdmin(StoredFileAdminMixin, OrganizationScopedAdmin):
    """Every stored file: uploaded job inputs (no job) and what jobs produced. Read-only: the files are evidence."""

    view_action = READ_JOBS

    list_display = ["name", "role", "job_link", "organization", "owner", "size_bytes", "sha256_short", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["id", "name", "sha256", "job__id"]
    list_select_related = ["organization", "owner", "job"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "id",
        "organization",
        "owner",
        "job",
        "role",
        "name",
        "stored_file_link",
        "content_type",
        "size_bytes",
        "sha256",
        "meta_display",
        "attempt",
        "created_at",
    ]
    exclude = ["meta", "file"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="meta")
    def meta_display(self, artifact):
        return json_block(artifact.meta)

    def has_delete_permission(self, request, obj=None):
        # A deleted row would leave its file behind and fail the queued jobs that name it.
        return False

    @admin.display(description="job")
    def job_link(self, artifact):
        if artifact.job_id is None:
            return "- (upload)"
        return format_html('<a href="/admin/jobs/job/{}/change/">{}</a>', artifact.job_id, str(artifact.job_id)[:8])

    @admin.display(description="sha256")
    def sha256_short(self, artifact):
        return artifact.sha256[:12]


@admin.register(Schedule)
class ScheduleAdmin(OrganizationScopedAdmin):
    """Schedules are created from REST or the CLI; here they are read, paused, resumed and deleted (audited)."""

    view_action = READ_SCHEDULES
    # The services decide per schedule (own: schedules.manage; someone else's: schedules.manage_any).
    change_action = MANAGE_SCHEDULES
    list_display = ["name", "kind", "every", "timezone", "enabled", "next_run_at", "last_run_at", "last_outcome"]
    list_filter = ["enabled", "kind", "catch_up", "organization"]
    search_fields = ["name", "kind", "created_by__username"]
    list_select_related = ["organization", "created_by"]
    ordering = ["organization", "name"]
    actions = ["pause_schedules", "resume_schedules"]
    readonly_fields = [
        "organization",
        "name",
        "kind",
        "params",
        "priority",
        "cron",
        "interval_seconds",
        "timezone",
        "catch_up",
        "enabled",
        "next_run_at",
        "last_run_at",
        "last_job_link",
        "last_error",
        "created_by",
        "created_at",
        "updated_at",
    ]
    exclude = ["last_job"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="last firing")
    def last_outcome(self, schedule):
        if schedule.last_error:
            return f"refused: {schedule.last_error.get('code')}"
        return "job submitted" if schedule.last_job_id else "-"

    @admin.display(description="last job")
    def last_job_link(self, schedule):
        if schedule.last_job_id is None:
            return "-"
        url = reverse("admin:jobs_job_change", args=[schedule.last_job_id])
        return format_html('<a href="{}">{}</a>', url, str(schedule.last_job_id)[:8])

    def _set_enabled(self, request, queryset, enabled: bool, verb: str):
        done, refused = 0, []
        for schedule in queryset:
            try:
                services.schedule_update(
                    actor=admin_actor(request, schedule.organization), schedule=schedule, enabled=enabled
                )
                done += 1
            except DomainError as exc:
                refused.append(f"{schedule.name}: {exc.message}")
        if done:
            self.message_user(request, f"{verb} {done} schedule(s).", messages.SUCCESS)
        for line in refused[:20]:
            self.message_user(request, line, messages.WARNING)

    @admin.action(description="Pause the selected schedules")
    def pause_schedules(self, request, queryset):
        self._set_enabled(request, queryset, False, "Paused")

    @admin.action(description="Resume the selected schedules (from their next period)")
    def resume_schedules(self, request, queryset):
        self._set_enabled(request, queryset, True, "Resumed")

    def delete_model(self, request, obj):
        self.check_may_change(request, obj)
        services.schedule_delete(actor=admin_actor(request, obj.organization), schedule=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)
