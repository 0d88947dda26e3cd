"""The loaded model: ``load_model(path, strategy)`` and ``model.forward(tokens, state)``.

``forward`` takes any number of tokens. Prompts run in sequence mode: chunks of ``chunk_len`` tokens
go through each layer together (matrix multiplies over the chunk, the recurrence in chunked
parallel form where the architecture allows), which yields the same state as one token at a time.
The state passed in is never modified, so a caller may keep it and branch from it (chat caching).

Layers are placed by the strategy: each block runs on its stage's device in its precision, and a
layer's state lives on that layer's device, so with a GPU/CPU split only the activations of the
current chunk cross devices. Streamed layers keep their big matrices in pinned CPU memory and
copy them to the GPU for each forward.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from roost.engine import compiled, fused, native, threads
from roost.engine.arch import arch_module
from roost.engine.checkpoint import ModelConfig, TensorFile, open_checkpoint
from roost.engine.embedding import build_embedding, compact_embedding
from roost.engine.cpu import cpu_has_vnni
from roost.engine.int4 import Int4Linear
from roost.engine.int8 import HAS_INT8PACK, Int8Linear, Packer, quantize_rows
from roost.engine.linear import PackedLinear, linear, low_rank_in_blocks, pack_for_cpu, packs_low_rank
from roost.engine.native import BlockLinear
from roost.engine.options import LoadOptions
from roost.engine.states import BatchState, State  # noqa: F401 (the model's state types, imported from here too)
from roost.engine.strategy import Placement, Strategy, check_devices, machine_devices, parse_strategy, plan_layers

log = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def act_dtype(stage) -> torch.dtype:
    """Activations run in float32 on the CPU (only weights are stored smaller), else in the stage's type."""
    return torch.float32 if stage.device == "cpu" else _DTYPES[stage.dtype]
REFINE_TOP = 64  # logits recomputed in float32 when the head runs in bf16 or int8
RESCALE_EVERY = 6  # fp16, RWKV-4/5/6: halve the residual stream every 6 layers (as ChatRWKV)


class RWKV:
    """An RWKV model ready to run. Build it with :func:`load_model`."""

    def __init__(self, config: ModelConfig, strategy: Strategy, placements: list[Placement],
                 weights: dict, layers: list[dict], tokenizer, path: Path, chunk_len: int = 128):
        self.config = config
        self.strategy = strategy
        self.path = path
        self.tokenizer = tokenizer
        self.chunk_len = chunk_len
        self.load_seconds = 0.0
        self._arch = arch_module(config.arch)
        self._w = weights  # emb (ln0 folded in, on the CPU), ln_out, head
        self._layers = layers
        self._places = placements
        self._rescale = config.version < 7 and any(p.stage.dtype == "fp16" for p in placements)
        self._step = self._arch.layer  # one token through a layer; torch.compile'd when opted in
        self.compiled = False  # whether the one-token step runs compiled
        self.compile_note: str | None = None  # why not, when compilation was asked for

    def enable_compile(self) -> bool:
        """Compile the one-token layer step with torch.compile where this machine can; else say
        why in :attr:`compile_note` and stay eager. Compiles now (one token through a fresh state)
        so that the cost is paid at load time and failures show at once. Returns :attr:`compiled`."""
        reason = compiled.unavailable_reason(self.strategy.devices)
        if reason:
            self._no_compile(reason)
            return False
        self._step = torch.compile(self._arch.layer, dynamic=False)
        self.compiled, self.compile_note = True, None
        self.forward([0])
        return self.compiled

    def _no_compile(self, reason: str) -> None:
        self._step, self.compiled = self._arch.layer, False
        self.compile_note = f"running without compilation because {reason}"
        log.warning("%s", self.compile_note)

    def _layer(self, x, lw, st, carry):
        """One layer; a single token goes through the kernels' layer step (engine.fused) or the
        torch.compile'd step, if any (the prompt chunks always run eagerly). A compiled step that
        fails is dropped for the eager one."""
        if x.shape[0] == 1 and "native.step" in lw:
            return lw["native.step"](x, st, carry)
        if x.shape[0] != 1 or not self.compiled:
            return self._arch.layer(x, lw, st, self.config, carry)
        try:
            return self._step(x, lw, st, self.config, carry)
        except Exception as e:  # noqa: BLE001 (compiler errors come in many types)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self._no_compile(f"torch.compile failed ({type(e).__name__}: {first[:300]})")
            return self._arch.layer(x, lw, st, self.config, carry)

    # the names RWKV users know from the rwkv pip package
    version = property(lambda self: self.config.version)
    n_layer = property(lambda self: self.config.n_layer)
    n_embd = property(lambda self: self.config.n_embd)
    vocab_size = property(lambda self: self.config.vocab_size)

    def __repr__(self) -> str:
        return f"<RWKV {self.config.label} on '{self.strategy}' from {self.path.name}>"

    def zero_state(self) -> State:
        """The state before any token: zeros, or a state-tuned checkpoint's own starting state."""
        return self.start_state()

    def start_state(self, persona=None) -> State:
        """The state before any token; with ``persona`` (a state-tuning file's
        :class:`~roost.engine.tuned_state.TunedState`, or its path) each layer's time-mixing state
        starts from the file's instead, converted as the architecture converts a checkpoint's own
        (``arch.time_state``), on each layer's device. Raises
        :class:`~roost.engine.errors.TunedStateMismatchError` where the file was made for another
        model, with a sentence that says what it has and what this model needs."""
        starts = None
        if persona is not None:
            from roost.engine.tuned_state import TunedState, load_tuned_state

            tuned = persona if isinstance(persona, TunedState) else load_tuned_state(persona)
            starts = tuned.runtime_states(self.config)
        layers = []
        for i, (lw, place) in enumerate(zip(self._layers, self._places)):
            if starts is not None:  # the layer as if its checkpoint carried this time_state
                lw = {**lw, "att.time_state": starts[i]}
            st = self._arch.init_state(self.config, lw, act_dtype(place.stage))
            layers.append(tuple(t.to(place.stage.torch_device) for t in st))
        return State(tuple(layers))

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed ``tokens``; return float32 logits ``[vocab]`` of the last one and the new state."""
        return self._run(tokens, state, all_logits=False)

    @torch.inference_mode()
    def forward_all(self, tokens: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Like :meth:`forward` but return the logits of every token, ``[T, vocab]``."""
        return self._run(tokens, state, all_logits=True)

    @torch.inference_mode()
    def forward_batch(self, tokens: Sequence[int], batch: BatchState, *,
                      in_place: bool = False) -> tuple[torch.Tensor, BatchState]:
        """One token for each of B streams at once: ``tokens[b]`` continues the state ``batch``
        holds for stream b. Returns float32 logits ``[B, vocab]`` and the batch's new state. The
        weights are read once for all the streams, so on a CPU a step of 8 costs little more than
        a step of one; each stream gets what :meth:`forward` of its token alone gives (up to the
        rounding of batched matrix products). ``in_place``: ``batch`` is the caller's to give up
        (a server's running batch): layers that run as compiled steps write their new state into
        its tensors instead of new ones, and ``batch`` must not be used afterwards."""
        tokens = self._checked(tokens)
        threads.adapt()
        if len(tokens) != batch.size:
            raise ValueError(f"{len(tokens)} tokens for a batch of {batch.size} streams")
        layers_state = list(batch.layers)
        layer = functools.partial(self._arch_layer, in_place=True) if in_place else self._arch_layer
        x = self._through_layers(self._w["emb"][torch.tensor(tokens)], layers_state, layer)  # rows: streams
        logits = self._head(x)
        return logits.float().cpu(), BatchState(tuple(layers_state), tuple(n + 1 for n in batch.n_tokens))

    def _checked(self, tokens) -> list[int]:
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("forward() needs at least one token")
        bad = [t for t in tokens if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range for vocabulary {self.config.vocab_size}: {bad[:5]}")
        return tokens

    def _arch_layer(self, x, lw, st, carry, in_place: bool = False):  # (batched decoding: a row per stream)
        if "native.step" in lw:  # (in_place: the compiled step writes the new state over st)
            return lw["native.step"](x, st, carry, in_place=in_place)
        return self._arch.layer(x, lw, st, self.config, carry)

    def _through_layers(self, x, layers_state: list, step):
        """`x` (embeddings) through every layer with `step` (x, weights, state, carry), each on its
        stage's device and type; `layers_state` is updated in place. Returns the last layer's x."""
        carry = None
        for i, lw in enumerate(self._layers):
            stage = self._places[i].stage
            dev, dt = torch.device(stage.torch_device), act_dtype(stage)
            # (moved only where they are not there yet: no-op moves are ~5 small ops a layer)
            x = _moved(x, dev, dt)
            if carry is not None:
                carry = _moved(carry, dev, dt)
            if self._places[i].stream:
                lw = _to_device(lw, dev)
            st = layers_state[i]
            if any(t.device != dev for t in st):
                st = tuple(t.to(dev) for t in st)
            x, layers_state[i], carry = step(x, lw, st, carry)
            if self._rescale and (i + 1) % RESCALE_EVERY == 0:
                x = x / 2
        return x

    def _run(self, tokens, state, *, all_logits: bool):
        tokens = self._checked(tokens)
        threads.adapt()  # (automatic thread counts: a look at the machine's load, once a second)
        if state is None:
            state = self.zero_state()
        layers_state = list(state.layers)
        outs = []
        for c0 in range(0, len(tokens), self.chunk_len):
            chunk = tokens[c0:c0 + self.chunk_len]
            x = self._through_layers(self._w["emb"][torch.tensor(chunk)], layers_state, self._layer)  # (T, C)
            if all_logits or c0 + self.chunk_len >= len(tokens):
                outs.append(self._head(x if all_logits else x[-1:]))
        logits = torch.cat(outs) if all_logits else outs[-1][0]
        return logits.float().cpu(), State(tuple(layers_state), state.n_tokens + len(tokens))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        stage = self._places[-1].stage
        x = x.to(device=stage.torch_device, dtype=act_dtype(stage))
        x = F.layer_norm(x, (x.shape[-1],), weight=self._w["ln_out.weight"], bias=self._w["ln_out.bias"])
        head = self._w["head.weight"]
        logits = linear(x, head).float()
        if head.dtype != torch.float32 and not getattr(head, "precise_output", False):
            # bf16 and most int8 kernels round their output to bf16 (3 significant digits), enough
            # to swap the two most likely tokens. Recompute the top candidates' logits in float32.
            k = min(REFINE_TOP, logits.shape[-1])  # a character-level vocabulary may be smaller
            top = logits.topk(k, dim=-1).indices  # (T, K)
            rows = head[top].float() if isinstance(head, torch.Tensor) else head.rows(top)  # (T, K, C)
            exact = (rows @ x.float().unsqueeze(-1)).squeeze(-1)
            logits = logits.scatter(-1, top, exact)
        return logits


def _moved(t: torch.Tensor, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return t if t.device == dev and t.dtype == dtype else t.to(device=dev, dtype=dtype)


def _to_device(lw: dict, dev: str) -> dict:
    return {k: (v.to(dev, non_blocking=True) if v is not None else None) for k, v in lw.items()}


def check_loadable(path: str | os.PathLike, strategy: str = "cpu fp32", *,
                   tokenizer_path: str | os.PathLike | None = None) -> ModelConfig:
    """What :func:`load_model` checks before anything heavy, without loading: the strategy, this
    machine's devices, the file (its format, its tensors and the model they make) and the model's
    tokenizer. Raises what load_model would raise for them; returns the model's configuration.
    A program checks a new model so before it lets go of the one it has loaded (a damaged or
    truncated file then costs nothing). Memory is not checked: what is free depends on what the
    program lets go of first."""
    from roost.engine.tokenizer import WORLD_VOCABS, tokenizer_for_vocab

    check_devices(parse_strategy(strategy), **machine_devices())
    tensors, cfg = open_checkpoint(path)
    try:
        arch_module(cfg.arch)
        if cfg.vocab_size not in WORLD_VOCABS or tokenizer_path is not None:
            tokenizer_for_vocab(cfg.vocab_size, path, tokenizer_path)
    finally:
        tensors.close()
    return cfg


def load_model(path: str | os.PathLike, strategy: str = "cpu fp32", *,
               options: LoadOptions | None = None,
               tokenizer_path: str | os.PathLike | None = None,
               progress: Callable[[float], None] | None = None, **option_changes) -> RWKV:
    """Load an official RWKV checkpoint (``.pth`` or ``.safetensors``) to run with ``strategy``.

    Raises :class:`~roost.engine.errors.CheckpointError` subclasses for files that cannot be used,
    :class:`~roost.engine.errors.StrategyError` for strategies this machine cannot run,
    :class:`~roost.engine.errors.OutOfMemoryError` when the model would not fit, and
    :class:`~roost.engine.errors.TokenizerError` when the model's tokenizer is missing.
    ``progress`` is called with the fraction loaded (0..1).

    ``options`` (a :class:`~roost.engine.options.LoadOptions`; single fields may be given as
    keywords, e.g. ``compile=True``, ``chunk_len=64``) says how: ``compile=True`` compiles the
    one-token layer step with ``torch.compile`` where a C++ compiler (and for GPUs Triton) exists,
    which makes loading slower by the compile time; elsewhere, or if compiling fails, the model runs
    eagerly as by default and ``model.compile_note`` says why.

    Memory stays near the final footprint: the file is memory-mapped and converted tensor by
    tensor, and the file pages of each converted tensor are released as soon as it is done.
    """
    from roost.engine import memory
    from roost.engine.tokenizer import WORLD_VOCABS, tokenizer_for_vocab, world_tokenizer_soon

    opts = (options or LoadOptions()).replace(**option_changes)
    chunk_len = opts.chunk_len
    strat = parse_strategy(strategy)
    check_devices(strat, **machine_devices())
    started = time.perf_counter()
    tensors, cfg = open_checkpoint(path)
    cache = packer = None
    quantized_cpu = any(s.device == "cpu" and (s.int8 or s.int4) for s in strat.stages)
    # the compiled kernels' blocks for int8 / int4 CPU matrices, unless a torch kernel was asked for
    blocks = opts.native and opts.int8_kernel is None and quantized_cpu and native.available()
    if opts.weight_cache and opts.weight_cache_bytes > 0 and quantized_cpu:
        from roost.engine.weight_cache import WeightCache

        # (the blocks and the PyTorch path's forms are kept apart: switching does not rebuild either)
        kept_as = f"{strat} [{native.FORMAT}]" if blocks else str(strat)
        cache = WeightCache(opts.weight_cache, opts.weight_cache_bytes).open(path, kept_as)
    # opted in: no heap holes left by the converted copies (process-wide glibc tuning)
    with memory.loading_allocator() if opts.tune_allocator else contextlib.nullcontext():
        try:
            places = plan_layers(strat, cfg.n_layer)
            if opts.check_memory:
                est = memory.estimate(tensors, cfg, strat, chunk_len, pack=opts.pack, blocks=blocks)
                memory.check_fits(est, memory.available(), model_name=Path(path).name, strategy=strat)
            # fail before the heavy part; the World vocabulary's ~0.3 s of reading goes on beside
            # the weights (a missing file fails here, a damaged one at the end)
            tokenizer = None
            if cfg.vocab_size in WORLD_VOCABS and tokenizer_path is None:
                world_tokenizer_soon()
            else:
                tokenizer = tokenizer_for_vocab(cfg.vocab_size, path, tokenizer_path)
            arch = arch_module(cfg.arch)
            rescale = cfg.version < 7 and any(p.stage.dtype == "fp16" for p in places)
            # torch.compile cannot trace oneDNN's packed weights: plain ones where it will compile
            pack = opts.pack and not (opts.compile and compiled.unavailable_reason(strat.devices) is None)
            layers = []
            packer = Packer() if quantized_cpu else None
            # the head first: its int8 packing (the largest) overlaps the layers' loading, and the
            # largest conversion happens while the least memory is in use
            head_weight = _matrix_loader(places[-1], 0, version=cfg.version, pack=pack, kernel=opts.int8_kernel,
                                         cache=cache, packer=packer, blocks=blocks)(tensors, "head.weight")
            tensors.drop_pages()
            for i in range(cfg.n_layer):
                big = _matrix_loader(places[i], i if rescale else 0, version=cfg.version, block=i, pack=pack,
                                     kernel=opts.int8_kernel, cache=cache, packer=packer, source=tensors,
                                     blocks=blocks)
                lw = arch.prepare_layer(tensors, i, cfg, act_dtype(places[i].stage), big)
                dev = places[i].stage.torch_device
                layers.append(lw if places[i].stream or dev == "cpu" else _to_device(lw, dev))
                tensors.drop_pages()  # the file pages of what was copied from it
                if progress:
                    progress((i + 1) / (cfg.n_layer + 1))
            head = places[-1].stage
            hdt = act_dtype(head)
            weights = {
                "emb": build_embedding(tensors, cfg, act_dtype(places[0].stage), compact=compact_embedding(places[0].stage)),
                "ln_out.weight": tensors["ln_out.weight"].to(device=head.torch_device, dtype=hdt),
                "ln_out.bias": tensors["ln_out.bias"].to(device=head.torch_device, dtype=hdt),
                "head.weight": head_weight,
            }
            if packer is not None:
                packer.finish()
        except BaseException:
            if packer is not None:
                packer.close()
            if cache is not None:
                cache.abort()
            raise
        finally:
            tensors.close()
    if cache is not None:
        cache.finish()
    if tokenizer is None:
        tokenizer = tokenizer_for_vocab(cfg.vocab_size, path, tokenizer_path)
    if progress:
        progress(1.0)
    if blocks:  # whole layers in the compiled kernels, where they can be (RWKV-7 and RWKV-6)
        for lw, step in zip(layers, fused.layer_steps(layers, cfg)):
            if step is not None:
                lw["native.step"] = step
    model = RWKV(cfg, strat, places, weights, layers, tokenizer, Path(path), chunk_len=chunk_len)
    if opts.compile:
        model.enable_compile()
    model.load_seconds = time.perf_counter() - started
    # how many converted matrices came from the weight cache (0: converted from the file)
    model.cached_matrices = cache.hits if cache is not None else 0
    return model


def _matrix_loader(place: Placement, layer_id: int, *, version: int = 0, block: int | None = None,
                   pack: bool = True, kernel: str | None = None, cache=None,
                   packer=None, source: TensorFile | None = None,
                   blocks: bool = False) -> Callable[[TensorFile, str], object]:
    """How a layer's big matrices are stored: in the stage's dtype or int8, on its device
    (``block``: the layer's index, None for the head; ``pack``: float CPU weights reordered
    for oneDNN where that is faster, see engine.linear.pack_for_cpu; ``kernel``: the CPU int8
    kernel to use instead of each matrix's default; ``cache``: an engine.weight_cache.Entry that
    CPU int8 / int4 matrices are read from, or recorded into; ``packer``: an engine.int8.Packer
    for the fbgemm packing of CPU int8 matrices and of the small low-rank ones; ``source``: the
    file whose pages those low-rank matrices give back once packed; ``blocks``: CPU int8 / int4
    matrices in the compiled kernels' blocks, engine.native, where their shape allows)."""
    maybe_pack = functools.partial(pack_for_cpu, enabled=pack)
    stage = place.stage
    dtype = _DTYPES[stage.dtype]
    # streamed layers stay in CPU memory (pinned when a GPU is there) until each forward
    dev = "cpu" if place.stream else stage.torch_device

    def load(t: TensorFile, key: str):
        src = t[key]
        w = src
        if layer_id and key.endswith(("att.output.weight", "ffn.value.weight")):
            w = w.float() / 2 ** (layer_id // RESCALE_EVERY)  # fp16 rescaling, as ChatRWKV
        rows_done = (lambda rows: t.release(rows, None)) if w is src else None  # file pages, as we go
        in_blocks = blocks and not place.stream and dev == "cpu" and native.fits(w.shape)
        if stage.int4 and in_blocks:  # (the head and block 0 in 8 bits, see int4_precision)
            out = _blocked(key, w, 4 if int4_precision(block) == "int4" else 8, cache, release=rows_done)
        elif stage.int4:
            four = int4_precision(block) == "int4" and Int4Linear.fits(w.shape)
            # else int8: the head, block 0 and any shape the 4-bit kernel cannot take
            out = _quantized(key, w, "int4" if four else "int8", cache, release=rows_done, kernel=kernel,
                             packer=packer)
        elif stage.int8 and dev == "cpu" and keeps_bf16(version, block):
            out = maybe_pack(w, dtype=torch.bfloat16, release=rows_done)
        elif stage.int8 and place.stream:  # plain int8 in CPU memory, copied to the GPU per forward
            out = Int8Linear(w, device="cpu", kernel="dequant", release=rows_done)
        elif stage.int8 and in_blocks:
            out = _blocked(key, w, 8, cache, release=rows_done)
        elif stage.int8 and dev == "cpu":
            out = _quantized(key, w, "int8", cache, release=rows_done, kernel=kernel,
                             dynamic=quantizes_activations(key, version), packer=packer)
        elif stage.int8:
            out = Int8Linear(w, device=dev, release=rows_done)
        elif dev == "cpu" and not place.stream:  # the head keeps its plain rows to re-read its top logits
            out = maybe_pack(w, dtype=dtype, keep_rows=block is None and dtype != torch.float32, release=rows_done)
        else:
            out = w.to(device=dev, dtype=dtype).contiguous()
            if place.stream and torch.cuda.is_available():
                out = out.pin_memory()
        t.release(src, out)
        return out

    def low_rank(w: torch.Tensor, *, from_file: bool = True):
        """A small low-rank matrix (in, out) as int8 rows (out, in) for torch's weight-only kernel,
        where ``load.packs_low_rank`` (int8 / int4 CPU stages; see the arch modules' ``lora``).
        Half the bytes of bf16 and, above all, a cheaper call than oneDNN's packed bf16 (~30 against
        ~65 us for 288 x 2048 on one token): `cpu int8` tokens of the 1.6B / 1.5B shapes 1.06x (RWKV-6)
        and 1.085x (RWKV-7) faster, medians of 8 alternating pairs on an AVX512-BF16 CPU. Median logit
        error against `cpu fp32` (24 x 1024) 0.019 -> 0.022 (RWKV-6), 0.017 -> 0.019 (RWKV-7), top-1
        agreement within the spread of 256 positions. ``from_file``: ``w`` is a view of the file,
        whose pages go once it is converted."""
        release = (lambda rows: source.release(rows, None)) if source is not None and from_file else None  # noqa: E731
        if in_blocks and native.fits((w.shape[1], w.shape[0])):  # q8 blocks: the compiled layer step's
            return BlockLinear.from_weight(8, w.t(), release=release)
        if HAS_INT8PACK and packer is None:
            return Int8Linear(w.t(), kernel="int8pack", release=release)
        if HAS_INT8PACK:  # converted on a packing thread, complete once the packer finishes
            lin, rows = object.__new__(Int8Linear), packer.run(quantize_rows, w.t(), "cpu", 1 << 22, release)
            packer.pending.append(lambda: lin._setup([rows.result()], (w.shape[1], w.shape[0]), "int8pack", False))
            return lin
        return PackedLinear(w.t(), dtype=torch.bfloat16, packer=packer, release=release)

    in_blocks = low_rank_in_blocks(place, version, blocks)
    load.low_rank = low_rank
    load.packs_low_rank = in_blocks or packs_low_rank(place, pack)
    load.pad_low_rank = 64 if in_blocks else 1
    return load


def _blocked(key: str, w: torch.Tensor, bits: int, cache, *, release=None) -> BlockLinear:
    """A CPU matrix in the compiled kernels' blocks (engine.native), read from the weight cache
    when it has it (views of the mapped entry: nothing converted, nothing copied), else converted
    from ``w`` (never written) and recorded in the cache."""
    kind = f"q{bits}"
    got = cache.get(key, kind, BlockLinear.stored_shapes(bits, w.shape)) if cache is not None else None
    if got is not None:
        return BlockLinear.from_blocks(bits, got)
    out = BlockLinear.from_weight(bits, w, release=release)
    if cache is not None:
        cache.put(key, kind, out.blocks())
    return out


def _quantized(key: str, w: torch.Tensor, kind: str, cache, *, release=None, kernel: str | None = None,
               dynamic: bool = False, packer=None):
    """A CPU matrix as int8 (:class:`Int8Linear`) or int4 (:class:`Int4Linear`): read from the
    weight cache when it has it, else converted from ``w`` (and recorded in the cache)."""
    shape = tuple(w.shape)
    if kind == "int4":
        got = cache.get(key, kind, Int4Linear.stored_shapes(shape)) if cache is not None else None
        if got is not None:
            return Int4Linear.from_packed(got["packed"], got["scale_zero"])
        out = Int4Linear(w, release=release)
        if cache is not None:
            cache.put(key, kind, {"packed": out.packed, "scale_zero": out.scale_zero})
        return out
    rows, cols = shape
    step = rows if rows * cols <= Int8Linear.BLOCK else max(1, Int8Linear.BLOCK // cols)

    def blocks():  # converted (or read) one block of rows at a time, as Int8Linear packs them
        for r0 in range(0, rows, step):
            name, n = (key if step == rows else f"{key}@{r0}"), min(step, rows - r0)
            got = cache.get(name, kind, {"q": (n, cols), "scale": (n,)}) if cache is not None else None
            # the rows' pages are given back once fbgemm has packed them; the scale is copied so
            # that an int8 model keeps no view of the entry (its mapping then goes with the load)
            if got is not None:
                yield got["q"], got["scale"].clone(), functools.partial(cache.done, got["q"])
                continue
            q, scale = quantize_rows(w[r0:r0 + step], "cpu", release=release)
            if cache is not None:
                cache.put(name, kind, {"q": q, "scale": scale})
            yield q, scale

    return Int8Linear.from_row_blocks(blocks(), shape, kernel=kernel, quantize_activations=dynamic, packer=packer)


def quantizes_activations(key: str, version: int = 0) -> bool:
    """Whether a CPU int8 matrix may quantise its activations to 8 bits ("fbgemm-dynamic", a little
    faster) rather than keep weight-only precision (see engine.int8.Int8Linear).

    Measured on random checkpoints of real shapes (24x1024, RWKV-6), median logit error and top-1
    agreement vs fp32: all weight-only 1.6%, 97.7%. Quantising the activations on the fly
    costs little for the FFN (two thirds of the weights), and for the attention's key, value and
    gate only with AVX512-VNNI's full 8-bit range; the receptance (the query that reads the state;
    v5.0 4x256: 94.5% with it, 96.5% without), the attention output (whose input carries outliers)
    and the head cost most (all quantised: 2.5%, 95.7%). So, on VNNI CPUs: FFN and key/value/gate,
    the rest never. RWKV-7 is the exception: its squared-ReLU FFN doubles the error when the
    activations are quantised (3.1% vs 1.7%, top-1 93.8% vs 94.5%), and its attention projections
    cost agreement too (95.3% -> 94.1%), so it never does. Without AVX512-VNNI (7-bit activations)
    it never does either: on an AVX2 machine (Zen 3) the quantised FFN activations raised the
    median logit error by 20-30% on every version (v6 24x1024: 1.46% -> 1.83%; v5.2 4x128 top-1
    over 64 tokens 96.9% -> 93.8%) for no speed measured (v6 1.6B generation 4.97 vs 5.04 tok/s,
    medians of 4 alternating runs).
    """
    if version == 7 or not key.startswith("blocks.") or not cpu_has_vnni():
        return False
    if ".ffn." in key:
        return True
    return key.endswith(("att.key.weight", "att.value.weight", "att.gate.weight"))


def keeps_bf16(version: int, block: int | None) -> bool:
    """Matrices an int8 strategy keeps in bf16 on the CPU: RWKV-7's first block, whose errors
    every later layer carries (top-1 agreement 94.5% -> 95.7% on a random 24x1024 model, for
    1/24 of the weights at twice the bytes)."""
    return version == 7 and block == 0


def int4_precision(block: int | None) -> str:
    """How a 4-bit strategy stores a block's matrices (``block`` None: the output head): "int4",
    or "int8" where 4 bits cost more quality than the bytes they save.

    Measured on random checkpoints (top-1 agreement with cpu fp32 over 256 tokens, 24x1024): all
    4-bit v6 85.2%, v7 84.8%; block 0 in int8 (1/24 of the weights, its errors carry through every
    later layer) 87.1% / 86.3%, and so on 4x512 models of every version (+1.6 to +2.7 points).
    No matrix kind stands out: keeping any one kind of every block in int8 moves agreement within
    the noise (83-86%). The head (an eighth of a 1.5B model's weights) stays int8 as in llama.cpp's
    4-bit files (with fbgemm its products come out at float32 precision; elsewhere its top logits
    are re-read in float32, see ``RWKV._head``)."""
    return "int8" if block is None or block == 0 else "int4"
