"""A small ``transformers`` Llama under FSDP2 (fully_shard) on CPU/gloo, for tests/test_hf.py.

argv: train ROOT REF STEPS
      restore ROOT REF FROM_RUN

``train`` builds the model from tiny_config() (no download), trains STEPS AdamW steps on
this world size and saves ``{"model": model state, "optim": optimizer state}`` with
``ckpt.save`` as step STEPS of run "train" under ROOT. Rank 0 then writes REF/full.safetensors
(every parameter's full value, gathered with ``full_tensor()``), REF/config.json, and
REF/fsdp_logits.safetensors (the logits of the trained FSDP model itself on probe_ids(),
computed on every rank). It checks that training changed every parameter (an export of the
initial weights would not pass the test's comparison).

``restore`` builds the model with another seed on this world size, restores run FROM_RUN's
newest step under ROOT (``restore(from_run=...)``: the imported checkpoint), checks every
parameter bit for bit against REF/full.safetensors, trains one step and saves it as step 1
of run "finetune" (its lineage parent is the imported checkpoint).

Prints HF-OK <mode> ... on success; HF-MISMATCH lines and exit 1 on every rank otherwise.
"""
import os
import sys

import torch

torch.set_num_threads(1)

import tierpoint  # noqa: E402
from tierpoint.runtime import distenv  # noqa: E402

import ranklog  # noqa: E402  (tests/workers/ranklog.py)

RANK, WORLD = distenv.init_torch_distributed_from_mpi("gloo")
ranklog.start(f"hf-{sys.argv[1]}-n{WORLD}", RANK)

import torch.distributed as dist  # noqa: E402
from torch.distributed.checkpoint.state_dict import (get_state_dict,  # noqa: E402
                                                     set_model_state_dict)
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def tiny_config() -> LlamaConfig:
    # Dim-0 sizes 64, 32, 16 (k/v), 48 (mlp): uneven on 3 ranks.
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, tie_word_embeddings=False)


def probe_ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))


def build(seed: int):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config())
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model, opt, step: int) -> float:
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(100 + step))
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return loss.item()


def full_params(model) -> dict:
    """Every parameter's full value (a collective: every rank calls it)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        out[name] = (t.full_tensor() if isinstance(t, DTensor) else t).clone()
    return out


def fail(problems: list[str]) -> None:
    flags = [None] * WORLD
    dist.all_gather_object(flags, problems)
    everyone = [p for ps in flags for p in ps]
    for p in everyone:
        print(f"HF-MISMATCH rank {RANK}: {p}", flush=True)
    if everyone:
        sys.exit(1)


def do_train(root: str, ref: str, steps: int) -> None:
    from safetensors.torch import save_file
    model, opt = build(seed=1)
    initial = full_params(model)
    for step in range(1, steps + 1):
        train_step(model, opt, step)
    msd, osd = get_state_dict(model, opt)
    with tierpoint.Checkpointer(local=root, run="train") as ckpt:
        ckpt.save(steps, {"model": msd, "optim": osd}).wait()
    full = full_params(model)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=probe_ids()).logits
    unchanged = [n for n in full if torch.equal(full[n], initial[n])]
    problems = [f"training left {n} unchanged" for n in unchanged]
    if RANK == 0:
        os.makedirs(ref, exist_ok=True)
        save_file(full, os.path.join(ref, "full.safetensors"))
        save_file({"logits": logits.contiguous()}, os.path.join(ref, "fsdp_logits.safetensors"))
        tiny_config().to_json_file(os.path.join(ref, "config.json"))
    fail(problems)
    if RANK == 0:
        print(f"HF-OK train {WORLD} step={steps} params={len(full)} changed=all", flush=True)


def do_restore(root: str, ref: str, from_run: str) -> None:
    from safetensors.torch import load_file
    model, opt = build(seed=2)
    msd, _ = get_state_dict(model, opt)
    with tierpoint.Checkpointer(local=root, run="finetune") as ckpt:
        out = ckpt.restore({"model": msd}, from_run=from_run)
        set_model_state_dict(model, out["model"])
        want = load_file(os.path.join(ref, "full.safetensors"))
        got = full_params(model)
        problems = [f"{n}: not restored bit-exactly" for n in want
                    if n not in got or got[n].dtype != want[n].dtype
                    or not torch.equal(got[n].view(torch.uint8), want[n].view(torch.uint8))]
        problems += [f"{n}: restored but not in the reference" for n in got if n not in want]
        fail(problems)
        train_step(model, opt, 99)
        msd, _ = get_state_dict(model, opt)
        ckpt.save(1, {"model": msd}).wait()
    if RANK == 0:
        print(f"HF-OK restore {WORLD} from={from_run} params={len(got)} bit_exact=yes", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "train":
        do_train(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        do_restore(sys.argv[2], sys.argv[3], sys.argv[4])
    # Not dist.destroy_process_group() and a normal exit: a gloo thread object's destructor
    # can abort a rank at interpreter teardown ("terminate called without an active
    # exception", seen in CI); exit_process destroys the group, barriers, finalises MPI and
    # leaves without static destructors.
    distenv.exit_process(0)
