from django.urls import path

from apps.jobs.api import schedule_views, views

urlpatterns = [
    path("quota", views.QuotaApi.as_view(), name="quota"),
    path("queues/", views.QueueListApi.as_view(), name="queues"),
    path("queues/<str:name>/", views.QueueDetailApi.as_view(), name="queue-detail"),
    path("jobs/", views.JobListCreateApi.as_view(), name="jobs"),
    path("jobs/kinds/", views.JobKindsApi.as_view(), name="job-kinds"),
    path("jobs/bulk", views.JobBulkSubmitApi.as_view(), name="jobs-bulk"),
    path("jobs/<uuid:job_id>/", views.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel", views.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/retry", views.JobRetryApi.as_view(), name="job-retry"),
    path("jobs/<uuid:job_id>/events", views.JobEventsApi.as_view(), name="job-events"),
    path("jobs/<uuid:job_id>/artifacts", views.JobArtifactsApi.as_view(), name="job-artifacts"),
    path(
        "jobs/<uuid:job_id>/artifacts/<uuid:artifact_id>/download",
        views.ArtifactDownloadApi.as_view(),
        name="job-artifact-download",
    ),
    path("schedules/", schedule_views.ScheduleListCreateApi.as_view(), name="schedules"),
    path("schedules/<int:schedule_id>/", schedule_views.ScheduleDetailApi.as_view(), name="schedule-detail"),
    path("artifacts/", views.InputArtifactListUploadApi.as_view(), name="artifacts"),
    path("artifacts/<uuid:artifact_id>/", views.InputArtifactDetailApi.as_view(), name="artifact-detail"),
    path("artifacts/<uuid:artifact_id>/download", views.InputArtifactDownloadApi.as_view(), name="artifact-download"),
]
