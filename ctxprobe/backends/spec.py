"""Turn a --model spec into a backend.

    path/to/checkpoint        the native runner on a local HF-format checkpoint
    builtin                   the native runner on the built-in model (ctxprobe/builtin/model)
    openai:BASE_URL           an OpenAI-compatible server (e.g. openai:http://127.0.0.1:8000/v1)
"""

from __future__ import annotations

from pathlib import Path

from ctxprobe.errors import UserError


def check_spec(spec: str, *, api_key_env: str | None = None, environ=None) -> None:
    """What can be refused before a store is opened or a server called: an openai: URL that could
    carry a secret, or a --api-key-env value that looks like a key (both would be stored)."""
    import os

    environ = os.environ if environ is None else environ
    if spec.startswith("openai:"):
        from ctxprobe.backends.http import check_api_key_env, check_server_url

        check_server_url(spec[len("openai:"):])
        check_api_key_env(api_key_env, environ)


def check_router_trace(spec: str) -> None:
    """--router-trace watches the routers of a model ctxprobe runs itself: one line for a server."""
    if spec.startswith("openai:"):
        raise UserError("--router-trace records the routers of a MoE model that ctxprobe runs itself; an "
                        "openai: server's routing cannot be seen: drop --router-trace, or pass a checkpoint")


def open_backend(spec: str, *, max_new_tokens: int = 32, concurrency: int = 4,
                 served_model: str | None = None, api: str = "chat",
                 api_key_env: str | None = None, tokenizer: str | None = None,
                 timeout: float = 120.0, retries: int = 5, retry_base: float = 0.5,
                 max_response_bytes: int = 1 << 20, chat_template: bool = True,
                 device: str | None = None, dtype: str | None = None, memory=None,
                 threads: int | None = None,
                 generate_failing: int = 0, stream: bool = False, reasoning_budget: int = 0,
                 list_models: bool = True, router_trace: bool = False):
    """memory: a ctxprobe.backends.memory.MemoryBudgets for the native runner (None: no plan before
    loading; each pass plans from the free memory). A server manages its own memory.
    threads: the native runner's torch threads (None: picked before each pass from the free cores,
    ctxprobe/backends/threads.py).
    generate_failing, router_trace: native only; see NativeBackend.
    stream, reasoning_budget, list_models: openai: only; see HttpBackend."""
    if router_trace:
        check_router_trace(spec)
    if spec.startswith("openai:"):
        if memory is not None and memory.given():
            raise UserError("--gpu-memory, --host-memory and --offload-dir plan the native runner's "
                            "memory; an openai: server manages its own: drop them")
        from ctxprobe.backends.http import HttpBackend

        return HttpBackend(spec[len("openai:"):], served_model=served_model, api=api,
                           api_key_env=api_key_env, tokenizer_path=tokenizer,
                           max_new_tokens=max_new_tokens, concurrency=concurrency,
                           timeout=timeout, retries=retries, retry_base=retry_base,
                           max_response_bytes=max_response_bytes, stream=stream,
                           reasoning_budget=reasoning_budget, list_models=list_models)
    path = Path(spec)
    if spec == "builtin" and not path.exists():
        from ctxprobe.builtin import MODEL_DIR

        path = MODEL_DIR
    if path.is_dir() and (path / "config.json").is_file():
        if not (path / "tokenizer.json").is_file():   # said before torch is imported (10 s and more)
            raise UserError(f"checkpoint {spec} has no tokenizer.json; add the model's tokenizer "
                            "so ctxprobe can count lengths in its tokens")
        from ctxprobe.backends.threads import passive_waits

        passive_waits()    # before torch loads libgomp, which reads it once
        from ctxprobe.backends.native import NativeBackend

        return NativeBackend(str(path), chat_template=chat_template, max_new_tokens=max_new_tokens,
                             device=device, dtype=dtype, memory=memory, threads=threads,
                             generate_failing=generate_failing, router_trace=router_trace)
    if path.is_dir():
        raise UserError(f"model directory {spec} has no config.json; pass an HF-format checkpoint "
                        "directory or openai:BASE_URL")
    raise UserError(f"unknown model spec {spec!r}: pass a checkpoint directory, builtin, or "
                    "openai:BASE_URL (e.g. openai:http://127.0.0.1:8000/v1)")
