"""Request and response bodies of REST API v1."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    StrictFloat,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import core_schema

# JSON numbers only: lax ``float`` would take true/false as 1/0 and "1" as 1.0.
Vector = list[StrictFloat]
VECTOR_B64_DOC = (
    "the vector as base64 of its little-endian float32 bytes (4 bytes a number): the same vector as "
    "`vector`, smaller and cheaper to parse"
)


def _vector_bytes_schema(_source: Any, _handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    """JSON: base64 text only. Python input (a msgpack body, ``service.wire``) may also hold the raw
    float32 bytes of a msgpack ``bin`` vector, moved here so that they are never copied into a list."""
    text = core_schema.str_schema(strict=True)
    raw = core_schema.bytes_schema(strict=True)
    return core_schema.json_or_python_schema(json_schema=text, python_schema=core_schema.union_schema([text, raw]))


# base64 text (JSON and msgpack), or raw bytes that ``service.wire`` lifted from a msgpack ``bin`` vector.
VectorBytes = Annotated[
    str | bytes,
    GetPydanticSchema(_vector_bytes_schema),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": VECTOR_B64_DOC}),
]


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
    ef_search: int | None = Field(default=None, description="HNSW search breadth, tuned to the target recall")
    measured_recall: float | None = Field(
        default=None,
        description="recall@10 the active index measured on held-out vectors when it was tuned (1.0 for Flat)",
    )
    rerank: int | None = Field(
        default=None, description="candidates per result re-scored with exact vectors (quantised indexes)"
    )
    building: bool
    created_at: float
    keep_sources: bool = False


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class ItemIn(BaseModel):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "vector_b64", "text", "image", "record"))

    id: str
    vector: Vector | None = None
    vector_b64: VectorBytes | None = None
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


QUERY_FIELDS = ("vector", "vector_b64", "id", "text", "image", "record")


class SearchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "vector_b64", "id", "text", "image", "record"))

    vector: Vector | None = None
    vector_b64: VectorBytes | None = None
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
    with_payload: bool = Field(default=True, description="false: the hits leave out `payload`")
    with_vector: bool = Field(
        default=False,
        description="true: each hit carries its stored `vector` (a msgpack answer: float32 bytes, as `bin`)",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [f for f in QUERY_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'vector', 'vector_b64', 'id', 'text', 'image' or 'record'")
        return self


class Hit(BaseModel):
    id: str
    score: float = Field(description="higher is better; cosine/ip similarity, l2: -squared distance")
    payload: dict[str, Any] | None = Field(default=None, description="left out when the query's with_payload is false")
    encoder_version: str | None
    vector: list[float] | None = Field(
        default=None, description="only when the query's with_vector is true (null: the item was deleted since)"
    )


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
