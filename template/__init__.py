"""Shared building blocks used by every tensorswarm process: configuration and
command-line flags (``template.config``) and chain access (``template.chain``)."""
