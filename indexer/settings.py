"""The one settings object: environment variables with prefix PIXSEARCH_, overridden by flags."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("pixsearch", appauthor=False))


class Settings(BaseSettings):
    """Every knob of pixsearch. Read from `PIXSEARCH_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PIXSEARCH_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data folder.")
    model: str = Field(
        "ViT-B-32",
        description="open_clip architecture name, the path of an open_clip model config JSON, "
        "or demo (the tiny model shipped with pixsearch; works offline, knows only the "
        "synthetic shapes of `pixsearch demo`).",
    )
    pretrained: str = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag, or the path of a local checkpoint file.",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default home/pixsearch.db")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: CUDA where present, else MPS (Apple silicon), else the CPU."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="auto: fp16 on CUDA and MPS; on the CPU the fastest precision whose "
        "embeddings stay within cosine 0.99 of fp32, measured once per model and CPU.",
    )
    text_tower_only: bool = Field(
        True,
        description="`pixsearch search` without a server loads only the model's text tower "
        "for a text query (false: the whole model, as before).",
    )
    batch_size: int = Field(32, ge=1, le=4096)
    workers: int = Field(0, ge=0, le=256, description="Image decoding threads; 0 = one per core.")
    max_image_pixels: int = Field(
        250_000_000, ge=1, description="Images with more pixels are refused (decompression bombs)."
    )
    max_upload_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Uploaded query images with more pixels are refused: an upload is anyone's "
        "file, and its decoded pixels take memory in the server.",
    )
    include_hidden: bool = Field(False, description="Index hidden files and folders too.")
    watch_quiet: float = Field(
        1.5,
        gt=0,
        le=600,
        description="`watch`: seconds without a new file event before indexing starts, so "
        "that a copy of many photos is one run.",
    )
    watch_max_delay: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="`watch`: indexing starts at most this long after the first event, even "
        "while events keep coming (a long copy is indexed as it goes).",
    )
    watch_polling: bool = Field(
        False,
        description="`watch`: find changes by rescanning the folders instead of file-system "
        "events (network shares send none for changes made by other machines).",
    )
    watch_poll_interval: float = Field(
        5.0, ge=0.5, le=3600, description="`watch`: seconds between rescans when polling."
    )
    watch_rescan: float = Field(
        3600.0,
        ge=0,
        description="`watch`: seconds between full catch-up runs, in case file events were "
        "lost (0: never).",
    )
    ray_address: str | None = Field(
        None,
        description="Index on a Ray cluster: `auto` (the running one), `local` (start one on "
        "this machine), or its address (`host:port`, `ray://host:port`). Unset: no Ray.",
    )
    ray_actors: int = Field(
        0,
        ge=0,
        le=4096,
        description="Embedding actors on the Ray cluster; 0 = one per GPU, or a share of the "
        "CPUs (at most all but one).",
    )

    captioner: str = Field(
        "nlpconnect/vit-gpt2-image-captioning",
        description="Captioner: a hub model id, a local folder (save_pretrained), demo, or "
        "none. Unset, a shipped model (demo) uses its own captioner.",
    )
    dedupe_threshold: float = Field(
        0.97, ge=0.5, le=1.0, description="Hits closer than this (cosine) collapse into one."
    )
    cutoff_z: float = Field(
        2.0,
        ge=0.0,
        le=50.0,
        description="Automatic cut-off for text queries: drop hits scoring below the query's "
        "background level (median of its scores over a sample of the collection) plus z "
        "times their spread below that median.",
    )
    cutoff_z_image: float = Field(
        1.25,
        ge=0.0,
        le=50.0,
        description="The same for image queries (more like this, uploads): photos resemble "
        "each other on a wider scale than words resemble photos.",
    )
    lexical_weight: float = Field(
        0.03, ge=0.0, le=1.0, description="Boost for hits whose stored caption matches the words."
    )
    generative_weight: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of the caption likelihood in generative rerank."
    )
    api_key: str | None = Field(None, description="If set, the API requires this key.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins.")
    max_upload_bytes: int = Field(25_000_000, ge=1, description="Largest accepted upload.")
    max_body_bytes: int = Field(
        1_000_000, ge=1, description="Largest request body other than an upload (JSON)."
    )
    request_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a request body may take to arrive, plus one per 100 kB of it.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a request's headers may take to arrive (`serve`), from the "
        "connection's opening or the previous response's end; then the connection is closed.",
    )
    max_connections: int = Field(
        100, ge=1, description="Connections served at once; more are answered 503."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names answered besides localhost, loopback and the bound address "
        "(DNS rebinding); `*` answers any, `*.example.org` its subdomains.",
    )

    index_exact_limit: int = Field(
        50_000, ge=0, description="Up to this many photos, exact (exhaustive) vector search."
    )
    index_pq_limit: int = Field(
        4_000_000,
        ge=0,
        description="Above this many photos, product quantisation instead of 8-bit scalars.",
    )
    index_ondisk_limit: int = Field(
        6_000_000,
        ge=0,
        description="Above this many photos, the index's lists stay on disk, memory-mapped.",
    )
    vector_file_min: int = Field(
        100_000,
        ge=0,
        description="From this many photos, exact re-scoring reads a float16 "
        "copy of the vectors (a derived file beside the index) instead of the database.",
    )
    index_build_threads: int = Field(
        0, ge=0, le=256, description="Threads filling an on-disk index's shards; 0 = per core."
    )
    filter_ids_limit: int = Field(
        250_000,
        ge=1,
        description="Most ids a search's filter reads from the database; a broader filter "
        "tests the candidates of an unfiltered search instead.",
    )

    @model_validator(mode="after")
    def _named_model_captioner(self) -> Settings:
        # The default captioner reads another CLIP's world; a shipped model brings its own.
        from indexer.named_models import named_model

        named = named_model(self.model)
        if (
            named is not None
            and named.captioner is not None
            and "captioner" not in (self.model_fields_set)
        ):
            self.captioner = named.name
        return self

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to an SQLite file in the home folder."""
        return self.database_url or f"sqlite:///{self.home / 'pixsearch.db'}"
