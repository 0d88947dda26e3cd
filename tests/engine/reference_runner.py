"""Run the `rwkv` pip package (the reference implementation) on a checkpoint, in its own process.

    python reference_runner.py MODEL.pth OUT.pt TOKENS_JSON SPLIT

Writes {"seq": logits of every token [T, V], "one": token-by-token logits [T, V],
"resume": logits of the last token after feeding tokens[:SPLIT] then tokens[SPLIT:]}.
The package reads its settings from the environment at import (RWKV_V7_ON for RWKV-7), which is
why it runs in a subprocess. Its forward() modifies the state list in place: copies are taken.
For RWKV-7 the package ignores a checkpoint's `time_state`: with ROOST_REF_TIME_STATE=1 the runner
passes it in by hand as the starting state (as state-tuned v7 models are run).
With ROOST_REF_STATE_FILE=PATH (RWKV-5/6) every run starts from that state-tuning file's states, passed
in as ChatRWKV's API_DEMO_CHAT.py does with the package (each layer's time_state transposed).
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
    start = v7_time_state(model_path) if v7 and os.environ.get("ROOST_REF_TIME_STATE") == "1" else None
    if os.environ.get("ROOST_REF_STATE_FILE") and not v7:
        start = state_file_state(model, os.environ["ROOST_REF_STATE_FILE"])

    def fresh():
        return copy.deepcopy(start)

    if v7:
        # the v7 class's forward_seq returns only the last token's logits
        seq = torch.stack([model.forward(tokens[: t + 1], fresh())[0].float() for t in range(len(tokens))])
    else:
        seq, _ = model.forward(tokens, fresh(), full_output=True)
    one, state = [], fresh()
    for t in tokens:
        logits, state = model.forward([t], copy.deepcopy(state))
        one.append(logits.float().clone())
    _, mid = model.forward(tokens[:split], fresh())
    resume, _ = model.forward(tokens[split:], copy.deepcopy(mid))
    torch.save({"seq": seq.float(), "one": torch.stack(one), "resume": resume.float()}, out_path)


def state_file_state(model, path):
    """The package's v5/v6 state list starting from a state-tuning file, as API_DEMO_CHAT.py builds it."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    args, state = model.args, []
    for i in range(args.n_layer):
        atype = model.strategy[i].atype
        state += [torch.zeros(args.n_embd, dtype=atype),
                  raw[f"blocks.{i}.att.time_state"].transpose(1, 2).to(dtype=torch.float).contiguous(),
                  torch.zeros(args.n_embd, dtype=atype)]
    return state


def v7_time_state(path):
    """The package's v7 state list (per layer: token shift, (H, V, K) matrix state, channel shift)
    starting from the checkpoint's time_state."""
    w = torch.load(path, map_location="cpu", weights_only=True)
    n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    c = w["emb.weight"].shape[1]
    state = []
    for i in range(n_layer):
        ts = w[f"blocks.{i}.att.time_state"].float()
        state += [torch.zeros(c), ts.reshape(ts.shape[-3] if ts.dim() == 3 else -1, ts.shape[-2], ts.shape[-1]).clone(),
                  torch.zeros(c)]
    return state


if __name__ == "__main__":
    main()
