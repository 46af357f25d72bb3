"""Token scopes on REST endpoints: each view says which scope each of its methods needs.

A view that declares nothing refuses tokens altogether (fail closed); a test checks that
every API view declares a scope for every method it serves.
"""

from rest_framework.permissions import BasePermission

from apps.accounts.models import ApiToken
from apps.accounts.permissions import scope_grants


class TokenScopePermission(BasePermission):
    def has_permission(self, request, view) -> bool:
        if not isinstance(request.auth, ApiToken):
            return True  # session logins act with the role alone
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        if not hasattr(view, request.method.lower()):
            return True  # nothing to protect: the view answers 405 (e.g. POST /members/, now an invitation)
        needed = getattr(view, "required_scopes", {}).get(method)
        if needed is None:
            self.message = "This endpoint does not accept API tokens."
            return False
        if not scope_grants(request.auth.scopes, needed):
            self.message = f"This token lacks the scope '{needed}' (it has: {', '.join(request.auth.scopes)})."
            return False
        return True
