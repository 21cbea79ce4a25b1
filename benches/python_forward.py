"""The raw forward pass of a text model's TorchScript file in Python (torch + tokenizers), for
comparison with the same sentence through torchwire (`torchwire-bench load --rpc sentiment`).

    taskset -c 0 .venv/bin/python benches/python_forward.py [model dir] [threads]

Reads version 1 of the model (<model dir>/1/model.pt) and the model's tokenizer.json.
"""

import statistics
import sys
import time

import torch
from tokenizers import Tokenizer

model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/sentiment"
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
text = "The service was quick and the food was really good."
torch.set_num_threads(threads)
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(256)
model = torch.jit.load(f"{model_dir}/1/model.pt").eval()
enc = tok.encode(text)
ids = torch.tensor([enc.ids], dtype=torch.int64)
mask = torch.tensor([enc.attention_mask], dtype=torch.int64)
fwd, total = [], []
with torch.inference_mode():
    for i in range(220):
        t0 = time.perf_counter()
        e = tok.encode(text)
        i_ = torch.tensor([e.ids], dtype=torch.int64)
        m_ = torch.tensor([e.attention_mask], dtype=torch.int64)
        t1 = time.perf_counter()
        model(i_, m_)
        t2 = time.perf_counter()
        if i >= 20:
            fwd.append((t2 - t1) * 1e3)
            total.append((t2 - t0) * 1e3)
print(f"python {model_dir} tokens={len(enc.ids)} threads={threads}: forward p50 {statistics.median(fwd):.2f} ms, "
      f"tokenise+forward p50 {statistics.median(total):.2f} ms (200 runs)")
