"""Fused multi-seed OCL training: the seeds of one configuration train in one process over shared batches.

The seeds' models are stacked (``torch.func.stack_module_state``) and one ``vmap``-ed ``functional_call``
runs them all on each batch, so the data is read once and small kernels batch together. Each seed keeps
what makes it a separate run: its own initialisation (built after seeding torch with its seed), its own
model-noise generator (``featcache.runtime.noise_generator``, the one ``train_ocl`` uses), its own
gradient-norm clipping and Adam state (Adam is elementwise, so one Adam over the stacked parameters equals
per-seed Adams), and its own run folder, written exactly as ``train_ocl`` writes it. A fused seed therefore
equals its separate ``train_ocl`` run up to floating-point reassociation.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.utils import _pytree as pytree

from featcache.config import flatten_keys, to_dict
from featcache.decoders import DECODER_TARGETS
from featcache.errors import ConfigError, FeatcacheError
from featcache.runtime import noise_generator, resolve_device
from featcache.store import FeatureStore
from featcache.training.checkpoint import check_resume_inputs, load_train_state, load_weights, prepare_run_folder, run_lock
from featcache.training.config import OCLTrainConfig
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import LoopRun, TrainedRuns, TrainResult, restore_random_state, train_runs
from featcache.training.ocl import build_seeded_model, ocl_batches, ocl_loss_terms, ocl_run_info, ocl_validator, open_training_store

#: vmap warns once per op it has to loop over (e.g. CPU flash attention); the result is still exact.
_FALLBACK_WARNING = "There is a performance drop because we have not yet implemented the batching rule"


def check_fusable(configs: list[OCLTrainConfig], run_dirs: list[Path]) -> None:
    """One-line ConfigError unless the configs can train fused: same everything but ``train.seed``, no dropout."""
    if not configs or len(configs) != len(run_dirs):
        raise ConfigError(f"fused seeds need one run folder per config; got {len(configs)} configs and {len(run_dirs)} run folders")
    if configs[0].model.temporal.enabled:
        raise ConfigError(
            "fused seeds train image models only: the temporal model's clip windows and recurrent per-frame step are not "
            "batched over seeds; train the seeds of a temporal config separately"
        )
    if configs[0].distill.enabled:
        raise ConfigError("fused seeds do not run SPOT self-training (distill.enabled): train the seeds separately")
    seeds = [config.train.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"fused seeds must differ; got seeds {seeds}")
    if len({Path(d).resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError(f"fused seeds need distinct run folders; got {[str(d) for d in run_dirs]}")
    first = flatten_keys(to_dict(configs[0]))
    for config in configs[1:]:
        other = flatten_keys(to_dict(config))
        differing = [f"{key} ({first[key]!r} vs {other[key]!r})" for key in first if key != "train.seed" and first[key] != other[key]]
        if differing:
            raise ConfigError(
                f"fused seeds must differ only in train.seed; seed {configs[0].train.seed} and seed {config.train.seed} also differ in: {', '.join(differing)}"
            )
    if len(configs) > 1 and configs[0].train.data_seed is None:
        raise ConfigError(
            "fused seeds share one batch stream, so their configs need a common train.data_seed "
            "(train.data_seed unset means each seed draws its own batches); set it, e.g. train.data_seed=0"
        )
    dropout = dropout_keys(configs[0])
    if dropout:
        raise ConfigError(
            f"fused seeds cannot reproduce dropout noise; set {', '.join(f'{key}=0' for key in dropout)} or train the seeds separately"
        )


def dropout_keys(config: OCLTrainConfig) -> list[str]:
    """The config keys that switch on dropout in the model this config builds (settings of unused decoders ignored)."""
    active = config.model.decoder.name
    unused = tuple(f"model.decoder.{name}." for name in DECODER_TARGETS if name != active)
    if not config.model.temporal.enabled:  # image models build no transit
        unused += ("model.temporal.",)
    return [
        key
        for key, value in flatten_keys(to_dict(config)).items()
        if key.rsplit(".", 1)[-1].endswith("dropout") and value and not key.startswith(unused)
    ]


def _is_elementwise(optimizer_key: str) -> bool:
    """Adam's per-parameter state: moments shaped like the parameter, and a scalar step count (equal across seeds)."""
    return optimizer_key != "step"


def _stack_trees(trees: list[Any]) -> Any:
    """Stack K pytrees of tensors with the same structure leaf by leaf: leaves gain a leading (K,) axis."""
    flat = [pytree.tree_flatten(tree) for tree in trees]
    spec = flat[0][1]
    return pytree.tree_unflatten([torch.stack(leaves) for leaves in zip(*(leaves for leaves, _ in flat))], spec)


class FusedSeeds(TrainedRuns):
    """K runs of one model architecture trained as one: stacked (K, ...) parameters, one vmap-ed forward.

    ``runs[k].model`` is seed k's ordinary module: it supplies the initial weights and receives the trained
    ones (``sync_models``) whenever the loop saves or validates run k.
    """

    def __init__(self, runs: list[LoopRun], learning_rate: float) -> None:
        models = [run.model for run in runs]
        first = models[0]
        buffers = dict(first.named_buffers())
        for run in runs[1:]:
            for name, buffer in run.model.named_buffers():
                if not torch.equal(buffer, buffers[name]):
                    raise FeatcacheError(f"fused seeds must share buffer {name!r}, but the model for {run.run_dir} holds different values")
        params, _ = stack_module_state(models)  # name -> (K, ...) leaf tensors
        self.params: dict[str, torch.Tensor] = params
        self.buffers = buffers  # frozen and equal across seeds: passed to every seed unbatched
        self.trainable = [name for name, parameter in first.named_parameters() if parameter.requires_grad]
        # A weightless copy: functional_call swaps the stacked slices in, so no seed's module is touched.
        self.template = copy.deepcopy(first).to("meta")
        self.forward_seeds = vmap(self._seed_loss, in_dims=(0, None, None, None, 0))
        super().__init__(runs, torch.optim.Adam([params[name] for name in self.trainable], lr=learning_rate))

    # ------------------------------------------------------------------ forward
    def _seed_loss(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], features: torch.Tensor, tokens: torch.Tensor | None, noise: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One seed's loss and logged terms: the ordinary model forward with that seed's weights and noise."""
        return ocl_loss_terms(functional_call(self.template, (params, buffers), (features, tokens, noise)))

    def losses(self, features: torch.Tensor, tokens: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(K,) losses and (K,) terms on one shared batch; each seed's noise comes from its own generator."""
        batch_size, device = features.shape[0], features.device
        noise = _stack_trees([self.template.draw_noise(batch_size, run.noise_generator, device) for run in self.runs])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FALLBACK_WARNING, category=UserWarning)
            return self.forward_seeds(self.params, self.buffers, features, tokens, noise)

    # ------------------------------------------------------------------ TrainedRuns
    def train(self) -> None:
        self.template.train()
        super().train()

    def clip_gradients(self, max_norm: float) -> None:
        """Clip each seed's gradient to global L2 norm ``max_norm`` (``clip_grad_norm_``'s formula, per seed)."""
        grads = [self.params[name].grad for name in self.trainable if self.params[name].grad is not None]
        if not grads:
            return
        norms = torch.stack([grad.flatten(1).norm(dim=1) for grad in grads], dim=1).norm(dim=1)  # (K,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.reshape(-1, *([1] * (grad.ndim - 1))))  # (K,) -> (K, 1, ...)

    @torch.no_grad()
    def sync_models(self) -> None:
        for index, run in enumerate(self.runs):
            for name, parameter in run.model.named_parameters():
                parameter.copy_(self.params[name][index])

    def optimizer_state(self, index: int) -> dict[str, Any]:
        """Seed ``index``'s slice of the stacked Adam state, in the layout of a separate run's Adam."""
        state = self.optimizer.state_dict()
        sliced = {
            position: {key: value[index].clone() if _is_elementwise(key) else copy.deepcopy(value) for key, value in entries.items()}
            for position, entries in state["state"].items()
        }
        return {"state": sliced, "param_groups": copy.deepcopy(state["param_groups"])}

    # ------------------------------------------------------------------ resume
    def restore(self, batches: CachedBatches) -> int:
        """Load every seed's checkpoint (weights, Adam state, noise generator) and the shared sampler; returns the step."""
        states = [load_train_state(run.run_dir) for run in self.runs]
        steps = sorted({int(state["step"]) for state in states})
        if len(steps) > 1:
            raise FeatcacheError(
                "cannot resume fused seeds from checkpoints at different steps ("
                + ", ".join(f"{run.run_dir}: {int(state['step'])}" for run, state in zip(self.runs, states))
                + "); resume them separately with train-ocl --resume"
            )
        for run, state in zip(self.runs[1:], states[1:]):
            if state["loader"] != states[0]["loader"]:
                raise FeatcacheError(
                    f"cannot resume fused seeds: {run.run_dir} and {self.runs[0].run_dir} are at different places in the batch stream; "
                    "resume them separately with train-ocl --resume"
                )
        for index, (run, state) in enumerate(zip(self.runs, states)):
            load_weights(run.run_dir, run.model)
            restore_random_state(run.run_dir, state, batches if index == 0 else None, run.noise_generator)
        named = [dict(run.model.named_parameters()) for run in self.runs]
        with torch.no_grad():
            for name, stacked in self.params.items():
                stacked.copy_(torch.stack([parameters[name] for parameters in named]))
        self.optimizer.load_state_dict(self._stacked_optimizer_state([state["optimizer"] for state in states]))
        return steps[0]

    def _stacked_optimizer_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Per-seed Adam states (a separate run's layout) -> the state of the one Adam over the stacked parameters."""
        positions = set(states[0]["state"])
        if any(set(state["state"]) != positions for state in states):
            raise FeatcacheError("cannot resume fused seeds: their optimizer states cover different parameters")
        stacked: dict[int, dict[str, Any]] = {}
        for position in positions:
            entries = [state["state"][position] for state in states]
            stacked[position] = {
                key: torch.stack([entry[key] for entry in entries]) if _is_elementwise(key) else value
                for key, value in entries[0].items()
            }
        return {"state": stacked, "param_groups": states[0]["param_groups"]}


def train_ocl_fused_seeds(
    store_path: str | Path,
    configs: list[OCLTrainConfig],
    run_dirs: list[Path],
    device: str = "auto",
    resume: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    validation_store: str | Path | None = None,
) -> list[TrainResult]:
    """Train the seeds of one configuration together; ``run_dirs[k]`` ends up as ``train_ocl(configs[k])`` leaves it.

    ``configs`` must differ only in ``train.seed`` and share a ``train.data_seed`` (the batch stream is shared). Each run.json
    records ``fused_seeds``; every TrainResult reports the fused wall time and the samples/s of one seed.
    """
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            locks.enter_context(run_lock(Path(run_dir)))  # one writer per run folder
        run_dirs = [Path(run_dir) for run_dir in run_dirs]
        check_fusable(configs, run_dirs)
        for config, run_dir in zip(configs, run_dirs):
            prepare_run_folder(run_dir, config, resume)
        shared = configs[0]  # every setting but the seed is the same in all configs
        target_device = resolve_device(device)
        store, feature_kind = open_training_store(store_path, shared)
        validation = FeatureStore(validation_store) if validation_store else store
        seeds = [config.train.seed for config in configs]
        run_info = {**ocl_run_info(store, shared, feature_kind, False, target_device), "fused_seeds": seeds}
        if resume:
            for run_dir in run_dirs:
                check_resume_inputs(run_dir, run_info)
        runs = []
        for config, run_dir in zip(configs, run_dirs):
            model = build_seeded_model(config, store, target_device)
            runs.append(
                LoopRun(
                    run_dir=run_dir,
                    model=model,
                    config=to_dict(config),
                    run_info=run_info,
                    label=f"seed {config.train.seed}",
                    noise_generator=noise_generator(config.train.seed, target_device),
                    validate=ocl_validator(model, validation, config, feature_kind, target_device),
                )
            )
        fused = FusedSeeds(runs, shared.train.learning_rate)
        batches = ocl_batches(store, shared, target_device, feature_kind, online=False)
        try:
            start_step = fused.restore(batches) if resume else 0
            end_step = shared.train.steps if stop_after is None else min(shared.train.steps, start_step + stop_after)

            def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                return fused.losses(batch.features, batch.tokens)

            loops = train_runs(
                trained=fused,
                batches=batches,
                settings=shared.train,
                device=target_device,
                step_loss=step_loss,
                start_step=start_step,
                end_step=end_step,
                description=f"train-ocl seeds {','.join(map(str, seeds))} (fused)",
                validate_every=shared.validate_every,
                show_progress=show_progress,
            )
        finally:
            batches.close()
        return [TrainResult.from_loop(run.run_dir, loop, shared.train.batch_size) for run, loop in zip(runs, loops)]


__all__ = ["FusedSeeds", "check_fusable", "dropout_keys", "train_ocl_fused_seeds"]
