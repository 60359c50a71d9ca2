"""Loading a CLIP for texts only: no image tower is built or read, texts embed the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.clip_loading import has_image_tower
from indexer.encoder import ClipEncoder

TEXTS = ["a large red circle on a blue background", "a star", "a picture"]


@pytest.mark.parametrize("source", ["named", "checkpoint file"])
def test_text_only_encoder_embeds_texts_as_the_whole_model(source: str, tmp_path: Path) -> None:
    if source == "named":
        model, pretrained = "demo", ""
    else:
        from tests.assets.tiny_models import materialize_tiny_clip

        config, checkpoint = materialize_tiny_clip(tmp_path)
        model, pretrained = str(config), str(checkpoint)
    whole = ClipEncoder(model, pretrained, precision="fp32").load()
    text = ClipEncoder(model, pretrained, precision="fp32", text_only=True).load()
    # No image tower: not among its modules, no weights of it, fewer parameters.
    assert has_image_tower(whole.torch_model) and not has_image_tower(text.torch_model)
    assert not any(type(m).__module__.startswith("timm") for m in text.torch_model.modules())
    assert not any(k.startswith("visual.") for k in text.torch_model.state_dict())
    params = sum(p.numel() for p in text.torch_model.parameters())
    assert params < sum(p.numel() for p in whole.torch_model.parameters())
    assert text.key == whole.key
    np.testing.assert_allclose(text.embed_texts(TEXTS), whole.embed_texts(TEXTS), atol=1e-6)
    with pytest.raises(RuntimeError, match="texts only"):
        text.embed_pixels(np.zeros((1, 64, 64, 3), np.uint8))
