"""The embedded default models, made by the package: ``"tiny"`` (Llama) and ``"tiny-moe"`` (Llama 4 text).

Nothing can be downloaded here, so the book's default model is built from a recipe: a word-level
tokenizer trained with ``tokenizers`` on the generated world's corpus, a small Llama-style decoder
(RoPE, RMSNorm, SwiGLU, grouped-query attention: 4 layers x 8 query heads, 4 key/value heads), and a
deterministic pretraining run on statements about the world (:mod:`forgetting.tasks.world`).

Where the weights live (first hit wins):

1. ``data/models/<name>/`` in the repository: the shipped build, used when its ``recipe.json`` hash
   equals the current recipe's (``forgetting pretrain`` writes here in a checkout). Shipping it saves
   every reader, test run and CI job the minutes of pretraining.
2. ``<cache>/models/<name>-<hash>/`` (``$FORGETTING_CACHE`` or ``~/.cache/forgetting``): built on
   first use when the recipe changed or the package was installed without ``data/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from forgetting import paths
from forgetting.files import atomic_dir, provenance
from forgetting.models.hub import quiet_progress
from forgetting.tasks.world import RELATIONS, make_world, pretraining_corpus, vocabulary_text

SPECIAL_TOKENS = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "unk": "[UNK]"}
RECIPE_VERSION = 1


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines an embedded model's weights (hashed to name its cache)."""

    name: str
    architecture: str  # "llama" or "llama4_text"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 16
    num_experts: int = 0
    world_seed: int = 0
    n_entities: int = 200
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    heldout_documents: int = 512
    seed: int = 0
    version: int = RECIPE_VERSION
    extra: dict = field(default_factory=dict)

    def hash(self) -> str:
        """A short stable hash of the recipe (12 hex digits)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


RECIPES: dict[str, PretrainRecipe] = {
    "tiny": PretrainRecipe(name="tiny", architecture="llama"),
    "tiny-moe": PretrainRecipe(
        name="tiny-moe", architecture="llama4_text", intermediate_size=256, num_experts=4, steps=2000, batch_size=32
    ),
}


def build_tokenizer(world_seed: int = 0, n_entities: int = 200):
    """A word-level fast tokenizer over the world's corpus and task words.

    Word level keeps every entity, value, letter and digit one token (see :mod:`forgetting.tasks.world`).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    world = make_world(world_seed, n_entities)
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()), min_frequency=1)
    lines = vocabulary_text(world) + pretraining_corpus(world, 2000, seed=world_seed)
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="right",
    )


def build_config(recipe: PretrainRecipe, tokenizer):
    """The transformers config of an embedded model (eager attention, untied embeddings)."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    if recipe.architecture == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(intermediate_size=recipe.intermediate_size, rope_theta=10000.0, **common)
    if recipe.architecture == "llama4_text":
        from transformers import Llama4TextConfig

        # Like Llama 4: every layer routes to 1 of num_experts experts plus a shared expert; every
        # 4th layer has no RoPE. Dense MLP size is used where a layer is not MoE.
        return Llama4TextConfig(
            intermediate_size=recipe.intermediate_size,
            intermediate_size_mlp=2 * recipe.intermediate_size,
            num_local_experts=recipe.num_experts,
            num_experts_per_tok=1,
            interleave_moe_layer_step=1,
            use_qk_norm=True,
            attention_chunk_size=1024,
            **common,
        )
    raise ValueError(f"architecture: {recipe.architecture!r} not one of 'llama', 'llama4_text'")


def _model_from_config(config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def encode_documents(tokenizer, documents: list[str]) -> dict[str, torch.Tensor]:
    """``[bos] document [eos]`` rows, right-padded; labels ignore padding. Shapes (n, L)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [[bos, *row, eos] for row in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def encode_corpus(tokenizer, documents: list[str], batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """``documents`` as a list of :func:`encode_documents` batches (encode once, score many times)."""
    return [encode_documents(tokenizer, documents[i : i + batch_size]) for i in range(0, len(documents), batch_size)]


@torch.no_grad()
def encoded_corpus_loss(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` over pre-encoded batches.

    The model's train/eval mode is restored afterwards (this runs in the middle of training).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / count


def corpus_loss(model, tokenizer, documents: list[str], batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``documents``."""
    return encoded_corpus_loss(model, encode_corpus(tokenizer, documents, batch_size))


@torch.no_grad()
def fact_recall(model, tokenizer, world) -> float:
    """Fraction of the world's facts whose value is the argmax after the first statement template.

    For "{e} lives in {v} ." the model reads ``[bos] kamo lives in`` and must put the most probability
    on ``oslo``. A probe of pretraining knowledge in the format the model was trained on.
    """
    model.eval()
    hits = total = 0
    for relation, spec in RELATIONS.items():
        prefix = spec["statements"][0].split("{v}")[0]
        prompts = [prefix.format(e=e).strip() for e in world.entities]
        values = [world.facts[relation][e] for e in world.entities]
        batch = encode_documents(tokenizer, prompts)
        lengths = batch["attention_mask"].sum(dim=1) - 1  # position of the [eos]; predict from the one before
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows = torch.arange(len(prompts))
        predicted = logits[rows, lengths - 1].argmax(dim=-1)
        expected = torch.tensor(tokenizer.convert_tokens_to_ids(values))
        hits += int((predicted == expected).sum())
        total += len(prompts)
    return hits / total


def heldout_documents(recipe: PretrainRecipe) -> list[str]:
    """A held-out sample of the pretraining corpus (its own seed): measures general capability."""
    world = make_world(recipe.world_seed, recipe.n_entities)
    return pretraining_corpus(world, recipe.heldout_documents, seed=10_000 + recipe.seed)


def pretrain(recipe: PretrainRecipe, out_dir: Path, *, progress: bool = True) -> dict:
    """Pretrain the embedded model of ``recipe`` from scratch and save it into ``out_dir``.

    Deterministic: the corpus stream, initialisation and batch order come from ``recipe.seed``. AdamW
    with linear warmup and cosine decay; fresh documents every step (no epochs). Writes the model,
    tokenizer and ``recipe.json`` (recipe, hash, held-out loss, wall time, provenance) atomically:
    the folder appears complete or not at all. Returns the ``recipe.json`` contents.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer(recipe.world_seed, recipe.n_entities)
    model = _model_from_config(build_config(recipe, tokenizer))
    world = make_world(recipe.world_seed, recipe.n_entities)
    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress_ = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    started = time.perf_counter()
    model.train()
    bar = tqdm(range(recipe.steps), desc=f"pretrain {recipe.name}", disable=not progress or paths.quiet())
    for _ in bar:
        docs = pretraining_corpus(world, recipe.batch_size, seed=rng.randrange(2**31))
        batch = encode_documents(tokenizer, docs)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.perf_counter() - started
    model.eval()
    info = {
        "recipe": asdict(recipe),
        "recipe_hash": recipe.hash(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "heldout_loss": corpus_loss(model, tokenizer, heldout_documents(recipe)),
        "fact_recall": fact_recall(model, tokenizer, world),
        "pretrain_seconds": round(seconds, 1),
        **provenance(),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(info, indent=2))
    return info


def shipped_dir(name: str) -> Path:
    return paths.DATA_DIR / "models" / name


def cached_dir(name: str) -> Path:
    return paths.cache_dir() / "models" / f"{name}-{RECIPES[name].hash()}"


def _matches_recipe(folder: Path, recipe: PretrainRecipe) -> bool:
    meta = folder / "recipe.json"
    return meta.is_file() and json.loads(meta.read_text()).get("recipe_hash") == recipe.hash()


def embedded_dir(name: str, *, build: bool = True, progress: bool = True) -> Path:
    """The folder holding the current build of embedded model ``name`` (built if missing)."""
    if name not in RECIPES:
        raise KeyError(f"unknown embedded model {name!r}; allowed: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    for folder in (shipped_dir(name), cached_dir(name)):
        if _matches_recipe(folder, recipe):
            return folder
    if not build:
        raise FileNotFoundError(f"embedded model {name!r} is not built; run `forgetting pretrain --model {name}`")
    target = shipped_dir(name) if paths.DATA_DIR.is_dir() else cached_dir(name)
    pretrain(recipe, target, progress=progress)
    return target


def embedded_info(name: str = "tiny") -> dict:
    """The ``recipe.json`` of embedded model ``name``: size, held-out loss, provenance."""
    return json.loads((embedded_dir(name) / "recipe.json").read_text())


def load_embedded(name: str = "tiny"):
    """``(model, tokenizer)`` of embedded model ``name``, in eval mode with eager attention."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = embedded_dir(name)
    with quiet_progress(always=True):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model.eval()
    return model, tokenizer
