from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import membership_for_request


class MeApi(APIView):
    """Who the caller is: user, organization and role the request acts as."""

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        organization = serializers.CharField(allow_null=True)
        role = serializers.CharField(allow_null=True)
        auth = serializers.ChoiceField(choices=["token", "session"])

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
        }
        return Response(self.OutputSerializer(data).data)
