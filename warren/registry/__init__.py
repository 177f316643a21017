"""Pulling images from OCI/Docker registries: references and a v2 API client."""
