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


def open_backend(spec: str, *, max_new_tokens: int = 32, native=None, server=None,
                 list_models: bool = True, world=None):
    """The backend a --model spec names.

    native: NativeOptions (ctxprobe/backends/options.py) for a checkpoint; None: the backend's own
    defaults (weights loaded at once, each pass planned from the free memory then, no generation
    for failing cells). With NativeOptions the weights load only once `prepare` has planned the
    sweep's longest cell under its budgets. server: ServerOptions for openai:URL (None: defaults).
    list_models=False (a dry run that names the served model): no request to the server but
    /tokenize. world: under torchrun, the World a checkpoint's passes are sharded over."""
    from ctxprobe.backends.options import ServerOptions

    if native is not None and native.router_trace:
        check_router_trace(spec)
    if spec.startswith("openai:"):
        if native is not None and native.budgets_given():
            raise UserError("--gpu-memory, --host-memory and --offload-dir plan the native runner's "
                            "memory; an openai: server manages its own: drop them")
        from ctxprobe.backends.http import HttpBackend

        server = server or ServerOptions()
        return HttpBackend(spec[len("openai:"):], served_model=server.served_model, api=server.api,
                           api_key_env=server.api_key_env, tokenizer_path=server.tokenizer,
                           max_new_tokens=max_new_tokens, concurrency=server.concurrency,
                           timeout=server.timeout, retries=server.retries,
                           max_response_bytes=server.max_response_bytes, stream=server.stream,
                           reasoning_budget=server.reasoning_budget, list_models=list_models)
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

        if native is None:
            return NativeBackend(str(path), max_new_tokens=max_new_tokens, world=world)
        return NativeBackend(str(path), chat_template=native.chat_template, max_new_tokens=max_new_tokens,
                             device=native.device, dtype=native.dtype, memory=native.memory(),
                             threads=native.threads, generate_failing=native.generate_failing,
                             router_trace=native.router_trace, world=world)
    if path.is_dir():
        raise UserError(f"model directory {spec} has no config.json; pass an HF-format checkpoint "
                        "directory or openai:BASE_URL")
    raise UserError(f"unknown model spec {spec!r}: pass a checkpoint directory, builtin, or "
                    "openai:BASE_URL (e.g. openai:http://127.0.0.1:8000/v1)")
