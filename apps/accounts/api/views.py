"""REST endpoints for accounts: who am I, members, invitations, API tokens and the audit trail."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, services
from apps.accounts.models import ApiToken, Invitation
from apps.accounts.permissions import SCOPES
from apps.accounts.selectors import membership_for_request, request_membership
from apps.core.pagination import PAGE_PARAMETERS, page_of, paginate


class MeApi(APIView):
    """Who the caller is: user, organization and role the request acts as."""

    required_scopes = {"GET": "read"}

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        organization = serializers.CharField(allow_null=True)
        role = serializers.CharField(allow_null=True)
        auth = serializers.ChoiceField(choices=["token", "session"])
        scopes = serializers.ListField(child=serializers.CharField(), allow_null=True)

        class Meta:
            ref_name = "Me"

    @extend_schema(responses=OutputSerializer, operation_id="me")
    def get(self, request):
        membership = membership_for_request(user=request.user, auth=request.auth)
        data = {
            "username": request.user.get_username(),
            "organization": membership.organization.slug if membership else None,
            "role": membership.role if membership else None,
            "auth": "token" if request.auth is not None else "session",
            "scopes": request.auth.scopes if request.auth is not None else None,
        }
        return Response(self.OutputSerializer(data).data)


class MemberOutputSerializer(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Member"


class MemberListApi(APIView):
    """The organization's members (owner, admin, operator).

    Nobody is added directly: people join by accepting an invitation (`/api/v1/invitations/`).
    """

    required_scopes = {"GET": "members:read"}

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses=page_of(MemberOutputSerializer),
        operation_id="members_list",
        description="New members join by accepting an invitation: `POST /api/v1/invitations/`.",
    )
    def get(self, request):
        members = selectors.member_list(membership=request_membership(request))
        return paginate(request, members, MemberOutputSerializer)


class MemberDetailApi(APIView):
    """Change a member's role, or remove the member (their tokens stop working)."""

    required_scopes = {"PATCH": "members:write", "DELETE": "members:write"}

    class InputSerializer(serializers.Serializer):
        role = serializers.CharField(max_length=16)

        class Meta:
            ref_name = "MemberRoleInput"

    @extend_schema(request=InputSerializer, responses=MemberOutputSerializer, operation_id="members_set_role")
    def patch(self, request, username):
        actor = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        member = selectors.member_get(membership=actor, username=username)
        member = services.member_set_role(actor=actor, membership=member, role=data.validated_data["role"])
        return Response(MemberOutputSerializer(member).data)

    @extend_schema(request=None, responses={204: None}, operation_id="members_remove")
    def delete(self, request, username):
        actor = request_membership(request)
        services.member_remove(actor=actor, membership=selectors.member_get(membership=actor, username=username))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    username = serializers.CharField()
    role = serializers.CharField()
    status = serializers.ChoiceField(choices=Invitation.Status.choices)
    invited_by = serializers.CharField(source="invited_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Invitation"


class InvitationListCreateApi(APIView):
    """The organization's invitations (owner, admin, operator), or invite a username (owner, admin).

    The answer is the same whether or not a user of that name exists anywhere: it is 409 only
    for someone who is already a member of this organization (or already invited).
    """

    required_scopes = {"GET": "members:read", "POST": "members:write"}

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        role = serializers.CharField(max_length=16)

        class Meta:
            ref_name = "InvitationCreateInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(InvitationOutputSerializer), operation_id="invitations_list"
    )
    def get(self, request):
        invitations = selectors.invitation_list(membership=request_membership(request))
        return paginate(request, invitations, InvitationOutputSerializer)

    @extend_schema(
        request=InputSerializer, responses={201: InvitationOutputSerializer}, operation_id="invitations_create"
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = services.invitation_create(actor=request_membership(request), **data.validated_data)
        return Response(InvitationOutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationRevokeApi(APIView):
    """Withdraw a pending (or expired) invitation of the organization (owner, admin)."""

    required_scopes = {"POST": "members:write"}

    @extend_schema(request=None, responses=InvitationOutputSerializer, operation_id="invitations_revoke")
    def post(self, request, invitation_id):
        actor = request_membership(request)
        invitation = selectors.invitation_get(membership=actor, invitation_id=invitation_id)
        invitation = services.invitation_revoke(actor=actor, invitation=invitation)
        return Response(InvitationOutputSerializer(invitation).data)


class ReceivedInvitationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    organization = serializers.CharField(source="organization.slug")
    organization_name = serializers.CharField(source="organization.name")
    role = serializers.CharField()
    status = serializers.ChoiceField(choices=Invitation.Status.choices)
    invited_by = serializers.CharField(source="invited_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ReceivedInvitation"


class InvitationReceivedListApi(APIView):
    """Invitations addressed to you, from any organization, newest first.

    Acts for your user, not in an organization: a session login with no organization yet
    works; a token needs `invitations:read` (or `read`).
    """

    required_scopes = {"GET": "invitations:read"}

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses=page_of(ReceivedInvitationOutputSerializer),
        operation_id="invitations_received",
    )
    def get(self, request):
        invitations = selectors.invitation_received_list(user=request.user)
        return paginate(request, invitations, ReceivedInvitationOutputSerializer)


class InvitationAcceptApi(APIView):
    """Join the inviting organization with the invitation's role. Only its addressee may (404 for anyone else).

    A token needs `invitations:write` (or `*`): joining another organization is the user's
    decision, not something a narrow token of one organization may do.
    """

    required_scopes = {"POST": "invitations:write"}

    @extend_schema(request=None, responses=ReceivedInvitationOutputSerializer, operation_id="invitations_accept")
    def post(self, request, invitation_id):
        invitation = selectors.invitation_received_get(user=request.user, invitation_id=invitation_id)
        invitation = services.invitation_accept(user=request.user, invitation=invitation)
        return Response(ReceivedInvitationOutputSerializer(invitation).data)


class InvitationDeclineApi(APIView):
    """Decline an invitation addressed to you (404 for anyone else); the organization sees it declined."""

    required_scopes = {"POST": "invitations:write"}

    @extend_schema(request=None, responses=ReceivedInvitationOutputSerializer, operation_id="invitations_decline")
    def post(self, request, invitation_id):
        invitation = selectors.invitation_received_get(user=request.user, invitation_id=invitation_id)
        invitation = services.invitation_decline(user=request.user, invitation=invitation)
        return Response(ReceivedInvitationOutputSerializer(invitation).data)


class TokenOutputSerializer(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField()
    username = serializers.CharField(source="membership.user.username")
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(source="is_active")

    class Meta:
        ref_name = "ApiToken"


class TokenListCreateApi(APIView):
    """Your API tokens (every member's for owners and admins), or create one: its secret is shown once."""

    required_scopes = {"GET": "tokens:read", "POST": "tokens:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=SCOPES),
            required=False,
            help_text="At least one, none wider than the calling token's. Default: the calling token's scopes, "
            "or ['*'] for a session login.",
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

        class Meta:
            ref_name = "TokenCreateInput"

    class CreatedSerializer(TokenOutputSerializer):
        token = serializers.CharField(help_text="The secret: shown this once, stored only as a hash.")

        class Meta:
            ref_name = "ApiTokenCreated"

    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(TokenOutputSerializer), operation_id="tokens_list")
    def get(self, request):
        tokens = selectors.token_list(membership=request_membership(request))
        return paginate(request, tokens, TokenOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer}, operation_id="tokens_create")
    def post(self, request):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # A token creates tokens only as narrow as itself (the service enforces it).
        creator_scopes = request.auth.scopes if isinstance(request.auth, ApiToken) else None
        issued = services.api_token_create(
            membership=membership, actor=membership, creator_scopes=creator_scopes, **data.validated_data
        )
        body = dict(TokenOutputSerializer(issued.token).data, token=issued.plaintext)
        return Response(body, status=status.HTTP_201_CREATED)


class TokenRevokeApi(APIView):
    required_scopes = {"POST": "tokens:write"}

    @extend_schema(request=None, responses=TokenOutputSerializer, operation_id="tokens_revoke")
    def post(self, request, prefix):
        actor = request_membership(request)
        token = services.api_token_revoke(token=selectors.token_get(membership=actor, prefix=prefix), actor=actor)
        return Response(TokenOutputSerializer(token).data)


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    details = serializers.JSONField()

    class Meta:
        ref_name = "AuditEvent"


class AuditListApi(APIView):
    """Security-relevant actions in the organization, newest first (owner, admin)."""

    required_scopes = {"GET": "audit:read"}

    @extend_schema(
        parameters=[
            OpenApiParameter("action", str, description="e.g. token.created, member.role_changed"),
            *PAGE_PARAMETERS,
        ],
        responses=page_of(AuditEventOutputSerializer),
        operation_id="audit_list",
    )
    def get(self, request):
        events = selectors.audit_list(membership=request_membership(request))
        if request.query_params.get("action"):
            events = events.filter(action=request.query_params["action"])
        return paginate(request, events, AuditEventOutputSerializer, allowed=["action"])
