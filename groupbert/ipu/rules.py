"""What the PopTorch path cannot do, checked before any work starts (``ConfigError``: exit 2).

Called by the runtime set-up of every job with ``runtime.backend`` ``ipu`` or ``ipu-model``; the rules are
PopTorch's and PopART's, so they live here rather than in the configuration module.
"""
from __future__ import annotations

from groupbert.config import ConfigError, RunConfig


def check_run_config(cfg: RunConfig) -> None:
    def fail(key: str, message: str):
        raise ConfigError(message, key, cfg.key_sources.get(key))

    di = cfg.ipu.device_iterations
    for key, value in (("train.max_steps", cfg.train.max_steps), ("train.checkpoint_every", cfg.train.checkpoint_every),
                       ("train.eval_every", cfg.train.eval_every), ("logging.log_every", cfg.logging.log_every)):
        if value % di:
            fail(key, f"{value} is not a multiple of ipu.device_iterations {di}: an IPU host call runs {di} steps")
    n_ipus = len(cfg.ipu.layers_per_ipu or [0])
    if n_ipus > 1:  # embeddings, layers over the IPUs, heads back on IPU 0: n + 1 forward stages
        need = 2 * (n_ipus + 1) - 1
        if cfg.train.gradient_accumulation < need:
            fail("train.gradient_accumulation", f"{cfg.train.gradient_accumulation} is too small for a pipeline "
                 f"over {n_ipus} IPUs: {n_ipus + 1} forward stages need at least 2 x {n_ipus + 1} - 1 = {need} "
                 f"micro-batches per step (PopTorch's rule)")
    if cfg.optimizer.name not in ("adamw", "lamb"):
        fail("optimizer.name", f"'{cfg.optimizer.name}' cannot run on the IPU backends: PopART performs the "
             f"update on device and offers AdamW and LAMB (use adamw or lamb)")
    if cfg.optimizer.name == "adamw" and cfg.optimizer.bias_correction is False:
        # graphcore/poptorch@sdk-release-3.4 python/_optimizer_attributes.py (_toPoptorchOptimizer) makes
        # AdamW(bias_correction=False) the type ADAMW_NO_BIAS, which popart_compiler/source/CompilerImpl.cpp
        # (getPopartOptimizer) passes on as AdamMode::Adam: the update stays bias-corrected, silently
        fail("optimizer.bias_correction", "false is ignored by PopTorch 3.4's AdamW: PopART runs it with bias "
             "correction whatever the flag says, so the IPU run would not be the recipe configured (the host "
             "AdamW drops the momentum correction); remove the key (bias-corrected AdamW) or use lamb, whose "
             "bias_correction=false PopTorch honours")
    if cfg.optimizer.name == "lamb" and cfg.train.max_grad_norm > 0:
        fail("train.max_grad_norm", "PopTorch's LAMB has no gradient clipping; set train.max_grad_norm=0 "
             "for the ipu backends")
    if cfg.logging.update_metrics_every:
        fail("logging.update_metrics_every", "update-size metrics need the host-side optimizer step; "
             "they are not available on the ipu backends")
    if cfg.runtime.precision == "fp16":
        fail("runtime.precision", "fp16 with loss scaling is the host path's (CPU/CUDA); on the IPU backends "
             "use ipu.half and ipu.loss_scaling")
    if cfg.runtime.compile:
        fail("runtime.compile", "true is for the host path (CPU/CUDA): on the IPU backends PopTorch compiles the "
             "graph itself; set runtime.compile=false")


def check_total_steps(cfg: RunConfig, total_steps: int) -> None:
    """A task whose length is derived (SQuAD's epochs) must still be whole host calls."""
    if total_steps % cfg.ipu.device_iterations:
        raise ConfigError(f"{total_steps} training steps are not a multiple of ipu.device_iterations "
                          f"{cfg.ipu.device_iterations}: an IPU host call runs that many steps",
                          key="ipu.device_iterations")
