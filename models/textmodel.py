"""A BERT-family text classifier written in plain PyTorch so that torch.jit.script exports it
with no tracing hazards (dynamic batch size and sequence length, mask-aware everywhere).

    forward(input_ids: int64[B, T], attention_mask: int64[B, T]) -> logits float32[B, n_labels]

Encoder (post-LayerNorm BERT, exact-erf GELU) -> mask-aware mean pooling -> Linear head.
Parameter names mirror Hugging Face's BertModel (embeddings.*, encoder.layer.N.*), so a BERT
checkpoint such as all-MiniLM-L6-v2's model.safetensors loads with load_state_dict.
Used by models/build.py (the real sentiment models) and models/fixtures/make_fixtures.py
(the tiny_bert fixture).
"""

import math
from typing import List

import torch
from torch import nn


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertSelfOutput(hidden, eps)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inter)


class BertOutput(nn.Module):
    def __init__(self, hidden: int, inter: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inter, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads, eps)
        self.intermediate = BertIntermediate(hidden, inter)
        self.output = BertOutput(hidden, inter, eps)
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(hidden // heads)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: [B, T, H]; bias: [B, 1, 1, T], 0 for real tokens and a large negative for padding.
        b, t, h = x.shape
        att = self.attention.self
        q = att.query(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = att.key(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = att.value(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, h)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(ctx))
        mid = torch.nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(mid))


class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        # Single-segment input: token type 0 everywhere.
        x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(hidden, heads, inter, eps) for _ in range(layers)])


def attention_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask -> [B, 1, 1, T] additive bias (finfo.min, not -inf: no NaN for a row
    that is all padding)."""
    keep = attention_mask.to(torch.float32).unsqueeze(1).unsqueeze(2)
    return (1.0 - keep) * -3.4028234663852886e38  # torch.finfo(torch.float32).min


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class TextClassifier(nn.Module):
    """BERT encoder + mean pooling + linear head. `id_modulo` > 0 maps input ids into a small
    embedding table (ids % id_modulo); only the tiny test fixture uses it."""

    def __init__(
        self,
        vocab: int,
        hidden: int,
        layers: int,
        heads: int,
        inter: int,
        max_positions: int,
        n_labels: int,
        eps: float = 1e-12,
        id_modulo: int = 0,
    ) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, max_positions, eps)
        self.encoder = BertEncoder(layers, hidden, heads, inter, eps)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, n_labels)
        self.id_modulo = id_modulo

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.id_modulo > 0:
            input_ids = torch.remainder(input_ids, self.id_modulo)
        return self.embeddings(input_ids)

    def run_layers(self, x: torch.Tensor, bias: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for i, layer in enumerate(self.encoder.layer):
            if i >= start and i < stop:
                x = layer(x, bias)
        return x

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(mean_pool(hidden, attention_mask)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = attention_bias(attention_mask)
        x = self.run_layers(self.embed(input_ids), bias, 0, len(self.encoder.layer))
        return self.head(x, attention_mask)


def pad_batch(seqs: List[List[int]]) -> "tuple[torch.Tensor, torch.Tensor]":
    """Right-pads id lists with 0 ([PAD]); returns (input_ids, attention_mask) as int64."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.int64)
    mask = torch.zeros(len(seqs), width, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        mask[i, : len(s)] = 1
    return ids, mask
