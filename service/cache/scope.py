"""Cache scope: everything besides the question's wording that changes the answer.

Two requests may share a cached answer only if their scopes are equal. The
scope is hashed into a fingerprint that every entry carries and every lookup
filters on, so no lookup can cross it: tenant, namespace, model (or "auto"
when the service chooses), the system prompt and earlier turns, each sampling
parameter, and the embedding model's id (vectors of two models never mix).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from dataclasses import dataclass

from service.domain import CompletionRequest

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = re.compile(r"[\s?!.。？！]+$")
_POINT_NAMESPACE = uuid.UUID("5b1f5a52-8f0e-4c7e-9d1c-2f6d8f0b6c11")


@dataclass(frozen=True)
class CacheKey:
    """Where a request's answer lives: its scope, its text, and its exact-match id."""

    tenant: str
    namespace: str
    scope: str
    text: str
    point_id: str


def normalise(text: str) -> str:
    """Case, Unicode form, whitespace and trailing punctuation do not change a question."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = _WHITESPACE.sub(" ", folded).strip()
    return _TRAILING_PUNCTUATION.sub("", collapsed)


def scope_fingerprint(request: CompletionRequest, embedding_model_id: str) -> str:
    """A stable hex digest of everything in `request` except the last question."""
    sampling = request.sampling
    parts = {
        "v": 1,
        "tenant": request.tenant,
        "namespace": request.namespace,
        "model": request.model or "auto",
        "context": [[m.role, m.content] for m in request.messages[:-1]],
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop),
        "embedding_model": embedding_model_id,
    }
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_key(request: CompletionRequest, embedding_model_id: str) -> CacheKey:
    """The key for `request`; equal questions in equal scopes get equal point ids."""
    scope = scope_fingerprint(request, embedding_model_id)
    text = request.question
    point_id = str(uuid.uuid5(_POINT_NAMESPACE, f"{scope}\x00{normalise(text)}"))
    return CacheKey(request.tenant, request.namespace, scope, text, point_id)
