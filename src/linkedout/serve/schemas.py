"""Request and response models of the HTTP API (pydantic). The OpenAPI spec is generated from these:
its limits (id lengths, `k >= 1`, no extra fields) are what schemathesis fuzzes against."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId | int] | None = Field(
        None, description="Item ids, oldest first. Exactly one of history / user_id."
    )
    user_id: UserId | None = Field(None, description="Use this user's stored watch events as the history.")
    k: int = Field(10, ge=1, description="How many items (at most the server's max_k).")
    exclude_seen: bool = Field(True, description="Never recommend an item of the history.")
    explain: bool = Field(True, description="Add contributing history items (occlusion) per result.")


class Contribution(BaseModel):
    item_id: str
    title: str | None
    score_drop: float


class Recommended(BaseModel):
    item_id: str
    title: str | None
    caption: str | None = Field(None, description="The Video-LLM's generated text, when the bundle has it.")
    score: float
    thumbnail: str | None
    layer_weights: list[float] | None
    because: list[Contribution] | None


class RecommendResponse(BaseModel):
    items: list[Recommended]
    layer_names: list[str]
    history_used: list[str]
    truncated: bool


class WatchEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    user_id: UserId
    item_id: ItemId | int
    ts: float | None = Field(None, allow_inf_nan=False, description="Seconds since the epoch; default now.")
    kind: Annotated[str, StringConstraints(min_length=1, max_length=32)] = "watch"


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[WatchEvent] = Field(..., min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    duplicates: list[str]


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    tokens: list[list[list[float]]] | None = Field(
        None, description="LayerTokens [L, S, D] of the bundle's extractor."
    )
    video_path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        None,
        description="A clip under one of the server's media roots; extracted with the bundle's backbone.",
    )


class ItemInfo(BaseModel):
    item_id: str
    title: str | None
    caption: str | None = Field(None, description="The Video-LLM's generated text, when the bundle has it.")
    row: int
    added_online: bool
    source: str
    blocked: bool
    cold: bool = Field(
        False, description="No training events: scored from content alone (store-only or added online)."
    )
    layer_names: list[str]
    layer_weights: list[float] | None
    thumbnail: str | None


class ItemList(BaseModel):
    total: int
    items: list[ItemInfo]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        None,
        description="Bundle directory under the server's bundle roots (default: the served one, re-read).",
    )


class WorkerState(BaseModel):
    generation: int
    bundle_id: str
    error: str | None = None
    failed: int | None = None


class ReloadResponse(BaseModel):
    bundle_id: str
    bundle: str
    previous_bundle_id: str
    generation: int
    items: int
    load_seconds: float
    warm_seconds: float
    all_workers: bool = Field(description="Every worker process serves this generation.")
    workers: dict[str, WorkerState] | None = Field(None, description="Per worker pid, with several workers.")
