"""Security: cluster CA, certificates, join tokens, TLS identities."""
