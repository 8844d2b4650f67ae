"""Namespaces (AI Search's groups of instances) and instance keys: an instance is known inside
ragd by one string, its name in the `default` namespace and `<namespace>.<name>` elsewhere, so
that the index, the data dir, the queue and the records need no second column to find it."""

from __future__ import annotations

import re

from rag_service.errors import InvalidRequest

DEFAULT_NAMESPACE = "default"
MAX_NAMESPACES = 100  # AI Search's limit per account
MAX_DESCRIPTION = 256
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # instances and namespaces; no dots


def instance_key(namespace: str, name: str) -> str:
    """The key of instance `name` in `namespace`."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}.{name}"


def split_key(key: str) -> tuple[str, str]:
    """(namespace, name) of an instance key."""
    namespace, _, name = key.rpartition(".")
    return namespace or DEFAULT_NAMESPACE, name


def check_namespace_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidRequest(
            "namespace name must be 1-64 lowercase letters, digits, '-' or '_', "
            "starting alphanumeric"
        )
    return name


def check_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"description must be a string of at most {MAX_DESCRIPTION} characters"
        )
    return description
