"""Who may call the API: identities (OIDC, API tokens, the shared admin token),
roles and scopes, and the audit trail of every mutating action."""
