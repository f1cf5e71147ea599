"""Load any Hugging Face causal LM and its tokenizer, by hub id or local folder, ready for analysis.

* Attention is always ``eager``: the default ``sdpa`` returns no attention weights and has no double
  backward on CPU. Mixture-of-experts models also get ``experts_implementation="eager"`` (transformers
  5.x otherwise picks ``grouped_mm`` for Mixtral-style experts, which ``torch.func`` cannot go through);
  transformers accepts the argument for every model and it is a no-op where there are no experts.
* Remote code runs only with ``trust_remote_code=True``.
* The model is in eval mode; the tokenizer pads on the right and gets a pad token (its eos) when it has none.
* Bad names fail early with :class:`~forgetting.errors.SpecError` on field ``model``: a path that does
  not exist fails without touching the network; a hub id fails fast when ``HF_HUB_OFFLINE`` is set
  (only the local cache is searched).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from forgetting.errors import SpecError
from forgetting.paths import quiet

# "name" or "org/name" as the hub spells repository ids (no leading dot, no "..", no third part).
_HUB_ID = re.compile(r"^(?!\.)[A-Za-z0-9_.\-]{1,96}(/(?!\.)[A-Za-z0-9_.\-]{1,96})?$")
_DTYPES = {
    "auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
    "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64,
}
_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub repository id (``"gpt2"``, ``"org/name"``)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve_source(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """``(source, local)``: an existing folder, or a hub id; anything else raises ``SpecError("model", ...)``.

    No network: a name that is not an existing folder and not shaped like a hub id is a missing path.
    """
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name.strip():
        raise SpecError("model", f"expected a Hugging Face id or a local folder, got {name_or_path!r}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecError("model", f"{name!r} is a folder but has no config.json (save the model with save_pretrained)")
        return str(path), True
    if path.exists():
        raise SpecError("model", f"{name!r} is a file; expected a model folder (save_pretrained) or a Hugging Face id")
    if isinstance(name_or_path, Path) or not is_hub_id(name):
        raise SpecError("model", f"no such model folder: {name!r} (and it is not a Hugging Face id of the form 'org/name')")
    return name, False


def _parse_dtype(dtype: Any) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise SpecError("dtype", f"{dtype!r} not allowed; allowed: a torch.dtype or one of {', '.join(_DTYPES)}")


def _parse_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SpecError("device", f"{device!r} is not a torch device ({exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _load_error(name: str, local: bool, exc: BaseException, what: str) -> SpecError:
    """Turn a transformers / huggingface_hub exception into one clear line on field ``model``."""
    text = str(exc)
    if "trust_remote_code" in text:
        return SpecError("model", f"{name!r} needs its own code to run; pass trust_remote_code=True if you trust it")
    if local:
        return SpecError("model", f"could not load the {what} from folder {name!r}: {_first_line(exc)}")
    if hub_offline() and "cached files" in text:
        return SpecError(
            "model",
            f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so the hub was not asked "
            "(unset HF_HUB_OFFLINE to download it, or pass a local folder)",
        )
    return SpecError("model", f"could not load the {what} of {name!r} from the Hugging Face hub: {_first_line(exc)}")


_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, ImportError)


@contextmanager
def quiet_progress(always: bool = False) -> Iterator[None]:
    """Silence transformers' loading progress bars when the package is quiet (``FORGETTING_QUIET``),
    or ``always`` (small local models load in milliseconds: a bar is only noise)."""
    from transformers.utils import logging as hf_logging

    if not (always or quiet()) or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a hub id or a local ``save_pretrained`` folder.

    Args:
        name_or_path: ``"org/name"`` on the hub, or a folder holding ``config.json``, weights and tokenizer.
        trust_remote_code: run the repository's own modeling code (never implied).
        dtype: ``None`` (transformers' default, the checkpoint's dtype), ``"auto"``, ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``torch.device``); ``None`` leaves it on CPU.

    Returns:
        The ``AutoModelForCausalLM`` in eval mode with eager attention, and its tokenizer (right padding,
        a pad token).

    Raises:
        SpecError: on field ``model`` (missing folder, unknown id, no tokenizer, remote code needed),
            ``dtype`` or ``device``; raised before anything heavy is loaded where possible.
    """
    source, local = resolve_source(name_or_path)
    torch_dtype = _parse_dtype(dtype)
    torch_device = _parse_device(device)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common = {"trust_remote_code": bool(trust_remote_code), "local_files_only": local or hub_offline()}
    try:  # the config first: small, and it fails fast on a bad id
        config = AutoConfig.from_pretrained(source, **common)
    except _LOAD_ERRORS as exc:
        raise _load_error(source, local, exc, "config") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except _LOAD_ERRORS as exc:
        raise _load_error(source, local, exc, "tokenizer") from None
    kwargs: dict[str, Any] = dict(common, config=config, attn_implementation="eager", experts_implementation="eager")
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except _LOAD_ERRORS as exc:
        raise _load_error(source, local, exc, "model") from None
    check_tokenizer(tokenizer, source)
    if torch_device is not None:
        model = model.to(torch_device)
    model.eval()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


#: The text a loaded tokenizer must encode to at least one token.
PROBE_TEXT = "The cat sat on the mat."


def check_tokenizer(tokenizer: Any, source: str) -> Any:
    """``tokenizer`` if it is usable, else :class:`~forgetting.errors.SpecError` on field ``model``.

    A folder saved without its tokenizer files can still load a tokenizer class with an empty
    vocabulary: every prompt and target then encodes to nothing, and a run scores a perfect exact match
    on empty answers. Usable means a vocabulary of at least 2 tokens and :data:`PROBE_TEXT` encoding to
    at least one token.
    """
    size = len(tokenizer)
    n_probe = len(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    if size < 2 or n_probe == 0:
        raise SpecError("model", f"{source}: its tokenizer has a vocabulary of {size} token(s) and encodes "
                                 f"{PROBE_TEXT!r} to {n_probe} tokens, so every prompt and answer would be empty. "
                                 "The folder lacks its tokenizer files (tokenizer.json or vocab/merges); save "
                                 "them beside the model with tokenizer.save_pretrained(folder)")
    return tokenizer


def read_config(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """The ``AutoConfig`` of a hub id or a local folder (offline where :func:`hub_offline` says so).

    Raises:
        SpecError: on field ``model`` when the config cannot be read (as :func:`load_pretrained`).
    """
    source, local = resolve_source(name_or_path)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=bool(trust_remote_code),
                                          local_files_only=local or hub_offline())
    except _LOAD_ERRORS as exc:
        raise _load_error(source, local, exc, "config") from None


def count_parameters(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> int:
    """Parameters of the causal LM at ``name_or_path``, counted on the ``meta`` device (no weights read).

    Raises:
        SpecError: as :func:`read_config`.
    """
    config = read_config(name_or_path, trust_remote_code=trust_remote_code)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=bool(trust_remote_code))
    return sum(p.numel() for p in model.parameters())


def prepare_tokenizer(tokenizer: Any, model: Any = None) -> Any:
    """Right padding, and a pad token when missing (eos, else bos, else unk); tells the model's
    generation config the pad id. Returns the tokenizer."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    return tokenizer
