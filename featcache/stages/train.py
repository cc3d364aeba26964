"""What `train-vq` and `train-ocl` share: a store in, a run folder out, a layered typed config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from featcache.operations import Operation, config_files, overrides_mapping

if TYPE_CHECKING:
    from featcache.training.loop import TrainResult


class TrainingOperation(Operation):
    """Trains a run folder (``out``) from a store with a typed, layered config; ``--resume`` continues it.

    Resumed without config files, the run's saved config is used (with the ``set`` overrides applied).
    """

    def typed_config(self, params: Any) -> Any:
        if params.resume and not config_files(params.config) and (Path(params.out) / "config.yaml").is_file():
            from featcache.config import merge
            from featcache.training.runs import read_run_config

            config = read_run_config(Path(params.out), self.config_class(), [])
            updates = overrides_mapping(params.set)
            return merge(config, updates) if updates else config
        return super().typed_config(params)

    def outputs(self, params: Any) -> dict[str, str]:
        return {"run": params.out}

    def train(self, params: Any, config: Any, resume: bool, show_progress: bool) -> "TrainResult":
        raise NotImplementedError

    def run(self, params: Any, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.training.checkpoint import holds_checkpoint
        from featcache.training.loop import print_result

        # A pipeline resumes an interrupted stage only where a checkpointed run exists; the CLI's --resume is the user's.
        resume = params.resume or (resume and holds_checkpoint(Path(params.out)))
        result = self.train(params, self.typed_config(params), resume, show_progress)
        print_result(result)
        loss = result.last_row.get("loss_total")
        loss_text = f", loss {loss:.4g}" if isinstance(loss, float) else ""
        return f"{result.steps} steps, {result.samples_per_second:.1f} samples/s{loss_text}"
