"""What the HTTP API holds for its lifetime: settings, home, models, searcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from indexer.captioners.base import load_captioner
from indexer.encoder import ClipEncoder, get_encoder
from indexer.errors import InvalidInput, ModelUnavailable
from indexer.home import Home
from indexer.settings import Settings
from search.captions import CaptionService
from search.engine import Searcher

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Loaded once at start-up (FastAPI lifespan) and shared by every request."""

    settings: Settings
    home: Home
    encoder: ClipEncoder
    searcher: Searcher
    captions: CaptionService | None
    captioner_error: str | None

    @classmethod
    def start(cls, settings: Settings) -> Service:
        """Load the CLIP model, the index and the captioner (which may be unavailable)."""
        home = Home(settings)
        encoder = get_encoder(settings).load()
        captions, error = None, None
        try:
            captioner = load_captioner(
                settings.captioner, encoder.device, clip_model=encoder.key, clip_dim=encoder.dim
            )
            if captioner is not None:
                captions = CaptionService(home, captioner, encoder.key)
        except ModelUnavailable as exc:
            error = str(exc)
            log.warning("%s; search works without captions", exc)
        searcher = Searcher(home, encoder, captions)
        try:
            searcher.index()
        except InvalidInput:
            log.warning("nothing is indexed in %s yet: run `pixsearch index FOLDER`", home.path)
        return cls(settings, home, encoder, searcher, captions, error)
