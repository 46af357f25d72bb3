from django.urls import path

from apps.registry.api import views

urlpatterns = [
    path("models/", views.ModelListUploadApi.as_view(), name="models"),
    path("models/<slug:name>/", views.ModelDetailApi.as_view(), name="model-detail"),
    path("models/<slug:name>/aliases/history", views.AliasHistoryApi.as_view(), name="model-alias-history"),
    path("models/<slug:name>/aliases/at", views.AliasesAtApi.as_view(), name="model-aliases-at"),
    path("models/<slug:name>/aliases/<slug:alias>", views.AliasSetRemoveApi.as_view(), name="model-alias"),
    path("models/<slug:name>/versions/<int:number>/promote", views.VersionPromoteApi.as_view(), name="model-promote"),
    path("models/<slug:name>/versions/<int:number>/archive", views.VersionArchiveApi.as_view(), name="model-archive"),
    path("models/<slug:name>/versions/<int:number>/compile", views.VersionCompileApi.as_view(), name="model-compile"),
]
