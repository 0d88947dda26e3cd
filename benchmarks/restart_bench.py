"""A long chat after a restart: how soon its next turn answers, with states saved per reply.

    python benchmarks/restart_bench.py                     # v7 1.5B shape, cpu int8, 2,000-token chat
    python benchmarks/restart_bench.py --shape v7-0.4b --context 1000 --runs 3

A conversation of about `--context` tokens is built and answered once, which saves the state after
its last reply (roost.core.saved_states). Then, alternating, `--runs` times each:

- restart: everything the process remembered of the chat is dropped (the conversation, the state
  cache: what a restart loses; the model stays loaded and the files stay in the OS cache), and a
  new 20-token question is asked: the chat resumes from the saved state;
- fresh: the same question in a new, empty chat.

Prints the medians of the time to the first token and the tokens fed, and their ratio. The target
(the RWKV-native chat issue): restart within 1.3x of fresh, feeding exactly the new turn's tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SHAPES, checkpoint  # noqa: E402

QUESTION = "Could you say that again more briefly, in two short sentences, for a child?"  # ~20 tokens
USER = ("I am planning a trip along the river next month and wonder what I should bring, how long each "
        "stage takes, where to sleep and what the weather is usually like in the valleys at that time. ")
ASSISTANT = ("Bring light layers, a rain jacket and good shoes. Each stage takes four to six hours; "
             "there are guest houses in most villages, and the valleys are mild with showers in the afternoon. ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="v7-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--strategy", default="cpu int8")
    ap.add_argument("--context", type=int, default=2000, help="tokens of conversation before the new turn")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    args = ap.parse_args()

    from roost.core.conversations import ConversationStore
    from roost.core.runtime import Runtime
    from roost.core.saved_states import SavedStates
    from roost.engine.sampling import SamplingParams

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_path = checkpoint(args.shape, cache)
    rt = Runtime()
    rt.load(model_path, args.strategy)
    tok = rt.model.tokenizer
    params = SamplingParams(max_tokens=1, temperature=0)  # the first token is what is timed

    with tempfile.TemporaryDirectory(prefix="roost-restart-") as folder:
        store = ConversationStore(Path(folder) / "conversations.sqlite")
        rt.states = SavedStates(store.path)
        cid = store.new("long").id
        per_pair = len(tok.encode(f"User: {USER}\n\nAssistant: {ASSISTANT}\n\n"))
        pairs = max(1, args.context // per_pair)
        for _ in range(pairs - 1):
            store.append(cid, "user", USER.strip())
            store.append(cid, "assistant", ASSISTANT.strip())
        before = store.messages(cid)
        store.append(cid, "user", USER.strip())
        last = store.append(cid, "assistant", "")
        history = [(m.role, m.content) for m in before]
        t0 = time.perf_counter()
        r = rt.chat(cid, history, USER.strip(), params=SamplingParams(max_tokens=8, temperature=0),
                    path=[m.id for m in before], message=last.id)
        store.update(cid, last.id, r.text)
        print(f"shape {args.shape}, {args.strategy}: a {r.context_tokens}-token chat read and answered in "
              f"{time.perf_counter() - t0:.1f} s; state saved ({rt.states.usage().bytes / 2 ** 20:.1f} MB)")
        msgs = store.messages(cid)
        history = [(m.role, m.content) for m in msgs]
        path = [m.id for m in msgs]
        new_tokens = len(tok.encode(f"\n\nUser: {QUESTION}\n\nAssistant:"))

        def first_token(key, hist, ids_path) -> tuple[float, int]:
            t = time.perf_counter()
            seen = []
            reply = rt.chat(key, hist, QUESTION, params=params, path=ids_path,
                            on_piece=lambda _p: seen or seen.append(time.perf_counter() - t))
            return (seen[0] if seen else time.perf_counter() - t), reply.fed_tokens

        restart, fresh, fed_restart, fed_fresh = [], [], [], []
        for i in range(args.runs):
            rt._chats.clear()  # what a restart forgets: the conversations and the cache of states
            rt.cache.clear()
            t, n = first_token(cid, history, path)
            restart.append(t)
            fed_restart.append(n)
            t, n = first_token(f"fresh-{i}", [], [])
            fresh.append(t)
            fed_fresh.append(n)
        a, b = statistics.median(restart), statistics.median(fresh)
        print(f"first token after a restart: median {a * 1e3:.0f} ms, fed {statistics.median(fed_restart):.0f} tokens "
              f"(the new turn: ~{new_tokens}); resumed from a saved state {rt.states.resumed} times")
        print(f"first token in a fresh chat: median {b * 1e3:.0f} ms, fed {statistics.median(fed_fresh):.0f} tokens")
        print(f"restart / fresh: {a / b:.2f}x (target <= 1.3x)")
        rt.states.close()
        store.close()


if __name__ == "__main__":
    main()
