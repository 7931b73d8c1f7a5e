"""Run by tests/test_serving_flow.py under another transformers release (`make compat` builds
.venv-tf<version>, which sees this project's torch and pyarrow through a .pth file): load a pushed
version with plain AutoTokenizer / AutoModelForCausalLM, decode it with streamrl's decoder and with
`generate` + SidConstraint, and print one JSON line for the test to compare."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
warnings.simplefilter("ignore")

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from streamrl.rl.checkpointing import load_for_inference  # noqa: E402
from streamrl.rl.decode import beam_search  # noqa: E402
from streamrl.serving.sid_constraint import SidConstraint  # noqa: E402

folder, prompt = Path(sys.argv[1]), sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
sid = SidConstraint.from_pretrained(folder, tok, prompt_len=enc["input_ids"].shape[1])
out = model.generate(
    input_ids=enc["input_ids"],
    attention_mask=enc["attention_mask"],
    logits_processor=[sid],
    max_new_tokens=sid.L,
    num_beams=4,
    num_return_sequences=4,
    do_sample=False,
    pad_token_id=tok.pad_token_id,
)
m, t, _, vocab = load_for_inference(folder)
beams = beam_search(m, t, [prompt], vocab, 8)[0]
print(
    json.dumps(
        {
            "transformers": transformers.__version__,
            "tokenizer_class": type(tok).__name__,
            "ids": enc["input_ids"][0].tolist(),
            "generate_items": sid.items(out),
            "decoder": [[list(s), v] for s, v in beams],
        }
    )
)
