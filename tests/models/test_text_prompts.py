"""Label names as prompts: a tiny offline CLIP text model saved to disk and loaded back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_fixtures import save_tiny_clip
from medpeft.models.text import LearnedClassPrompt, TextClassPrompt, TextEncoder, build_class_prompt

LABELS = ["liver", "right_kidney", "spleen"]
DIM = 24


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character-level CLIP BPE vocabulary (no merges) and a 2-layer text model, saved offline."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def encoder(clip_dir: Path) -> TextEncoder:
    return TextEncoder(str(clip_dir), template="a computed tomography of a {}")


def test_encoder_loads_from_local_dir_and_is_frozen(encoder: TextEncoder) -> None:
    emb = encoder.encode(LABELS)
    assert emb.shape == (3, encoder.dim) == (3, 16)
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[1], emb[2])
    # underscores become spaces before the template is applied
    torch.testing.assert_close(encoder.encode(["right kidney"]), emb[1:2])


def test_encoder_without_projection(clip_dir: Path) -> None:
    enc = TextEncoder(str(clip_dir), projection=False)
    assert enc.encode(LABELS).shape == (3, enc.dim) == (3, 32)


def test_encoder_fails_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot load CLIP text model") as err:
        TextEncoder(str(tmp_path / "missing"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="placeholder"):
        TextEncoder(str(tmp_path), template="a scan")


def test_text_class_prompt(encoder: TextEncoder) -> None:
    prompt = TextClassPrompt(LABELS, encoder, DIM)
    ids = torch.tensor([[0, 1, 2], [2, 2, 0]])
    out = prompt(ids)
    assert out.shape == (2, 3, 1, DIM)
    assert not torch.allclose(out[0, 0], out[0, 1]) and not torch.allclose(out[0, 1], out[0, 2])
    torch.testing.assert_close(out[1, 0], out[0, 2])
    assert set(prompt.state_dict()) == {"affine.weight", "affine.bias"}
    assert {n for n, p in prompt.named_parameters() if p.requires_grad} == {"affine.weight", "affine.bias"}
    out.sum().backward()
    assert prompt.affine is not None and prompt.affine.weight.grad is not None
    # the adapter file round-trips into a fresh prompt built from the same encoder
    fresh = TextClassPrompt(LABELS, encoder, DIM)
    fresh.load_state_dict(prompt.state_dict())
    torch.testing.assert_close(fresh(ids), out)


@pytest.mark.parametrize(
    "make", [lambda: TextClassPrompt(LABELS, None, DIM), lambda: build_class_prompt(LABELS, DIM)]
)
def test_learned_fallback(make) -> None:
    prompt = make()
    out = prompt(torch.tensor([[0, 1], [2, 0]]))
    assert out.shape == (2, 2, 1, DIM)
    assert not torch.allclose(out[0, 0], out[0, 1])
    assert [n for n, p in prompt.named_parameters() if p.requires_grad] == ["embedding.weight"]
    out.sum().backward()
    assert prompt.embedding.weight.grad is not None


def test_label_lookup() -> None:
    prompt = LearnedClassPrompt(LABELS, DIM)
    assert prompt.label_index("spleen") == 2
    assert prompt.class_ids(["spleen", "liver"]).tolist() == [2, 0]
    with pytest.raises(KeyError, match="unknown label 'heart'.*liver, right_kidney, spleen"):
        prompt.label_index("heart")
    with pytest.raises(ValueError, match="unique"):
        LearnedClassPrompt(["liver", "liver"], DIM)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        prompt(torch.tensor([0, 1]))
