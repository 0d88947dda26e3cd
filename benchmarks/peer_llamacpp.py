"""Roost against llama.cpp (the CPU runtime inside LM Studio and Ollama), side by side, on the same
random-weight RWKV checkpoint.

    python benchmarks/peer_llamacpp.py --check                   # conversion check, small v7 and v6 shapes
    python benchmarks/peer_llamacpp.py                           # v7 1.5B shape: cpu int8 | Q8_0, cpu int4 | Q4_0
    python benchmarks/peer_llamacpp.py --shape v6-1.6b --pairs int8 --repeat 3   # medians of 3 interleaved runs
    python benchmarks/peer_llamacpp.py --repeat 1 --gen 16 --prompt 64           # a short run
    python benchmarks/peer_llamacpp.py --shape v7-mini --gen 8 --prompt 32       # a tiny one, to try the script
    python benchmarks/peer_llamacpp.py --peer-python ~/llama-venv/bin/python     # llama.cpp from another venv

The official-layout .pth (bench.py's random checkpoints) is converted here with the `gguf` package to
an F32 GGUF file laid out as llama.cpp's own converter writes it (conversion/rwkv.py; a synthetic
65536-token "rwkv" vocabulary, token ids are fed directly), and from it to Q8_0 and Q4_0 files by
`llama_model_quantize`, the library call of llama-quantize: the files a user gets (RWKV's low-rank
matrices, mixes and vectors stay F32, the head is Q6_K in Q4_0). All are cached in CACHE/peer/.

`--check` feeds 16 token ids (8 as one batch, then 8 one at a time) to llama.cpp's F32 file and to
Roost's `cpu fp32` and fails unless the logits of every position agree. Its checkpoints are float32:
for RWKV-4/5/6 Roost folds ln0 into the embedding in the file's precision, as the reference runtime
does (llama.cpp applies ln0 in float32), which alone moves a bf16 RWKV-6 file's logits by ~2e-2.

The benchmark runs each side in a fresh process, interleaved (Roost, llama.cpp, Roost, ...), with the
same threads, and prints per pair: generation tok/s (1 / the median time per greedy token, argmax
included), prompt tok/s (one random prompt in one call after a 16-token warm-up), load time (Roost: a
first load filling an empty converted-weights cache, then a second load from it; llama.cpp: model and
context), peak RSS (mapped file pages included), and the ratios Roost / llama.cpp. Where the CPU
advertises AMX but llama.cpp's AMX kernels crash (some VMs), llama.cpp runs as on an x86 CPU without
AMX (Q4_0 matrices repacked, Q8_0 plain); `--amx on|off` forces either way.

llama.cpp: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36 gguf`, in a venv of its
own, run by `--peer-python` (default /tmp/roost-peer/pvenv/bin/python if present, else this python);
the Roost side and the conversion run with this python (Roost's venv; `gguf` comes from
the peer venv if missing here). A development tool: no test or CI step needs llama.cpp.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SHAPES, _median_run, _peak_rss, _reset_peak_rss, checkpoint  # noqa: E402  (stdlib only)

CHECK_SHAPES = {"v7-mini": ("v7.0", 4, 768), "v6-mini": ("v6.0", 4, 768)}  # name: (arch, n_layer, n_embd)
PAIRS = {"int8": ("cpu int8", "Q8_0"), "int4": ("cpu int4", "Q4_0")}  # Roost strategy, llama.cpp file type
DEFAULT_PEER = "/tmp/roost-peer/pvenv/bin/python"
VOCAB = 65536
# the matrices llama.cpp's CPU_REPACK buffer takes on x86 (AVX2 / AVX-512) when they are Q4_0
REPACKED = r"^blk\.[0-9]+\.(time_mix_(key|value|receptance|gate|output)|channel_mix_(key|value|receptance))\.weight$"


# ---- conversion (this python: torch for the .pth, gguf for the file) ----

def import_gguf(peer_python: str):
    """The `gguf` package: installed here, or the peer venv's (pure Python, needs numpy only)."""
    try:
        import gguf
    except ImportError:
        code = "import gguf, os; print(os.path.dirname(os.path.dirname(gguf.__file__)))"
        sys.path.append(subprocess.run([peer_python, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.strip())  # after this venv's own packages
        import gguf
    return gguf


def gguf_tensors(sd: dict, v7: bool) -> dict:
    """The .pth tensors renamed, transposed and fused as conversion/rwkv.py does: GGUF name -> torch
    tensor in numpy order (GGUF lists the dimensions the other way round)."""
    import torch

    out = {"token_embd.weight": sd["emb.weight"], "token_embd_norm.weight": sd["blocks.0.ln0.weight"],
           "token_embd_norm.bias": sd["blocks.0.ln0.bias"], "output_norm.weight": sd["ln_out.weight"],
           "output_norm.bias": sd["ln_out.bias"], "output.weight": sd["head.weight"]}
    for i in range(sum(1 for k in sd if k.endswith(".ln1.weight"))):
        p, b = f"blocks.{i}.", f"blk.{i}."
        for src, dst in {"ln1": "attn_norm", "ln2": "attn_norm_2", "att.ln_x": "time_mix_ln"}.items():
            out[f"{b}{dst}.weight"], out[f"{b}{dst}.bias"] = sd[f"{p}{src}.weight"], sd[f"{p}{src}.bias"]
        for m in ("key", "value", "receptance", "output") + (() if v7 else ("gate",)):
            out[f"{b}time_mix_{m}.weight"] = sd[f"{p}att.{m}.weight"]
        for m in ("key", "value") + (() if v7 else ("receptance",)):
            out[f"{b}channel_mix_{m}.weight"] = sd[f"{p}ffn.{m}.weight"]
        if v7:
            out[b + "time_mix_lerp_fused.weight"] = torch.stack([sd[f"{p}att.x_{m}"] for m in "rwkvag"])  # (6,1,1,C)
            out[b + "channel_mix_lerp_k.weight"] = sd[p + "ffn.x_k"].reshape(-1)
            for m in ("k_k", "k_a", "r_k"):
                out[f"{b}time_mix_{m}.weight"] = sd[f"{p}att.{m}"].reshape(-1)
            for x in "wavg":  # layer 0 has no v0/v1/v2: llama.cpp loads copies of a's, unused
                src = "a" if x == "v" and p + "att.v0" not in sd else x
                if x != "g":
                    out[f"{b}time_mix_{x}0.weight"] = sd[f"{p}att.{src}0"].reshape(-1)
                out[f"{b}time_mix_{x}1.weight"] = sd[f"{p}att.{src}1"].t()  # (C, r) -> (r, C)
                out[f"{b}time_mix_{x}2.weight"] = sd[f"{p}att.{src}2"].t()  # (r, C) -> (C, r)
        else:
            mixes = [sd[f"{p}att.time_maa_{m}"].reshape(1, 1, -1) for m in "wkvrg"]
            out[b + "time_mix_lerp_fused.weight"] = torch.stack(mixes)  # (5, 1, 1, C)
            out[b + "time_mix_lerp_x.weight"] = sd[p + "att.time_maa_x"].reshape(-1)
            out[b + "time_mix_w1.weight"] = sd[p + "att.time_maa_w1"].t()  # (C, 5D) -> (5D, C)
            out[b + "time_mix_w2.weight"] = sd[p + "att.time_maa_w2"].permute(0, 2, 1)  # (5, D, C) -> (5, C, D)
            out[b + "time_mix_decay.weight"] = sd[p + "att.time_decay"].reshape(-1)
            out[b + "time_mix_decay_w1.weight"] = sd[p + "att.time_decay_w1"].t()
            out[b + "time_mix_decay_w2.weight"] = sd[p + "att.time_decay_w2"].t()
            out[b + "time_mix_first.weight"] = sd[p + "att.time_faaaa"]  # (H, N)
            for m in "kr":
                out[f"{b}channel_mix_lerp_{m}.weight"] = sd[f"{p}ffn.time_maa_{m}"].reshape(-1)
    return out


def convert_f32(pth: Path, out: Path, gguf) -> None:
    """An official RWKV-7 / RWKV-6 .pth -> an F32 GGUF file, written one tensor at a time."""
    import numpy as np
    import torch

    sd = torch.load(pth, map_location="cpu", mmap=True, weights_only=True)
    v7 = "blocks.0.att.r_k" in sd
    tensors = gguf_tensors(sd, v7)
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.RWKV7 if v7 else gguf.MODEL_ARCH.RWKV6])
    w.add_name(pth.stem)
    w.add_context_length(1048576)  # RWKV has no context limit
    w.add_embedding_length(sd["emb.weight"].shape[1])
    w.add_block_count(sum(1 for k in sd if k.endswith(".ln1.weight")))
    w.add_feed_forward_length(sd["blocks.0.ffn.key.weight"].shape[0])
    w.add_layer_norm_eps(1e-5)
    w.add_head_count(0)  # required by llama.cpp, unused
    if v7:
        w.add_wkv_head_size(sd["blocks.0.att.r_k"].shape[1])
        w.add_decay_lora_rank(sd["blocks.0.att.w1"].shape[1])
        w.add_iclr_lora_rank(sd["blocks.0.att.a1"].shape[1])
        w.add_value_residual_mix_lora_rank(sd.get("blocks.1.att.v1", sd["blocks.0.att.a1"]).shape[1])
        w.add_gate_lora_rank(sd["blocks.0.att.g1"].shape[1])
    else:
        w.add_wkv_head_size(sd["blocks.0.att.time_faaaa"].shape[1])
        w.add_rescale_every_n_layers(0)  # official files are not rescaled
        w.add_time_mix_extra_dim(sd["blocks.0.att.time_maa_w1"].shape[1] // 5)
        w.add_time_decay_extra_dim(sd["blocks.0.att.time_decay_w1"].shape[1])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("rwkv")  # synthetic: unique strings
    w.add_token_list([b"<s>"] + [f"t{i}".encode() for i in range(1, VOCAB)])
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (VOCAB - 1))
    for name, t in tensors.items():
        w.add_tensor_info(name, tuple(t.shape), np.dtype(np.float32), t.numel() * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors.values():
        w.write_tensor_data(np.ascontiguousarray(t.float().numpy()))
    w.close()


def gguf_files(pth: Path, qtypes: list[str], args) -> dict[str, Path]:
    """CACHE/peer/<checkpoint>-<qtype>.gguf for each qtype, made where missing: F32 by conversion, the
    others from it by llama_model_quantize (an F32 file made only for them is removed afterwards)."""
    (pth.parent / "peer").mkdir(exist_ok=True)
    paths = {q: pth.parent / "peer" / f"{pth.stem}-{q}.gguf" for q in ["F32"] + qtypes}
    missing = [q for q in qtypes if not paths[q].exists()]
    made_f32 = bool(missing) and not paths["F32"].exists()
    if made_f32:
        print(f"converting {pth.name} -> {paths['F32'].name} ...", file=sys.stderr, flush=True)
        convert_f32(pth, paths["F32"].with_suffix(".tmp"), import_gguf(args.peer_python))
        paths["F32"].with_suffix(".tmp").rename(paths["F32"])
    for q in set(missing) - {"F32"}:
        print(f"quantizing -> {paths[q].name} ...", file=sys.stderr, flush=True)
        peer(args, "quantize", "--gguf", str(paths["F32"]), "--out", str(paths[q].with_suffix(".tmp")), "--qtype", q)
        paths[q].with_suffix(".tmp").rename(paths[q])
    if made_f32 and "F32" not in qtypes:
        paths["F32"].unlink()
    return {q: paths[q] for q in qtypes}


# ---- llama.cpp's side (the peer python: llama_cpp and numpy only) ----

def model_params(L, buffers: str):
    """llama.cpp's model params and what they point to. ``buffers``: "default" (its extra buffer types:
    AMX where the CPU has it, then CPU_REPACK); "plain" (none: Q8_0 on an x86 CPU without AMX);
    "repack" (none, then the REPACKED matrices put in CPU_REPACK: Q4_0 on an x86 CPU without AMX)."""
    import ctypes

    params = L.llama_model_default_params()
    params.use_extra_bufts = buffers == "default"
    if buffers != "repack":
        return params, None
    vp, lib = ctypes.c_void_p, Path(L.__file__).parent / "lib"
    ggml, base = ctypes.CDLL(str(lib / "libggml.so")), ctypes.CDLL(str(lib / "libggml-base.so"))
    for f, res, argt in ((ggml.ggml_backend_dev_by_type, vp, [ctypes.c_int]),
                         (ggml.ggml_backend_dev_backend_reg, vp, [vp]),
                         (ggml.ggml_backend_reg_get_proc_address, vp, [vp, ctypes.c_char_p]),
                         (base.ggml_backend_buft_name, ctypes.c_char_p, [vp])):
        f.restype, f.argtypes = res, argt
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    reg = ggml.ggml_backend_dev_backend_reg(dev)
    get = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(get)(dev)  # NULL-terminated
    listed = itertools.takewhile(bool, (bufts[i] for i in itertools.count()))
    repack = next(b for b in listed if base.ggml_backend_buft_name(b) == b"CPU_REPACK")

    class Override(ctypes.Structure):  # llama_model_tensor_buft_override
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", vp)]

    overrides = (Override * 2)(Override(REPACKED.encode(), repack), Override(None, None))
    params.tensor_buft_overrides = ctypes.cast(overrides, vp)
    return params, overrides


class Llama:
    """A GGUF model and one context, through llama-cpp-python's ctypes bindings to libllama."""

    def __init__(self, path: str, threads: int, n_ctx: int, params):
        import llama_cpp as L

        self.L = L
        self.model = L.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, max(512, n_ctx), 512
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def reset(self) -> None:
        """Forget the sequence (RWKV's state)."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def logits(self, i: int):
        import numpy as np

        return np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def feed(self, tokens: list[int]):
        """Decode ``tokens`` after the state's; the last position's logits (a view until the next call)."""
        arr = (self.L.llama_token * len(tokens))(*tokens)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        return self.logits(-1)

    def feed_all(self, tokens: list[int]) -> list:
        """Decode ``tokens`` as one batch from an empty state; the logits of every position."""
        L, n = self.L, len(tokens)
        batch = L.llama_batch_init(n, 0, 1)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = n
        try:
            if L.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return [self.logits(i).copy() for i in range(n)]
        finally:
            L.llama_batch_free(batch)


def peer_main(args) -> dict:
    """The peer process: quantize a file, probe a batch, give logits for --check, or run the benchmark."""
    import llama_cpp as L

    L.llama_backend_init()
    params, keep = model_params(L, args.buffers)  # noqa: F841 (alive until the load)
    if args.peer == "quantize":
        p = L.llama_model_quantize_default_params()
        p.ftype, p.nthread = getattr(L, f"LLAMA_FTYPE_MOSTLY_{args.qtype}"), args.threads
        if L.llama_model_quantize(args.gguf.encode(), args.out.encode(), p) != 0:
            raise SystemExit("llama_model_quantize failed")
    elif args.peer == "probe":
        Llama(args.gguf, args.threads, 64, params).feed([1, 2])
    elif args.peer == "logits":
        import numpy as np

        ids, llm = [int(x) for x in args.ids.split(",")], Llama(args.gguf, args.threads, 256, params)
        np.save(args.out, np.stack(llm.feed_all(ids[:8]) + [llm.feed([t]).copy() for t in ids[8:]]))
    else:  # bench
        _reset_peak_rss()
        t0 = time.perf_counter()
        llm = Llama(args.gguf, args.threads, args.prompt + args.gen + 16, params)
        return {"load_s": time.perf_counter() - t0} | timed_runs(llm.feed, llm.reset, args) | {"peak_rss": _peak_rss()}
    return {}


def peer_buffers(args, path: Path, types: dict[str, str]) -> str:
    """model_params' ``buffers`` for a file: "default", unless --amx off, or --amx auto where the CPU
    advertises AMX and a batch with llama.cpp's defaults crashes (in some VMs ldtilecfg faults): then
    llama.cpp as on an x86 CPU without AMX. The first probe's answer holds for the later files."""
    if args.amx == "auto":
        cpuinfo = Path("/proc/cpuinfo")
        try:
            if " amx_int8" in (cpuinfo.read_text() if cpuinfo.exists() else ""):
                peer(args, "probe", "--gguf", str(path))
            args.amx = "on"
        except RuntimeError:
            print("llama.cpp's AMX kernels crash on this machine: llama.cpp runs as without AMX", file=sys.stderr)
            args.amx = "off"
    if args.amx == "on":
        return "default"
    return "repack" if {t for n, t in types.items() if re.match(REPACKED, n)} == {"Q4_0"} else "plain"


# ---- Roost's side, and what both sides share ----

def timed_runs(feed, reset, args) -> dict:
    """The measurement of both sides: a 16-token warm-up, then --prompt random tokens in one call
    (prompt tok/s), then --gen greedy tokens one at a time (1 / the median time per token)."""
    tokens = [random.Random(0).randrange(1, VOCAB) for _ in range(args.prompt)]
    feed(tokens[:16])
    reset()
    t0 = time.perf_counter()
    logits = feed(tokens)
    prompt_s = time.perf_counter() - t0
    times = []
    for _ in range(args.gen):
        t0 = time.perf_counter()
        logits = feed([int(logits.argmax())])
        int(logits.argmax())
        times.append(time.perf_counter() - t0)
    return {"prompt_tps": args.prompt / prompt_s, "gen_tps": 1 / statistics.median(times[1:] or times)}


def roost_main(args) -> dict:
    """The Roost process: load (filling or reading --weight-cache), then the shared measurement."""
    import torch

    from roost import engine

    _reset_peak_rss()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = engine.load_model(args.model, args.strategy,
                              options=engine.LoadOptions.from_env(weight_cache=args.weight_cache or None))
    out = {"load_s": time.perf_counter() - t0, "cached": model.cached_matrices}
    if not args.load_only:
        state = [None]

        def feed(tokens):
            logits, state[0] = model.forward(tokens, state[0])
            return logits

        out |= timed_runs(feed, lambda: state.__setitem__(0, None), args)
    return out | {"peak_rss": _peak_rss()}


def child(args, python: str, *argv: str) -> dict:
    """This script's --peer or --roost part in a fresh process; its JSON line."""
    r = subprocess.run([python, __file__, *argv, "--threads", str(args.threads)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def peer(args, task: str, *argv: str) -> dict:
    return child(args, args.peer_python, "--peer", task, *argv)


def roost(args, model: Path, strategy: str, cache: str, load_only: bool = False) -> dict:
    return child(args, sys.executable, "--roost", strategy, "--model", str(model), "--weight-cache", cache,
                 "--prompt", str(args.prompt), "--gen", str(args.gen), *(["--load-only"] if load_only else []))


# ---- the conversion check and the benchmark ----

def model_file(shape: str, cache: Path) -> Path:
    """The shape's random checkpoint: bench.py's, or a small float32 one of CHECK_SHAPES."""
    if shape in SHAPES:
        return checkpoint(shape, cache)
    path = cache / f"check-{shape}-fp32.pth"
    if not path.exists():
        import torch

        from roost.engine.synthetic import save_checkpoint

        arch, n_layer, n_embd = CHECK_SHAPES[shape]
        save_checkpoint(path, arch, n_layer=n_layer, n_embd=n_embd, seed=1, dtype=torch.float32)
    return path


def check(args) -> bool:
    """16 token ids through llama.cpp F32 and Roost cpu fp32 on each small shape; True if all agree."""
    import numpy as np
    import torch

    from roost import engine

    torch.set_num_threads(args.threads)
    ok = True
    for name in args.check_shapes.split(","):
        pth = model_file(name, Path(args.cache))
        ids = [random.Random(1).randrange(1, VOCAB) for _ in range(16)]
        with tempfile.TemporaryDirectory() as tmp:
            peer(args, "logits", "--gguf", str(gguf_files(pth, ["F32"], args)["F32"]),
                 "--ids", ",".join(map(str, ids)), "--out", f"{tmp}/l.npy")
            theirs = np.load(f"{tmp}/l.npy").astype(np.float64)
        model = engine.load_model(pth, "cpu fp32")
        first, state = model.forward_all(ids[:8], None)
        rows = list(first.float())
        for t in ids[8:]:
            logits, state = model.forward([t], state)
            rows.append(logits.float())
        ours = torch.stack(rows).double().numpy()
        diff, agree = np.abs(ours - theirs), int((ours.argmax(1) == theirs.argmax(1)).sum())
        good = diff.max() <= 2e-4 * max(1.0, np.abs(ours).max()) and agree == len(ids)
        ok &= good
        arch, n_layer, n_embd = CHECK_SHAPES[name]
        print(f"{name} ({arch}, {n_layer} x {n_embd}): max |logit diff| {diff.max():.1e} (logits std {ours.std():.2f}, "
              f"max |logit| {np.abs(ours).max():.1f}); per position {' '.join(f'{d:.0e}' for d in diff.max(1))}; "
              f"greedy agreement {agree}/{len(ids)}: {'OK' if good else 'FAILED'}")
    return ok


def bench(args) -> dict:
    """The interleaved runs of each pair; prints a table, returns the JSON line's content."""
    cache = Path(args.cache)
    pth = model_file(args.shape, cache)
    pairs = [PAIRS[key] for key in args.pairs.split(",")]
    files, gguf = gguf_files(pth, [q for _, q in pairs], args), import_gguf(args.peer_python)
    print(f"shape {args.shape} ({pth.name}, {pth.stat().st_size / 1e9:.2f} GB), {args.threads} threads, "
          f"prompt {args.prompt}, gen {args.gen}, repeat {args.repeat}; ratio = Roost / llama.cpp")
    header = f"{'impl':<12} {'gen tok/s':>9} {'prompt tok/s':>12} {'load s':>7} {'2nd load s':>10} {'peak RSS GB':>11}"
    results = {}
    for strategy, qtype in pairs:
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(files[qtype]).tensors}
        counts = {t: list(types.values()).count(t) for t in sorted(set(types.values()))}
        buffers = peer_buffers(args, files[qtype], types)
        print(f"\n{strategy} | {qtype}: {files[qtype].name}, {files[qtype].stat().st_size / 1e9:.2f} GB ("
              + ", ".join(f"{n} {t}" for t, n in counts.items()) + f"); llama.cpp buffers: {buffers}")
        print(header + "\n" + "-" * len(header))
        ours, second, theirs = [], [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=cache) as folder:  # an empty converted-weights cache
                ours.append(roost(args, pth, strategy, folder))
                theirs.append(peer(args, "bench", "--gguf", str(files[qtype]), "--buffers", buffers,
                                   "--prompt", str(args.prompt), "--gen", str(args.gen)))
                second.append(roost(args, pth, strategy, folder, load_only=True))
        r, t, s = _median_run(ours), _median_run(theirs), _median_run(second)
        ratio = {k: r[k] / t[k] for k in ("gen_tps", "prompt_tps", "load_s", "peak_rss")}
        ratio["load2_s"] = s["load_s"] / t["load_s"]
        for name, x, load2 in (("roost", r, f"{s['load_s']:10.2f}"), ("llama.cpp", t, f"{'-':>10}")):
            print(f"{name:<12} {x['gen_tps']:9.2f} {x['prompt_tps']:12.1f} {x['load_s']:7.2f} {load2} "
                  f"{x['peak_rss'] / 1e9:11.2f}")
        print(f"{'ratio':<12} {ratio['gen_tps']:8.2f}x {ratio['prompt_tps']:11.2f}x {ratio['load_s']:6.2f}x "
              f"{ratio['load2_s']:9.2f}x {ratio['peak_rss']:10.2f}x")
        if args.repeat > 1:
            for name, runs in (("roost", ours), ("llama.cpp", theirs)):
                print(f"{name:<12} gen tok/s per run: " + ", ".join(f"{x['gen_tps']:.2f}" for x in runs))
        results[f"{strategy} | {qtype}"] = {"roost": r | {"load2_s": s["load_s"], "cached": int(s["cached"])},
                                            "llama.cpp": t | {"buffers": buffers, "types": counts}, "ratio": ratio}
    return {"shape": args.shape, "threads": args.threads, "prompt": args.prompt, "gen": args.gen,
            "repeat": args.repeat, "pairs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="v7-1.5b", choices=sorted(SHAPES) + sorted(CHECK_SHAPES))
    ap.add_argument("--pairs", default="int8,int4",
                    help="of " + ", ".join(f"{k} ({' | '.join(v)})" for k, v in PAIRS.items()))
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, interleaved; medians are printed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    ap.add_argument("--peer-python", default=DEFAULT_PEER if os.path.exists(DEFAULT_PEER) else sys.executable,
                    help="the python with llama-cpp-python (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="the conversion check instead of the benchmark")
    ap.add_argument("--check-shapes", default="v7-mini,v6-mini", help="of " + ", ".join(CHECK_SHAPES))
    ap.add_argument("--amx", default="auto", choices=("auto", "on", "off"),
                    help="llama.cpp's AMX kernels: on (its defaults), off, auto (off only where they crash)")
    for hidden in ("--peer", "--roost", "--gguf", "--out", "--qtype", "--ids", "--model", "--weight-cache"):
        ap.add_argument(hidden, default="", help=argparse.SUPPRESS)
    ap.add_argument("--buffers", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer or args.roost:
        args.strategy = args.roost
        print(json.dumps(peer_main(args) if args.peer else roost_main(args)))
        return
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    if args.check:
        if not check(args):
            raise SystemExit("conversion check FAILED: llama.cpp and Roost disagree")
        return
    print(json.dumps(bench(args)))


if __name__ == "__main__":
    main()
