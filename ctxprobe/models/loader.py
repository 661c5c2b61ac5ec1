"""Read an HF-format checkpoint directory into our Model, one safetensors shard at a time.

Order of work, so that a bad checkpoint fails before any weight is copied (the runner's
load_model, ctxprobe/runner/load.py, places the weights between steps 3 and 4):
  1. config.json -> ModelConfig (unsupported architecture: a message listing the supported ones)
  2. find the shards (index.json or *.safetensors); refuse pickles; read every header and check
     each file's size against it (a truncated file is named)
  3. map every stored key through the architecture's key table; compare with the model built on
     the meta device: missing, unexpected and mis-shaped keys are named with their file
  4. allocate the parameters, then copy shard by shard (each shard memory-mapped, one at a time)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ctxprobe.errors import UserError
from ctxprobe.models.config import ModelConfig, from_hf
from ctxprobe.models.keymap import compile_keys, map_key, stacked, stored_key
from ctxprobe.models.quantized import dequantize, unpack_index
from ctxprobe.models.registry import family_of
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "F8_E4M3": torch.float8_e4m3fn, "U8": torch.uint8}   # the last two only as quantized.py pairs


def read_config(path: str | Path) -> ModelConfig:
    """config.json (plus generation_config.json's stop ids) of a checkpoint dir -> ModelConfig."""
    root = _checkpoint_dir(path)
    cfg = from_hf(read_json_object(root / "config.json"), where=str(root / "config.json"))
    gen = root / "generation_config.json"
    if gen.exists():
        eos = read_json_object(gen).get("eos_token_id")
        for i in [] if eos is None else eos if isinstance(eos, list) else [eos]:
            if i not in cfg.eos_token_ids:
                cfg.eos_token_ids.append(int(i))
    return cfg


def build_empty(cfg: ModelConfig) -> nn.Module:
    """The model with every parameter on the meta device (no memory)."""
    with torch.device("meta"):
        return family_of(cfg.arch).build(cfg)


def key_map(cfg: ModelConfig) -> dict:
    """HF checkpoint key -> our parameter name for cfg's architecture (see keymap.py)."""
    family = family_of(cfg.arch)
    extra = family.config_keys(cfg) if family.config_keys else {}
    return {**extra, **family.architectures[cfg.arch]}


@dataclass
class StoredTensor:
    """Where one stored tensor's bytes are: which file, byte range, dtype and shape as stored."""
    file: str
    start: int                      # absolute byte offset in the file
    dtype: torch.dtype
    shape: tuple
    param: str                      # our parameter name inside the block
    expert: int | None              # the slice of a stacked [E, ...] parameter it fills

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


def file_stamp(st: os.stat_result) -> tuple:
    """What identifies a file's bytes as indexed: inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class Checkpoint:
    """A checked checkpoint directory and the model it fills, every parameter still on meta.
    Where each weight is stored is known; where it will live is the runner's choice
    (ctxprobe/runner/weights.py place)."""
    root: Path
    cfg: ModelConfig
    model: nn.Module                # built on the meta device
    index: dict                     # read_index(root)
    plan: dict                      # {file: {stored key: (our name, expert)}}, see plan_copies
    stamps: dict                    # {file: file_stamp}, taken before the headers were read
    packed: dict                    # {weight key: quantized.Packed} for a quantized checkpoint


def open_checkpoint(path: str | Path, cfg: ModelConfig) -> Checkpoint:
    """Check the whole checkpoint (files, headers, every key and shape) before any memory is taken."""
    root = _checkpoint_dir(path)
    stamps = {str(f): file_stamp(f.stat()) for f in shard_files(root)}   # before the headers are read
    index = read_index(root)
    model = build_empty(cfg)
    shapes, packed = unpack_index(index, cfg.quantization)
    plan = plan_copies(shapes, model, cfg, key_map(cfg))
    return Checkpoint(root, cfg, model, index, plan, stamps, packed)


def stored_tensors(ckpt: Checkpoint) -> list[list[StoredTensor]]:
    """Per block, the stored tensors that make it up (in the copy plan's order)."""
    if ckpt.packed:
        raise UserError(f"{ckpt.root}: its weights are quantized ({ckpt.cfg.quantization['method']}) and "
                        "dequantized at load, so they cannot stream from disk; use --weights resident or host")
    reads = [[] for _ in ckpt.model.blocks]
    for file, copies in ckpt.plan.items():
        start, entries = ckpt.index[file]
        for key, (name, expert) in copies.items():
            if name.startswith("blocks."):
                layer, param = name.removeprefix("blocks.").split(".", 1)
                stored_dtype, shape, begin = entries[key]
                reads[int(layer)].append(StoredTensor(str(file), start + begin, _DTYPES[stored_dtype],
                                                      shape, param, expert))
    return reads


def copy_into(ckpt: Checkpoint, blocks: bool = True) -> nn.Module:
    """Copy the stored tensors into the model's parameters, which have storage by now, shard by
    shard (each memory-mapped, one at a time); blocks=False leaves the blocks' out (they are read
    one layer at a time later). -> the model, embedding and head tied if the config says so."""
    model = ckpt.model
    params = dict(model.named_parameters())
    for file, copies in ckpt.plan.items():
        copies = {key: target for key, target in copies.items() if blocks or not target[0].startswith("blocks.")}
        if not copies:
            continue
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key, (name, expert) in copies.items():
                dest = params[name] if expert is None else params[name][expert]
                if key in ckpt.packed:
                    dest.copy_(dequantize(ckpt.packed[key], _read_tensor, dest.dtype))
                else:
                    dest.copy_(f.get_tensor(key))
    if ckpt.cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model


def _read_tensor(file: Path, key: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt", device="cpu") as f:
        return f.get_tensor(key)


def read_index(root: Path) -> dict[Path, tuple[int, dict[str, tuple]]]:
    """{shard file: (first data byte, {key: (dtype name, shape, offset from the first data byte)})},
    every header checked (see _header_entries)."""
    return {f: _header_entries(f) for f in shard_files(root)}


def read_headers(root: Path, quantization: dict | None = None) -> dict[Path, dict[str, tuple]]:
    """{shard file: {key: shape}} for every shard, each file's size checked against its header; a
    quantized pair shows as the weight it dequantizes to (ModelConfig.quantization)."""
    return unpack_index(read_index(root), quantization)[0]


def shard_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no 'weight_map'; re-download the checkpoint")
        files = [root / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise UserError(f"{f}: shard listed in {index.name} is missing; re-download the checkpoint")
        return files
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{root / pickles[0]}: pickle checkpoints are refused (they can run code when loaded); "
                        "convert to safetensors, e.g. save_pretrained(dir, safe_serialization=True)")
    raise UserError(f"{root}: no *.safetensors weights found")


def _header_entries(file: Path) -> tuple[int, dict[str, tuple]]:
    """Parse a safetensors header ourselves so a truncated or corrupt file gets a one-line error.
    -> (first data byte, {key: (dtype name, shape, offset of its bytes from the first data byte)})."""
    size = file.stat().st_size
    bad = f"{file}: truncated or corrupt safetensors file"
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"{bad} ({size} bytes); re-download it")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise UserError(f"{bad} (header says {n} bytes, file has {size}); re-download it")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{bad} (unreadable header: {e}); re-download it") from None
    if not isinstance(header, dict):
        raise UserError(f"{bad} (its header is not a JSON object); re-download it")
    header.pop("__metadata__", None)
    for key, v in header.items():
        if not (isinstance(v, dict) and isinstance(v.get("shape"), list)
                and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2):
            raise UserError(f"{bad} (tensor '{key}' has no shape or data_offsets); re-download it")
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end != size:
        raise UserError(f"{bad} (expected {8 + n + end} bytes, found {size}); re-download it")
    for key, v in header.items():
        if v.get("dtype") not in _DTYPES:
            raise UserError(f"{file}: tensor '{key}' has dtype {v.get('dtype')}; supported: {', '.join(_DTYPES)}")
        begin, end = (int(x) for x in v["data_offsets"])
        want = _DTYPES[v["dtype"]].itemsize * math.prod(int(d) for d in v["shape"])
        if end - begin != want:   # the disk weight tier reads shape x dtype bytes from `begin`
            raise UserError(f"{bad} (tensor '{key}' spans {end - begin} bytes, its shape and dtype need {want}); "
                            "re-download it")
    return 8 + n, {key: (v["dtype"], tuple(v["shape"]), int(v["data_offsets"][0])) for key, v in header.items()}


def plan_copies(headers: dict, model: nn.Module, cfg: ModelConfig, keymap: dict) -> dict[Path, dict]:
    """{file: {stored key: (our name, expert)}} after checking every key and shape."""
    rules, is_stacked = compile_keys(keymap), stacked(keymap)
    params = {n: p.shape for n, p in model.named_parameters()}
    if cfg.tie_embeddings:
        params.pop("output.weight", None)
    needed = {(n, e) for n, s in params.items() for e in ([None] if not is_stacked(n) else range(s[0]))}
    plan, unexpected, misshaped, seen = {}, [], [], set()
    for file, shapes in headers.items():
        plan[file] = {}
        for key, shape in shapes.items():
            target = map_key(rules, key)
            if target is None or (cfg.tie_embeddings and target and target[0] == "output.weight"):
                continue
            if target is False or target not in needed:
                unexpected.append(f"{key} ({file.name})")
                continue
            name, expert = target
            want = tuple(params[name]) if expert is None else tuple(params[name][1:])
            if tuple(shape) != want:
                misshaped.append(f"{key} ({file.name}): stored {list(shape)}, expected {list(want)}")
            seen.add(target)
            plan[file][key] = target
    missing = sorted(needed - seen, key=str)
    problems = []
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped key(s): " + "; ".join(misshaped[:5]))
    if missing:
        names = [stored_key(keymap, n, e) for n, e in missing]
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(names[:5]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:5]))
    if problems:
        root = next(iter(headers)).parent if headers else ""
        raise UserError(f"{root}: checkpoint does not match {cfg.arch} as configured in config.json: "
                        + " | ".join(problems))
    return plan


def _checkpoint_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix in PICKLE_SUFFIXES:
        raise UserError(f"{p}: pickle checkpoints are refused (they can run code when loaded); use safetensors")
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise UserError(f"{p}: expected a checkpoint directory holding config.json and *.safetensors")
    if not (p / "config.json").exists():
        raise UserError(f"{p}: no config.json; expected an HF-format checkpoint directory")
    return p


def read_template(root: Path) -> tuple[str | None, dict]:
    """-> (template source or None, {bos_token, eos_token, ...} strings) from a checkpoint dir."""
    cfg_file = root / "tokenizer_config.json"
    cfg = read_json_object(cfg_file) if cfg_file.exists() else {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = root / "chat_template.jinja"
    if template is None and jinja_file.exists():
        template = jinja_file.read_text()
    tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tok = cfg.get(name)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str):
            tokens[name] = tok
    return template, tokens


def read_json_object(file: Path) -> dict:
    """A checkpoint's JSON file (config, generation or tokenizer config), which must be an object."""
    try:
        value = json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: not valid JSON ({e}); restore the checkpoint's original file") from None
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected a JSON object, found {type(value).__name__}; "
                        "restore the checkpoint's original file")
    return value


def parse_dtype(d) -> torch.dtype:
    """A torch dtype or its name ('bfloat16', 'bf16', 'torch.float32', ...) -> torch.dtype."""
    if isinstance(d, torch.dtype):
        return d
    name = str(d).removeprefix("torch.")
    table = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16}
    if name not in table:
        raise UserError(f"dtype '{d}' is not supported; use float32, bfloat16 or float16")
    return table[name]
