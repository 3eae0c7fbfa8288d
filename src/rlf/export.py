"""`rlf export RUN OUT.gguf`: one GGUF file with everything `runtime/rlf.c` needs to run `solve` without Python.

What goes in (tensor names are ours, documented here and read by name in runtime/rlf.c):

    token_embd.weight, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight,
    output_norm.weight                      the base's first `encoder_layers` Llama blocks and its final norm
    loop_blk.N.*                            with loop_layers=M: the next M blocks, LoRA merged into the weights
    head.norm.weight, head.halt.weight      the head's norm (the base's final norm, or the trained copy) and the
    head.output.weight                      <HALT> row; the LM head only when it is not token_embd (train_head)
    loop.gate, loop.norm.weight, loop.pos_embd, loop.scratchpad, loop.bridge_down.weight, loop.bridge_up.weight
    core.*                                  the Mamba2 or Transformer core (see _core_tensors)
    tokenizer.merge_ids                     (n_merges, 3) int32: left id, right id, merged id, in rank order

and as metadata the architecture numbers (`rlf.*`), the tokenizer (`tokenizer.ggml.*`: tokens, merges,
pre-tokeniser kind, special tokens), the prompt template and the run's whole config as JSON.
Matrices are stored as `--dtype` (f32, f16 or q8_0); vectors, norms, the gate and the SSM parameters stay f32.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlf.errors import RLFError


DTYPES = ("f32", "f16", "q8_0")
FORMAT_VERSION = 1  # bump when the runtime can no longer read older files
QK8_0 = 32  # q8_0 block: one f16 scale and 32 int8 values


def check_exportable(cfg, base_type: str) -> None:
    """Refuse, naming the option, what runtime/rlf.c does not implement."""
    if cfg.core not in ("mamba2", "transformer"):
        raise RLFError(f"rlf export: core={cfg.core} is not supported by the C runtime; use core=mamba2 or "
                       "core=transformer")
    if cfg.loop_span != "all":
        raise RLFError(f"rlf export: loop_span={cfg.loop_span} is not supported by the C runtime, which loops every "
                       "position; export a model trained with loop_span=all")
    if cfg.core_pos != "none":
        raise RLFError(f"rlf export: core_pos={cfg.core_pos} (token positions in the core) is not supported by the C "
                       "runtime; export a model trained with core_pos=none")
    if cfg.target_tokens != 1:
        raise RLFError(f"rlf export: target_tokens={cfg.target_tokens} (multi-token loop targets, K read-out slots) is "
                       "not supported by the C runtime, which reads one token per loop; export a model trained with "
                       "target_tokens=1")
    if base_type != "llama":
        raise RLFError(f"rlf export: base={cfg.base} is a {base_type} model; the C runtime runs Llama bases only "
                       "(smollm2-135m, tiny-llama, or another Llama checkpoint)")


# ----------------------------------------------------------------------------------------------- tokenizer

def tokenizer_metadata(tokenizer, n_vocab: int) -> tuple[dict, np.ndarray]:
    """The byte-level BPE tokenizer as GGUF metadata plus the merge table as ids; refuses any other kind."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    where = "rlf export: the base's tokenizer"
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        raise RLFError(f"{where} is not a plain byte-level BPE ({model.get('type')}); the C runtime supports "
                       "GPT-2-style byte-level BPE only")
    if spec.get("normalizer") is not None:
        raise RLFError(f"{where} has a normalizer ({spec['normalizer'].get('type')}), which the C runtime lacks")
    pre = spec.get("pre_tokenizer") or {}
    if not (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")):
        raise RLFError(f"{where} has pre-tokeniser {json.dumps(pre)}; the C runtime implements the GPT-2 "
                       "ByteLevel regex (use_regex=true, add_prefix_space=false) only")
    post = spec.get("post_processor")
    if post is not None and not (post.get("type") == "TemplateProcessing" and post.get("single") ==
                                 [{"Sequence": {"id": "A", "type_id": 0}}]) and post.get("type") != "ByteLevel":
        raise RLFError(f"{where} adds tokens around the text ({post.get('type')}); the C runtime adds none")
    vocab: dict[str, int] = model["vocab"]
    added = spec.get("added_tokens", [])
    for a in added:
        if a.get("normalized") or a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            raise RLFError(f"{where}: added token {a['content']!r} has normalized/lstrip/rstrip/single_word set, "
                           "which the C runtime does not implement")
    tokens = [""] * n_vocab
    for text, i in list(vocab.items()) + [(a["content"], a["id"]) for a in added]:
        if not 0 <= i < n_vocab:
            raise RLFError(f"{where}: token {text!r} has id {i}, beyond the head's {n_vocab} rows")
        tokens[i] = text
    byte_chars = _bytes_to_unicode()
    if sum(c in vocab for c in byte_chars) < 128:
        raise RLFError(f"{where}: most single bytes have no token; not a byte-level vocabulary")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    merge_ids = np.zeros((len(merges), 3), dtype=np.int32)
    for r, m in enumerate(merges):
        left, right = m.split(" ")
        merge_ids[r] = vocab[left], vocab[right], vocab[left + right]
    token_type = [1] * n_vocab  # 1 normal, 3 control (split out of the text before BPE)
    for a in added:
        token_type[a["id"]] = 3 if a.get("special") else 4  # 4: user-defined, also split out
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",  # 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": token_type,
        # a byte without a token is dropped, as the tokenizers library does when there is no unk token
        "rlf.tokenizer.byte_ids": [vocab.get(byte_chars[b], -1) for b in range(256)],
    }
    return meta, merge_ids


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


# ----------------------------------------------------------------------------------------------- tensors

def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


LLAMA_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}


def _llama_layers(layers, prefix: str) -> dict[str, torch.Tensor]:
    """PREFIX.N.* for Llama decoder layers; a LoRA-adapted linear is stored merged (W + scale * B A)."""
    out = {}
    for i, layer in enumerate(layers):
        out[f"{prefix}.{i}.attn_norm.weight"] = layer.input_layernorm.weight
        out[f"{prefix}.{i}.ffn_norm.weight"] = layer.post_attention_layernorm.weight
        for short, path in LLAMA_LINEARS.items():
            lin = layer.get_submodule(path)
            base = getattr(lin, "base_layer", lin)
            weight = base.weight
            if base is not lin:  # peft lora.Linear
                if getattr(lin, "use_dora", {}).get("default", False):
                    raise RLFError("rlf export: the loop layers use DoRA adapters, which the exporter cannot merge")
                weight = weight.detach() + sum(lin.get_delta_weight(a) for a in lin.active_adapters)
            out[f"{prefix}.{i}.{short}.weight"] = weight
            if base.bias is not None:
                out[f"{prefix}.{i}.{short}.bias"] = base.bias
    return out


def _base_tensors(base) -> dict[str, torch.Tensor]:
    m = base.model.base_model
    out = {"token_embd.weight": m.embed_tokens.weight, "output_norm.weight": m.norm.weight}
    return out | _llama_layers(m.layers, "blk")


def _core_tensors(core, kind: str) -> tuple[dict[str, torch.Tensor], nn.Module, int]:
    """The core's tensors, its innermost module and its width. A core looped at a narrower width k (`core_dim`,
    a module with `down` (d -> k), `inner` and `up` (k -> d)) adds core.down/core.up around the inner core."""
    outer = {}
    if all(hasattr(core, a) for a in ("down", "inner", "up")):
        outer = {"core.down.weight": core.down.weight, "core.up.weight": core.up.weight}
        if core.down.bias is not None or core.up.bias is not None:
            raise RLFError("rlf export: the core's down/up projections have biases, which the C runtime lacks")
        core = core.inner
    from rlf.cores.mamba2 import Mamba2Core
    from rlf.cores.transformer import TransformerCore

    expected = Mamba2Core if kind == "mamba2" else TransformerCore
    if not isinstance(core, expected):
        raise RLFError(f"rlf export: core={kind} is a {type(core).__name__} module here, which the exporter does "
                       f"not know; the C runtime runs {expected.__name__}")
    width = core.norm.weight.shape[0]
    return outer | _inner_core_tensors(core, kind), core, width


def _inner_core_tensors(core, kind: str) -> dict[str, torch.Tensor]:
    if kind == "mamba2":
        mx = core.mixer
        out = {"core.norm.weight": core.norm.weight, "core.in_proj.weight": mx.in_proj.weight,
               "core.conv1d.weight": mx.conv1d.weight[:, 0, :], "core.dt_bias": mx.dt_bias, "core.A_log": mx.A_log,
               "core.D": mx.D, "core.ssm_norm.weight": mx.norm.weight, "core.out_proj.weight": mx.out_proj.weight}
        for name, lin in (("in_proj", mx.in_proj), ("conv1d", mx.conv1d), ("out_proj", mx.out_proj)):
            if lin.bias is not None:
                out[f"core.{name}.bias"] = lin.bias
        return out
    out = {"core.norm.weight": core.norm.weight, "core.norm.bias": core.norm.bias,
           "core.out_proj.weight": core.out_proj.weight}
    for i, layer in enumerate(core.encoder.layers):
        parts = {"norm1": layer.norm1, "norm2": layer.norm2, "ffn_up": layer.linear1, "ffn_down": layer.linear2,
                 "attn_out": layer.self_attn.out_proj}
        for short, mod in parts.items():
            out[f"core.layers.{i}.{short}.weight"] = mod.weight
            out[f"core.layers.{i}.{short}.bias"] = mod.bias
        out[f"core.layers.{i}.attn_in.weight"] = layer.self_attn.in_proj_weight
        out[f"core.layers.{i}.attn_in.bias"] = layer.self_attn.in_proj_bias
    return out


def _is_matrix(name: str, arr: np.ndarray) -> bool:
    """Stored at --dtype: the big 2-D weight matrices. Everything small or sensitive stays f32."""
    if arr.ndim != 2 or name.startswith(("loop.", "head.halt", "head.norm", "core.conv1d", "tokenizer.")):
        return False
    return name.endswith(".weight") and "norm" not in name


def _add(writer, name: str, arr: np.ndarray, dtype: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if _is_matrix(name, arr) and dtype == "q8_0" and arr.shape[1] % QK8_0 == 0:
        writer.add_tensor(name, quantize(arr, GGMLQuantizationType.Q8_0),
                          raw_dtype=GGMLQuantizationType.Q8_0)
    elif _is_matrix(name, arr) and dtype in ("f16", "q8_0"):  # q8_0 needs whole blocks of 32: f16 otherwise
        writer.add_tensor(name, arr.astype(np.float16))
    else:
        writer.add_tensor(name, np.ascontiguousarray(arr))


# ----------------------------------------------------------------------------------------------- export

def export_run(run_dir: str | Path, out: str | Path, dtype: str = "f32", loaded=None) -> dict:
    """Write run `run_dir` as one GGUF file `out` (atomically); returns what was written (size, tensors, dtype)."""
    from gguf import GGUFWriter

    from rlf.train import load_run

    if dtype not in DTYPES:
        raise RLFError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise RLFError(f"{out}: the output file must end in .gguf")
    if not out.parent.is_dir():
        raise RLFError(f"{out}: the directory {out.parent} does not exist")
    from rlf.config import read_run_config

    cfg = read_run_config(run_dir)  # before loading anything: refuse early what cannot be exported
    check_exportable(cfg, "llama" if cfg.base in ("tiny-llama", "smollm2-135m") else _base_type(cfg.base))
    run = loaded or load_run(run_dir, device="cpu")
    base, model = run.base, run.model
    bc = base.model.config
    check_exportable(cfg, bc.model_type)
    rope = getattr(bc, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(bc, "rope_theta")}
    if rope.get("rope_type", "default") != "default":
        raise RLFError(f"rlf export: the base uses rope_type={rope['rope_type']}; the C runtime implements the "
                       "default rotary embedding only")
    if getattr(bc, "hidden_act", "silu") != "silu":
        raise RLFError(f"rlf export: the base's MLP uses {bc.hidden_act}; the C runtime implements silu only")
    d, V = model.cfg.d_model, model.cfg.vocab_size
    meta_tok, merge_ids = tokenizer_metadata(base.tokenizer, V)

    tensors = {k: _f32(v) for k, v in _base_tensors(base).items()}
    if model.cfg.loop_layers:  # the base's next blocks inside the loop, LoRA merged into their weights
        tensors |= {k: _f32(v) for k, v in _llama_layers(model.looped_layers.layers, "loop_blk").items()}
    tied = torch.equal(model.lm_head.detach().float().cpu(), base.model.get_input_embeddings().weight.float().cpu())
    if not tied:
        tensors["head.output.weight"] = _f32(model.lm_head)
    tensors["head.norm.weight"] = _f32(model.final_norm.weight)
    tensors["head.halt.weight"] = _f32(model.halt_row)
    tensors["loop.norm.weight"] = _f32(model.loop_norm.weight)
    if model.cfg.lifeline != "none":
        tensors["loop.gate"] = _f32(model.lifeline_gate)
    if model.cfg.loop_pos == "learned":
        tensors["loop.pos_embd"] = _f32(model.loop_embedding)
    if model.cfg.scratchpad:
        tensors["loop.scratchpad"] = _f32(model.scratchpad)
    if model.cfg.bridge_rank:
        tensors["loop.bridge_down.weight"] = _f32(model.bridge_down.weight)
        tensors["loop.bridge_up.weight"] = _f32(model.bridge_up.weight)
    core_tensors, core, core_width = _core_tensors(model.core, cfg.core)
    tensors.update({k: _f32(v) for k, v in core_tensors.items()})
    tensors["tokenizer.merge_ids"] = merge_ids

    tmp = out.with_name(f".{out.name}.tmp")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO line on endianness says nothing to a user
    w = GGUFWriter(str(tmp), arch="rlf")
    w.add_name(f"rlf {Path(run_dir).name}")
    w.add_uint32("rlf.format_version", FORMAT_VERSION)
    w.add_string("rlf.dtype", dtype)
    w.add_string("rlf.config", json.dumps(cfg.to_dict(), sort_keys=True))
    w.add_string("rlf.template", cfg.template)
    w.add_string("rlf.base.spec", cfg.base)
    w.add_string("rlf.base.arch", "llama")
    n_heads, n_kv = bc.num_attention_heads, bc.num_key_value_heads
    ints = {"rlf.base.n_layers": base.encoder_layers, "rlf.base.total_layers": base.total_layers,
            "rlf.base.d_model": d, "rlf.base.n_heads": n_heads, "rlf.base.n_kv_heads": n_kv,
            "rlf.base.head_dim": getattr(bc, "head_dim", None) or d // n_heads,
            "rlf.base.ffn_dim": bc.intermediate_size, "rlf.base.max_positions": bc.max_position_embeddings,
            "rlf.vocab_size": V, "rlf.head.tied": int(tied), "rlf.loop.max_loops": model.cfg.max_loops,
            "rlf.loop.scratchpad": model.cfg.scratchpad, "rlf.loop.layers": model.cfg.loop_layers,
            "rlf.loop.bridge_rank": model.cfg.bridge_rank}
    floats = {"rlf.base.rms_eps": bc.rms_norm_eps, "rlf.base.rope_theta": float(rope["rope_theta"]),
              "rlf.head.norm_eps": _eps(model.final_norm), "rlf.loop.norm_eps": _eps(model.loop_norm),
              "rlf.loop.rope_base": 10000.0}
    w.add_string("rlf.loop.lifeline", model.cfg.lifeline)
    w.add_string("rlf.loop.pos", model.cfg.loop_pos)
    w.add_string("rlf.core.kind", cfg.core)
    ints["rlf.core.width"] = core_width
    if cfg.core == "mamba2":
        mx = core.mixer
        lo, hi = mx.time_step_limit
        ints |= {"rlf.core.n_heads": mx.num_heads, "rlf.core.head_dim": mx.head_dim, "rlf.core.d_state":
                 mx.ssm_state_size, "rlf.core.n_groups": mx.n_groups, "rlf.core.conv_kernel": mx.conv_kernel_size}
        floats |= {"rlf.core.norm_eps": _eps(core.norm), "rlf.core.ssm_norm_eps": mx.norm.variance_epsilon,
                   "rlf.core.dt_min": float(lo), "rlf.core.dt_max": float(min(hi, 3.0e38))}
        if mx.activation != "silu":
            raise RLFError(f"rlf export: the Mamba2 core uses {mx.activation}; the C runtime implements silu only")
    else:
        layer = core.encoder.layers[0]
        ints |= {"rlf.core.n_layers": len(core.encoder.layers), "rlf.core.n_heads": layer.self_attn.num_heads,
                 "rlf.core.ffn_dim": layer.linear1.out_features}
        floats |= {"rlf.core.norm_eps": layer.norm1.eps}
    for k, v in ints.items():
        w.add_uint32(k, int(v))
    for k, v in floats.items():
        w.add_float32(k, float(v))
    for k, v in meta_tok.items():
        if isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v)
    for name, arr in tensors.items():
        _add(w, name, arr, dtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"file": str(out), "bytes": out.stat().st_size, "dtype": dtype, "tensors": len(tensors),
            "core": cfg.core, "encoder_layers": base.encoder_layers, "tied_head": tied}


def _eps(norm) -> float:
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon")
    return float(eps)


def _base_type(spec: str) -> str:
    """The model type of a base spec without loading its weights (a config read); 'unknown' if it cannot tell."""
    if spec in ("tiny-gpt2",):
        return "gpt2"
    if spec in ("tiny-mamba2",):
        return "mamba2"
    return "llama"  # directories, hub ids and GGUF files: checked on the loaded config


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a trained run as one GGUF file for the C runtime (runtime/rlf.c)")
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output file, e.g. model.gguf")
    p.add_argument("--dtype", default="f32", choices=DTYPES, help="storage of the weight matrices (default f32)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    info = export_run(args.run, args.out, args.dtype)
    print(f"{info['file']}: {info['bytes'] / 2**20:.1f} MiB, {info['tensors']} tensors, {info['dtype']}, "
          f"core {info['core']}, {info['encoder_layers']} encoder layers")
    print(f"run it: make rlf-run && ./rlf-run {info['file']} \"K = moon. P = K. What is P?\"")
    return 0


# ----------------------------------------------------------------------------------------------- the runtime

RUNTIME_SOURCE = Path(__file__).resolve().parents[2] / "runtime" / "rlf.c"  # in a source checkout


def find_compiler() -> str | None:
    """The system C compiler ($CC, cc, gcc or clang), or None."""
    import shlex
    import shutil

    for cc in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        if shutil.which(shlex.split(cc)[0]):
            return cc
    return None


def build_runtime(out: str | Path, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile runtime/rlf.c into `out` with the system compiler: `cc -O2 -o out runtime/rlf.c -lm`."""
    import shlex
    import subprocess

    cc = find_compiler()
    if cc is None:
        raise RLFError("no C compiler found (tried $CC, cc, gcc, clang); install one to build the runtime")
    if not RUNTIME_SOURCE.is_file():
        raise RLFError(f"{RUNTIME_SOURCE}: the runtime source is missing (it ships in the source checkout)")
    cmd = [*shlex.split(cc), "-O2", *extra_flags, "-o", str(out), str(RUNTIME_SOURCE), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RLFError(f"building the runtime failed ({' '.join(cmd)}):\n{done.stderr.strip()}")
    return Path(out)
