"""`python -m pyinfer --chat`, driven through main() with a fake stdin: replies equal
`Llama.create_chat_completion` on the same conversation (greedy), history is kept, the
commands and Ctrl-C behave, timings and the load report go to stderr."""
import io
import re

import pytest

from pyinfer import Llama
from pyinfer.__main__ import main
from pyinfer import cli_chat

N_CTX = 256
N_PREDICT = 6
SYSTEM = "You are terse."


@pytest.fixture(scope="module")
def oracle(smollm2):
    llm = Llama(str(smollm2), n_ctx=N_CTX, n_threads=2, n_threads_batch=2, verbose=False)
    yield llm
    llm.close()


def reply(oracle, messages):
    oracle.reset()
    return oracle.create_chat_completion(
        messages, temperature=0.0, max_tokens=N_PREDICT, repeat_penalty=1.0, top_k=40,
        top_p=0.95, min_p=0.05)["choices"][0]["message"]["content"]


def run(smollm2, monkeypatch, capsys, stdin, *extra):
    monkeypatch.setattr("sys.stdin", stdin if not isinstance(stdin, str) else io.StringIO(stdin))
    rc = main(["-m", str(smollm2), "--chat", "-n", str(N_PREDICT), "-c", str(N_CTX), "-t", "2",
               *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def replies(out):
    """The text printed after each `> ` prompt (the last prompt met end of input)."""
    parts = out.split("\n> ")[1:]
    return [p[:-1] if p.endswith("\n") else p for p in parts[:-1]]


def test_two_turns_with_history(smollm2, oracle, monkeypatch, capsys):
    rc, out, err = run(smollm2, monkeypatch, capsys, "Name a colour.\nAnd another one?\n",
                       "--system", SYSTEM)
    assert rc == 0
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."}]
    first = reply(oracle, msgs)
    msgs += [{"role": "assistant", "content": first},
             {"role": "user", "content": "And another one?"}]
    second = reply(oracle, msgs)
    assert replies(out) == [first, second]
    assert first and second
    assert "pyinfer: loaded" in err and "KV cache" in err            # the load report
    timings = re.findall(r"\[prompt: (\d+) of (\d+) tokens evaluated in \d+ ms, [\d.]+ "
                         r"tokens/s \| decode: (\d+) tokens in \d+ ms, [\d.]+ tokens/s\]", err)
    assert len(timings) == 2
    (new1, all1, dec1), (new2, all2, dec2) = [tuple(map(int, t)) for t in timings]
    assert new1 == all1 and int(dec1) <= N_PREDICT
    assert new2 < all2                 # the second turn reused the cached conversation


def test_exit_reset_and_blank_lines(smollm2, oracle, monkeypatch, capsys):
    rc, out, err = run(smollm2, monkeypatch, capsys,
                       "Say hi.\n\n/reset\nSay hi.\n/exit\nnever read\n")
    assert rc == 0
    want = reply(oracle, [{"role": "user", "content": "Say hi."}])
    got = out.split("\n> ")
    # prompts: Say hi. | blank | /reset | Say hi. | /exit
    assert got[1] == want + "\n" and got[4] == want + "\n"
    assert "[conversation cleared]" in err
    assert "never read" not in out


class _CtrlCInput(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt


def test_ctrl_c_at_prompt_leaves(smollm2, monkeypatch, capsys):
    rc, out, err = run(smollm2, monkeypatch, capsys, _CtrlCInput())
    assert rc == 0


class _InterruptOnce(io.StringIO):
    """stdout whose first reply text raises KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self):
        super().__init__()
        self.armed = True

    def write(self, s):
        if self.armed and s.strip() and s != "> ":
            self.armed = False
            raise KeyboardInterrupt
        return super().write(s)


def test_ctrl_c_stops_one_answer(smollm2, oracle, monkeypatch, capsys):
    fake_out = _InterruptOnce()
    monkeypatch.setattr("sys.stdout", fake_out)
    monkeypatch.setattr("sys.stdin", io.StringIO("Say hi.\nName a colour.\n"))
    rc = main(["-m", str(smollm2), "--chat", "-n", str(N_PREDICT), "-c", str(N_CTX), "-t", "2"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "[interrupted]" in err
    # the stopped answer stays in the history as the empty text it had reached
    msgs = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": ""},
            {"role": "user", "content": "Name a colour."}]
    assert replies(fake_out.getvalue())[-1] == reply(oracle, msgs)


def test_context_overflow_keeps_chatting(smollm2, oracle, monkeypatch, capsys):
    rc, out, err = run(smollm2, monkeypatch, capsys, "word " * 300 + "\nSay hi.\n")
    assert rc == 0
    assert re.search(r"error: Requested tokens \(\d+\) exceed context window of 256", err)
    assert replies(out)[-1] == reply(oracle, [{"role": "user", "content": "Say hi."}])


def test_missing_model(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as e:
        main(["-m", str(tmp_path / "none.gguf"), "--chat"])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err


def test_progress_bar_when_loading_is_slow(smollm2, monkeypatch):
    pytest.importorskip("tqdm", reason="the progress bar needs tqdm")
    monkeypatch.setattr(cli_chat, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(cli_chat, "READ_CHUNK", 1 << 20)
    err = io.StringIO()
    cli_chat.warm_file(str(smollm2), err)
    assert "loading SmolLM2-135M-Instruct.Q4_1.gguf" in err.getvalue()
    assert "/93.8M" in err.getvalue()          # the file's size is the bar's total
