"""Request and response bodies of REST API v1."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator

# JSON numbers only: lax ``float`` would take true/false as 1/0 and "1" as 1.0.
Vector = list[StrictFloat]


def exactly_one_of(*fields: str) -> dict[str, Any]:
    """JSON Schema for "exactly one of ``fields`` is given, not null; the others are absent or null"
    (what the models' validators check), so the OpenAPI document states the rule too."""
    return {
        "oneOf": [
            {
                "required": [f],
                "properties": {f: {"not": {"type": "null"}}} | {o: {"type": "null"} for o in fields if o != f},
            }
            for f in fields
        ]
    }


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # indexer.types.COLLECTION_NAME_RE
ENCODER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[A-Za-z0-9_.-]+$"  # name@version, as indexer.manager checks it


class CollectionCreate(BaseModel):
    # Patterns and bounds are documented in the schema but checked by the indexer, whose messages say
    # what a valid value is (pydantic's would only quote the regex).
    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN}, description="1-64 letters, digits, '_' or '-'")
    dim: int | None = Field(
        default=None,
        json_schema_extra={"minimum": 1, "maximum": 65_536},
        description="vector dimension (from the encoder's spec when bound)",
    )
    metric: Literal["cosine", "ip", "l2"] | None = Field(default=None, description="default: encoder's, else cosine")
    encoder: str | None = Field(
        default=None,
        json_schema_extra={"pattern": ENCODER_PATTERN},
        description="name@version of the encoder that makes vectors",
    )
    index: str = Field(default="auto", description="'auto' or a FAISS factory string, e.g. HNSW32, IVF1024,PQ32")
    keep_sources: bool = Field(
        default=False,
        description="keep each embedded item's raw input (text, image, record), so a migration can re-encode "
        "it with a newer encoder in the background (backfill); deleted with the item",
    )


class CollectionInfo(BaseModel):
    name: str
    dim: int
    metric: str
    encoder: str | None
    index: str
    count: int = Field(description="items in the metadata store")
    indexed: int = Field(description="vectors in the FAISS index")
    active_index: str = Field(description="FAISS index currently serving (Flat until auto switches)")
    nprobe: int | None
    building: bool
    created_at: float
    keep_sources: bool = False


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class ItemIn(BaseModel):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "text", "image", "record"))

    id: str
    vector: Vector | None = None
    text: str | None = Field(default=None, description="raw text, embedded by the collection's encoder")
    image: str | None = Field(default=None, description="base64 image, embedded by the collection's encoder")
    record: dict[str, Any] | None = Field(
        default=None, description="categorical record (feature -> string or integer), for record encoders"
    )
    payload: dict[str, Any] | None = None
    encoder_version: str | None = Field(
        default=None, description="name@version that made the vector; defaults to the collection's encoder"
    )


class UpsertRequest(BaseModel):
    items: list[ItemIn]


class Skipped(BaseModel):
    id: str
    reason: str


class UpsertResponse(BaseModel):
    upserted: int
    skipped: list[Skipped] | None = Field(default=None, description="face images in which no face was found")


class ItemOut(BaseModel):
    id: str
    payload: dict[str, Any] | None
    encoder_version: str | None
    vector: list[float] | None = None


class DeleteResponse(BaseModel):
    deleted: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "id", "text", "image", "record"))

    vector: Vector | None = None
    id: str | None = Field(default=None, description="search with a stored item's vector (it is left out)")
    text: str | None = Field(default=None, description="embedded by the collection's encoder")
    image: str | None = Field(default=None, description="base64 image, embedded by the collection's encoder")
    record: dict[str, Any] | None = Field(
        default=None, description="categorical record; a two-tower model embeds it with its query tower"
    )
    k: int = Field(default=10, ge=1)
    filter: dict[str, Any] | None = Field(
        default=None, description='{"field": value} | {"field": {"in": [...]}} | {"field": {"gte": 1, "lt": 5}}'
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [f for f in ("vector", "id", "text", "image", "record") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'vector', 'id', 'text', 'image' or 'record'")
        return self


class Hit(BaseModel):
    id: str
    score: float = Field(description="higher is better; cosine/ip similarity, l2: -squared distance")
    payload: dict[str, Any] | None
    encoder_version: str | None


class SearchResponse(BaseModel):
    results: list[Hit]
    took_ms: float


class BatchSearchRequest(BaseModel):
    queries: list[SearchRequest]


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="results[i] answers queries[i]")
    took_ms: float


class EmbedRequest(BaseModel):
    encoder: str = Field(json_schema_extra={"pattern": ENCODER_PATTERN}, description="name@version")
    inputs: list[str | dict[str, Any]] = Field(
        min_length=1,
        description="texts, base64 images for image and face encoders, or records (JSON objects) for record encoders",
    )


class FaceOut(BaseModel):
    input: int
    box: list[float]
    score: float


class EmbedResponse(BaseModel):
    encoder: str
    dim: int
    vectors: list[list[float]]
    faces: list[FaceOut] | None = Field(default=None, description="face encoders: one entry per vector")


class VerifyRequest(BaseModel):
    image_a: str = Field(description="base64 image")
    image_b: str = Field(description="base64 image")


class VerifyResponse(BaseModel):
    same: bool
    distance: float
    threshold: float
    encoder: str


class ClusterRequest(BaseModel):
    threshold: float | None = Field(default=None, description="max distance inside a cluster; default: encoder's")
    min_size: int = Field(default=2, ge=1)


class Cluster(BaseModel):
    size: int
    ids: list[str]


class ClusterResponse(BaseModel):
    clusters: list[Cluster]
    unclustered: int
    threshold: float
