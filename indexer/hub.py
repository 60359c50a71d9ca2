"""Hugging Face hub downloads that fail at once, rather than after a minute, without network."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence

log = logging.getLogger(__name__)


def unreachable_reason(repo_id: str, filenames: Sequence[str]) -> str | None:
    """Why `repo_id` cannot be downloaded from, or None when it can (or need not be).

    None when one of `filenames` is already cached, or when the hub answers a HEAD request for
    the first one, whatever the answer (a 404 or a gated repository is the caller's loader's to
    report). Otherwise why not: offline mode, or the network failure. Checked once, without
    retries: the hub
    client itself retries each file five times with back-off when the network is down (about
    50 s and 46 warning lines for open_clip's two candidate files) before failing anyway.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    if not filenames:
        return None
    try:
        cached = [huggingface_hub.try_to_load_from_cache(repo_id, name) for name in filenames]
        url = huggingface_hub.hf_hub_url(repo_id, filenames[0])
    except ValueError:  # not a repository id (a missing folder?): the loader says what it is
        return None
    if any(isinstance(path, str) for path in cached):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and they are not in its cache"
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return None  # the hub answered
    except Exception as exc:  # DNS, refused, timeout, TLS, proxy: no way to the hub
        log.debug("cannot reach the hub for %s", url, exc_info=True)
        return "no network: " + textwrap.shorten(
            str(exc) or type(exc).__name__, 80, placeholder="..."
        )
    return None
