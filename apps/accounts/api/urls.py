from django.urls import path

from apps.accounts.api import views

urlpatterns = [
    path("me", views.MeApi.as_view(), name="me"),
    path("members/", views.MemberListAddApi.as_view(), name="members"),
    path("members/<str:username>", views.MemberDetailApi.as_view(), name="member-detail"),
    path("tokens/", views.TokenListCreateApi.as_view(), name="tokens"),
    path("tokens/<str:prefix>/revoke", views.TokenRevokeApi.as_view(), name="token-revoke"),
    path("audit/", views.AuditListApi.as_view(), name="audit"),
]
