"""RoBERTa adapter: BERT's layout, with positions counted from the token ids."""

from __future__ import annotations

from gradsurg.multiexit.adapters.base import ADAPTERS
from gradsurg.multiexit.adapters.bert import BertAdapter

__all__ = ["RobertaAdapter"]


@ADAPTERS.register
class RobertaAdapter(BertAdapter):
    """Adapter for ``transformers.RobertaModel``.

    The layout (``embeddings`` + ``encoder.layer``, layers called as ``layer(hidden, mask)``)
    and the bidirectional mask are BERT's, so everything but the names is inherited. The one
    difference is inside the embedding module, called exactly as ``RobertaModel.forward``
    calls it: position ids come from the token ids (``padding_idx + 1`` onward, counting only
    tokens that are not ``config.pad_token_id``; pad tokens get ``padding_idx``), not from the
    attention mask. Positions are fixed once embedded, so dropping rows or trailing pad
    columns later leaves them unchanged.
    """

    model_type = "roberta"
    class_name = "RobertaModel"
