"""Run the `rwkv` pip package (the reference implementation) on a checkpoint, in its own process.

    python reference_runner.py MODEL.pth OUT.pt TOKENS_JSON SPLIT

Writes {"seq": logits of every token [T, V], "one": token-by-token logits [T, V],
"resume": logits of the last token after feeding tokens[:SPLIT] then tokens[SPLIT:]}.
The package reads its settings from the environment at import (RWKV_V7_ON for RWKV-7), which is
why it runs in a subprocess. Its forward() modifies the state list in place: copies are taken.
"""

import copy
import json
import os
import sys

os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
from rwkv.model import RWKV  # noqa: E402


def main() -> None:
    model_path, out_path, tokens, split = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    name = model_path[:-4] if model_path.endswith(".pth") else model_path
    model = RWKV(name, "cpu fp32") if os.environ.get("RWKV_V7_ON") == "1" else RWKV(name, "cpu fp32", verbose=False)
    v7 = os.environ.get("RWKV_V7_ON") == "1"
    if v7:
        # the v7 class's forward_seq returns only the last token's logits
        seq = torch.stack([model.forward(tokens[: t + 1], None)[0].float() for t in range(len(tokens))])
    else:
        seq, _ = model.forward(tokens, None, full_output=True)
    one, state = [], None
    for t in tokens:
        logits, state = model.forward([t], copy.deepcopy(state))
        one.append(logits.float().clone())
    _, mid = model.forward(tokens[:split], None)
    resume, _ = model.forward(tokens[split:], copy.deepcopy(mid))
    torch.save({"seq": seq.float(), "one": torch.stack(one), "resume": resume.float()}, out_path)


if __name__ == "__main__":
    main()
