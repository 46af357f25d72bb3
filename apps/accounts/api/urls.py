from django.urls import path

from apps.accounts.api import views

urlpatterns = [
    path("me", views.MeApi.as_view(), name="me"),
    path("members/", views.MemberListApi.as_view(), name="members"),
    path("members/<str:username>", views.MemberDetailApi.as_view(), name="member-detail"),
    path("invitations/", views.InvitationListCreateApi.as_view(), name="invitations"),
    path("invitations/received", views.InvitationReceivedListApi.as_view(), name="invitations-received"),
    path("invitations/<uuid:invitation_id>/revoke", views.InvitationRevokeApi.as_view(), name="invitation-revoke"),
    path("invitations/<uuid:invitation_id>/accept", views.InvitationAcceptApi.as_view(), name="invitation-accept"),
    path("invitations/<uuid:invitation_id>/decline", views.InvitationDeclineApi.as_view(), name="invitation-decline"),
    path("tokens/", views.TokenListCreateApi.as_view(), name="tokens"),
    path("tokens/<str:prefix>/revoke", views.TokenRevokeApi.as_view(), name="token-revoke"),
    path("audit/", views.AuditListApi.as_view(), name="audit"),
]
