"""An HTTP sweep against an instant loopback server, beside a plain client sending the same requests.

The server (a separate process) answers every chat completion at once, over HTTP/1.1 with
keep-alive. Three measurements, each a fresh process, in one run:

  build     the sweep's probes built alone (make_probe, the default exactness check)
  plain     the same chat requests sent by a plain http.client loop, `--concurrency` threads,
            one kept-alive connection each, prompts read from a file built beforehand
  ctxprobe  `ctxprobe run --model openai:...` over the same grid (probes, requests, scoring,
            SQLite), as a user runs it

Goal (issue 20): ctxprobe within 2x of plain + build. Default grid: niah at 32K tokens, 11
depths x 4 samples = 44 cells.

    python bench/bpe32k.py /tmp/bpe32k
    python bench/http_sweep.py --tokenizer /tmp/bpe32k [--runs 2] [--base /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve(port_file: str) -> None:
    """The instant server: /v1/models and /v1/chat/completions, answered without thinking."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"       # keep-alive

        def log_message(self, *args):
            pass

        def _reply(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply({"data": [{"id": "instant"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._reply({"choices": [{"message": {"role": "assistant", "content": "1234567"},
                                      "finish_reason": "stop"}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


BUILD = """
import json, sys, time
t0 = time.perf_counter()
from ctxprobe.probes import load_tokenizer, make_probe
tok = load_tokenizer(sys.argv[1])
length, depths, samples = int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
prompts = [make_probe("niah", length, d, sample=s, tokenizer=tok).prompt
           for s in range(samples) for d in depths]
json.dump(prompts, open(sys.argv[5], "w"))
print(time.perf_counter() - t0)
"""

PLAIN = """
import http.client, json, sys, threading, time
port, concurrency = int(sys.argv[1]), int(sys.argv[2])
prompts = json.load(open(sys.argv[3]))
t0 = time.perf_counter()
lock, queue, answers = threading.Lock(), list(range(len(prompts))), []
def worker():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    while True:
        with lock:
            if not queue:
                break
            i = queue.pop(0)
        body = json.dumps({"model": "instant", "temperature": 0.0, "max_tokens": 32,
                           "messages": [{"role": "user", "content": prompts[i]}]})
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        answers.append(json.loads(conn.getresponse().read())["choices"][0]["message"]["content"])
    conn.close()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
[t.start() for t in threads]
[t.join() for t in threads]
assert len(answers) == len(prompts)
print(time.perf_counter() - t0)
"""


def run(command, env) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(map(str, command[:4]))} ...\n{done.stderr[-2000:]}")
    return wall, done.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help="a directory holding tokenizer.json (bench/bpe32k.py)")
    ap.add_argument("--length", type=int, default=32 * 1024)
    ap.add_argument("--depths", type=int, default=11)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--base", default=None, help="an older checkout to time the same sweep with")
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    depths = [round(100 * i / (args.depths - 1), 3) for i in range(args.depths)]
    cells = len(depths) * args.samples
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            url = f"openai:http://127.0.0.1:{port}/v1"
            print(f"{cells} cells of niah at {args.length:,} tokens, concurrency {args.concurrency}, "
                  f"tokenizer {args.tokenizer}; {os.cpu_count()} CPUs")
            print(f"{'run':>3} {'what':<22} {'process s':>10} {'inner s':>8} {'load':>5}")
            trees = [("ctxprobe", ROOT)] + ([("ctxprobe (base)", Path(args.base))] if args.base else [])
            for r in range(args.runs):
                prompts = Path(tmp) / "prompts.json"
                wall, out = run([sys.executable, "-c", BUILD, args.tokenizer, str(args.length),
                                 json.dumps(depths), str(args.samples), str(prompts)], env)
                build = (wall, float(out))
                wall, out = run([sys.executable, "-c", PLAIN, str(port), str(args.concurrency),
                                 str(prompts)], env)
                plain = (wall, float(out))
                print(f"{r:>3} {'build (probes alone)':<22} {build[0]:>10.2f} {build[1]:>8.2f} "
                      f"{os.getloadavg()[0]:>5.2f}")
                print(f"{r:>3} {'plain client':<22} {plain[0]:>10.2f} {plain[1]:>8.2f} "
                      f"{os.getloadavg()[0]:>5.2f}")
                for name, tree in trees:
                    db = Path(tmp) / f"{name.split()[-1]}-{r}.db"
                    wall, out = run([sys.executable, "-m", "ctxprobe", "run", "--model", url,
                                     "--served-model", "instant", "--probe", "niah",
                                     "--lengths", str(args.length), "--depths", ",".join(map(str, depths)),
                                     "--samples", str(args.samples), "--concurrency", str(args.concurrency),
                                     "--tokenizer", args.tokenizer, "--db", str(db), "--quiet"],
                                    {**env, "PYTHONPATH": str(tree)})
                    inner = float(out.rsplit(" in ", 1)[1].split(" s")[0])
                    print(f"{r:>3} {name:<22} {wall:>10.2f} {inner:>8.2f} {os.getloadavg()[0]:>5.2f}   "
                          f"ratio to plain + build: {wall / (plain[0] + build[0]):.2f} (process), "
                          f"{inner / (plain[1] + build[1]):.2f} (inner)", flush=True)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
