"""``clvr train``: shards in, a trained encoder out, under accelerate.

One process runs it as is; ``accelerate launch`` runs it unchanged on several processes, GPUs
or machines (every process reads its own part of the shards, see :mod:`clvr.pipeline.loader`).

The loop, per step::

    batch = next(loader)                         a ViewBatch on this process's device
    loss, logs = method(batch)                   clvr.methods (gathers across processes itself)
    accelerator.backward(loss)                   DDP averages the gradients
    optimizer.step(); scheduler.step()           lr = base x global batch / 256, warm-up, decay
    method.after_step(step, total)               momentum encoders
    collapse check (every log_every steps)       the encoder's feature spread (.collapse)
    metrics.jsonl, progress bar, checkpoints     on the main process

Checkpoints (:mod:`.checkpoint`) hold everything a resume needs: the method (with its memory bank,
queue and momentum encoder), the optimiser, the scheduler, the gradient scaler, every process's
RNG states, the position in the data (epoch, step) and the configuration. ``--resume auto``
continues from the newest one; the loader is positioned at the same batch (:meth:`ViewLoader.seek`),
so on one process a resumed run ends with the same weights as an uninterrupted one.

SIGTERM (a preempted job), SIGINT (Ctrl-C) or SIGUSR1 (Slurm before a time limit) to any process
stops every process at the end of the same step, with one checkpoint, and exits 0; a second
Ctrl-C aborts at once (exit 130). Workers whose launcher was killed stop the same way within a
second or two (:mod:`.launcher`) instead of training on.

A run directory has one owner: the main process takes ``OUT/.clvr-train.lock`` (an ``flock``,
dropped by the kernel however the process ends) before anything reads or writes there, and a
second ``clvr train`` into it is refused, naming the first's pid and host.

Nothing is left out silently: under ``data.on_error = skip`` every sample a loader skips (the
training loader's and the kNN monitor's) is printed on stderr (the first ``SHOW_SKIPPED``, then a
count at each epoch's end), written to ``metrics.jsonl`` as an event line
``{"step", "event": "skipped", "epoch", "set", "shard", "key", "reason"}`` and counted in the
summary :meth:`Trainer.run` returns (``skipped_samples``, ``repeats_dropped``). The kNN monitor
leaves samples without a label (-1) out of its vote and its score, and says how many.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import time
import warnings
from pathlib import Path

import torch

from . import train_config as cfg
from .checkpoint import (CHECKPOINTS, checkpoint_path, checkpoint_step, latest_checkpoint, list_checkpoints, load_checkpoint,
                         resolve_resume, rng_state, save_checkpoint, seed_everything, set_rng_state)
from .errors import TrainingError
from .launcher import LauncherWatch
from .metrics import MetricsLog
from .resume import DATA, ResumeError, compare, converted_step, data_fingerprint, flatten, refusal
from .run_dir import check_out, write_error
from .patch_grid import PatchGridPool
from .optimizers import build_optimizer, scaled_lr
from .schedules import build_scheduler, epochs_to_steps


#: the lock file that makes a run directory one run's (:meth:`Trainer._own`)
RUN_LOCK = ".clvr-train.lock"
#: how the last run in a directory ended: done, stopped (by a signal), failed or aborted
STATUS = "status.json"
#: the view check's result (see clvr.pipeline.view_check), written before the first step
VIEW_CHECK = "view_check.json"


def _normalization(loader) -> dict:
    r = loader.ctx.recipe(0)
    return {"mean": list(r.normalize.mean), "std": list(r.normalize.std), "size": int(r.size)}


class Trainer:
    """Build everything for a run from its configuration; :meth:`run` trains."""

    #: skipped samples printed one per line; beyond, a count at each epoch's end
    SHOW_SKIPPED = 20

    def __init__(self, config: cfg.TrainConfig, data, out, resume: str | None = None, val=None,
                 settings: str = "as configured", resume_changed=()):
        self._lock = None
        try:
            self._setup(config, data, out, resume, val, settings, tuple(resume_changed or ()))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the run directory (:meth:`run` does at its end, and a failed set-up at once)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __del__(self):
        try:
            self.release()      # a trainer set up but never run, in a long-lived process
        except Exception:
            pass

    def _own(self) -> None:
        """One run per directory: the main process takes the lock of ``OUT`` (made by
        :func:`check_out`), ``OUT/.clvr-train.lock`` with host and pid, before anything reads or
        writes there; a second ``clvr train`` into it is refused, naming the first."""
        from ..shards.errors import ShardError
        from ..shards.lock import OutputLock
        try:
            self._lock = OutputLock(self.out, RUN_LOCK, "clvr train", "--out").acquire()
        except ShardError as e:
            raise cfg.ConfigError(str(e)) from None
        left = self._lock.taken_over
        if left:
            self._say(f"{self.out}: taking over the run directory from pid {left['pid']} on host "
                      f"{left.get('host')}, which no longer holds it")

    def _setup(self, config, data, out, resume, val, settings, resume_changed) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs

        from ..pipeline import ViewLoader
        from ..pipeline.source import resolve as resolve_shards
        from .registry import get_method

        # the method's settings are checked before anything is built or written: a typo in model.*
        # or a temperature of 0 is refused at once, by name
        self.method_cls = get_method(config.method)
        method_config = self.method_cls.make_config(config.model)
        # an unusable --out (empty, a file, read-only) is one line now, not after the pipeline is built
        self.config, self.out = config, check_out(out)
        self.notes: list[str] = []            # said before the run, repeated in the summary
        self.skipped_samples = self.repeats_dropped = 0
        self._skips_read: dict[str, int] = {}  # loader name -> entries of its skipped list reported
        self._skips_shown = self._skips_unshown = 0
        self.knn_left_out: dict[str, dict] = {}
        self._knn_left_out_said = False
        self.settings = settings              # how the settings were chosen, for the plan
        self.data_specs = {"data": str(data), "val": None if val is None else str(val)}
        cls = self.method_cls
        if config.grad_accum > 1 and cls.in_batch_negatives:
            raise cfg.ConfigError(
                f"grad_accum = {config.grad_accum}: method {cls.name!r} takes its negatives from the batch, "
                "so accumulating gradients over small batches would change its objective (fewer negatives), "
                "not just its memory use; use more processes or a smaller model instead")
        # buffers (memory bank, queue) are kept equal by the methods' own gathering: DDP must not
        # broadcast them every step. (torch 2.13 calls the flag deprecated in favour of one that
        # accelerate cannot pass yet; it still does what it says.)
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        self.tensorboard = config.tensorboard and importlib.util.find_spec("tensorboard") is not None
        self.accelerator = Accelerator(mixed_precision=config.precision, cpu=not torch.cuda.is_available(),
                                       gradient_accumulation_steps=config.grad_accum, kwargs_handlers=[ddp],
                                       log_with="tensorboard" if self.tensorboard else None,
                                       project_dir=str(self.out))
        acc = self.accelerator
        if acc.is_main_process:
            self._own()
        # what --resume asks for is read and compared first: settings that change what the
        # checkpoint means are refused by name before the pipeline and the model are built
        self.resumed_from, self.resume_changes, self._resume_state = None, None, None
        # the shard set, read once: the loader reads it, a resume compares its fingerprint, the
        # kNN monitor its classes
        self.shard_set = resolve_shards(data)
        self.data_identity = data_fingerprint(self.shard_set)
        path = resolve_resume(self.out, resume)
        if path is not None:
            self._resume_state = self._compare_resume(path, resume_changed)
        torch.manual_seed(config.seed)
        d = config.data
        view_options = {**cls.view_options, **d.view_options}
        # a queue shorter than a batch and the like: refused before the data pipeline is built
        cls.check_training(method_config, d.batch_size, acc.num_processes, view_options)
        # how evaluation reads the encoder (CPC: on its patch grid), for the kNN monitor and the
        # checkpoint's encoder entry (see evaluated_encoder)
        self.evaluation_grid = cls.evaluation_grid(view_options)
        self._say(f"building the DALI pipeline for {data} ({d.device} device; the first build takes a few seconds)")
        recipe = d.recipe or cls.recipe
        if recipe == cfg.RECOMMENDED:
            recipe = self._recommended_recipe(data)
        if d.size:
            from ..pipeline import recipe as recipe_mod
            recipe = recipe_mod.build(recipe, size=d.size)
        self.views_spec = (d.views or cls.views, recipe, view_options)      # what the view check reads
        self.loader = ViewLoader(self.shard_set, d.views or cls.views, recipe=recipe,
                                 batch_size=d.batch_size, device=d.device, rank=acc.process_index,
                                 world_size=acc.num_processes, local_rank=acc.local_process_index,
                                 seed=config.seed, last_batch="drop", num_threads=d.threads or None,
                                 shuffle_buffer=d.shuffle_buffer, on_error=d.on_error, photometric=d.photometric,
                                 view_options=view_options, torch_device=acc.device)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch < 1:
            raise TrainingError(f"{data}: {self.loader.num_samples} samples give no full batch of "
                                f"{d.batch_size} per process on {acc.num_processes} process(es)")
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.knn_loaders = None
        if val is not None:
            self.knn_loaders = self._knn_loaders(data, val)
        self.method = cls(method_config, num_samples=self.loader.num_samples)
        if config.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        from .collapse import CollapseMonitor
        self.collapse = CollapseMonitor(self.method.encoder, config.collapse_threshold,
                                        head=self.method.projection_head, rank_fraction=config.collapse_rank)
        if config.compile:
            self._say("torch.compile: the backbone is compiled during the first step (a minute or more)")
            self.method.encoder.compile()
        self.global_batch = d.batch_size * acc.num_processes
        o = config.optim
        self.peak_lr = scaled_lr(o.lr, self.global_batch, o.lr_scaling)
        optimizer = build_optimizer(o.name, self.method, self.peak_lr, o.weight_decay, momentum=o.momentum,
                                    nesterov=o.nesterov, betas=o.betas, eta=o.eta,
                                    lr_scales=self.method.lr_scales())
        s = config.schedule
        k = config.grad_accum              # the schedule counts optimiser steps
        updates = max(self.total_steps // k, 1)
        milestones = tuple(m // k for m in epochs_to_steps(list(s.milestones), self.steps_per_epoch)
                           if 0 < m // k < updates)
        kind = "constant" if s.kind == "step" and not milestones else s.kind     # all beyond a short run
        self.scheduler = build_scheduler(
            optimizer, updates, min(epochs_to_steps(s.warmup_epochs, self.steps_per_epoch) // k, updates), kind,
            **({"milestones": milestones, "gamma": s.gamma} if kind == "step" else {}),
            **({"final": s.final} if kind == "cosine" else {}))
        self.model, self.optimizer = acc.prepare(self.method.to(acc.device), optimizer)
        self.step, self.skipped_steps = 0, 0
        if path is not None:
            self._restore(path, self._resume_state)
            self._resume_state = None           # the tensors are in the model now
        self._stop = False
        self._signalled: str | None = None      # the first stop signal this process received
        self._interrupts = 0

    def evaluated_encoder(self) -> torch.nn.Module:
        """What evaluation reads: the method's encoder, or (CPC) the features of its patch grid
        (:class:`~clvr.methods.patch_grid.PatchGridPool`, no weights of its own)."""
        encoder = self.method.encoder
        return PatchGridPool(encoder, **self.evaluation_grid) if self.evaluation_grid else encoder

    def _recommended_recipe(self, data) -> dict:
        """The recipe the shard set's manifest recommends (``data.recipe = recommended``)."""
        from ..shards.errors import ShardError
        from ..shards.recommended import recommended
        try:
            found = recommended(self.shard_set.manifest, f"the manifest of {data}")
        except ShardError as e:
            raise TrainingError(str(e)) from None
        if found is None:
            raise TrainingError(f"config data.recipe = {cfg.RECOMMENDED}, but {data} has no recommended recipe in "
                                "its manifest (clvr shard ... --recipe FILE records one); give data.recipe a "
                                "preset name or a YAML file")
        return dict(found["recipe"])

    def _say(self, text: str) -> None:
        """A line on stderr from the main process: what long first-use work is doing."""
        self._write(None, f"clvr train: {text}")

    def view_check(self):
        """The :mod:`~clvr.pipeline.view_check` of this run's views: one batch of up to 256 images
        from a loader of its own (on the CPU, its own seed, so the run's data order and random
        state are untouched); a line saying why not when it cannot run."""
        from ..pipeline import ViewLoader
        from ..pipeline.view_check import PAIRS, check_views, image_pair
        generator, recipe, view_options = self.views_spec
        if self.shard_set.remote:
            return "not run on remote shards (it would read them twice)"
        pairs = min(PAIRS, self.loader.num_samples)
        if pairs < 2:
            return f"not run: {self.loader.num_samples} sample(s)"
        with torch.random.fork_rng(devices=[]):
            loader = ViewLoader(self.shard_set, generator, recipe=recipe, batch_size=pairs, device="cpu",
                                rank=0, world_size=1, seed=self.config.seed + 7919, last_batch="drop",
                                on_error=self.config.data.on_error, photometric=self.config.data.photometric,
                                view_options=view_options)
            try:
                batch = next(iter(loader))
            finally:
                loader.close()
        pair = image_pair(batch)
        if pair is None:
            return f"not applicable: the {generator} views are not two images of one size"
        name = self.config.data.recipe or self.method_cls.recipe
        return check_views(*pair, recipe=f"data.recipe {name}")

    def plan(self, view_check=None):
        """The run's :class:`~clvr.methods.plan.Plan` (printed before the first step)."""
        from .plan import Plan
        c, d, acc, m = self.config, self.config.data, self.accelerator, self.method
        encoder = m.encoder
        params = sum(p.numel() for p in encoder.parameters()) / 1e6
        options = ", ".join(f"{k} {v}" for k, v in m.backbone_options().items() if v not in (None, "", {}))
        recipe = self.loader.ctx.recipe(0)
        view_names = ", ".join(self.loader.view_names)
        threads = torch.get_num_threads()
        return Plan(method=self.method_cls.name, views=f"{self.loader.generator.name} views: {view_names}",
                    backbone=f"{m.config.backbone}" + (f", {options}" if options else "")
                             + f": {params:.2f} M parameters, {int(encoder.num_features)} features",
                    images=f"{int(recipe.size)} px views (recipe {d.recipe or self.method_cls.recipe}"
                           + (f", data.size {d.size}" if d.size else "") + ")",
                    settings=self.settings, samples=self.loader.num_samples,
                    shards=len(self.loader.shards.shards), steps_per_epoch=self.steps_per_epoch,
                    epochs=c.epochs, total_steps=self.total_steps, batch=d.batch_size,
                    processes=acc.num_processes,
                    device=f"{acc.device}, {threads} torch thread(s); DALI on {self.loader.device}, "
                           f"{self.loader.num_threads} thread(s); precision {c.precision}",
                    view_check="" if view_check is None else
                               view_check if isinstance(view_check, str) else view_check.text(),
                    monitor=self._monitor_line())

    def _monitor_line(self) -> str:
        c = self.config
        if self.knn_loaders is not None:
            return (f"kNN (k={c.knn_k}) of {self.data_specs['val']} against the training set every "
                    f"{c.knn_every} epoch(s) and at the end; the features' spread and effective rank every "
                    f"{c.log_every} steps")
        return (f"none: without --val nothing will show whether this run learns (its loss falls either way); "
                f"add --val VAL_SHARDS for a kNN monitor every knn_every ({c.knn_every}) epochs, or run "
                f"clvr eval knn on the run afterwards. The features' spread and effective rank are watched "
                f"every {c.log_every} steps")

    def _slow_hints(self) -> list[str]:
        hints = []
        if "paper" in self.settings and "small" in self.settings:
            hints.append("The images are small: --set preset=small trains the small-image settings.")
        hints.append("A smaller backbone (--set model.backbone=resnet18), smaller views (--set data.size=...), "
                     "fewer epochs or a GPU make it shorter.")
        return hints

    def _first_estimate(self, batch, bar) -> None:
        """From the first batch, before its step: FLOPs x 3 over the device's measured speed."""
        from .plan import encoder_flops, estimate_text, predicted_step_seconds
        try:
            flops = encoder_flops(self.method.encoder, batch.views, self.method.input_kind)
        except Exception as e:  # an estimate must never stop a run
            self._say(f"no time estimate before the first step ({type(e).__name__}: {e})")
            return
        if not flops:
            return
        seconds = predicted_step_seconds(flops, torch.device(self.accelerator.device))
        left = self.total_steps - self.step
        self._write(bar, estimate_text(seconds, self.steps_per_epoch, left,
                                       f"{flops * 3 / 1e9:,.1f} GFLOP per step at this machine's measured speed; "
                                       f"refined after {self.timer.warmup + self.timer.steps} steps"))
        self._warn_if_slow(seconds, bar)

    def _measured_estimate(self, seconds: float, bar) -> None:
        """The estimate from the measured steps; the slow-run warning if the first did not give it."""
        from .plan import estimate_text
        self._write(bar, estimate_text(seconds, self.steps_per_epoch, self.total_steps - self.step,
                                       f"measured on steps {self.timer.warmup + 1} to "
                                       f"{self.timer.warmup + self.timer.steps}"))
        self._warn_if_slow(seconds, bar)

    def _warn_if_slow(self, seconds_per_step: float, bar) -> None:
        """Warn (once) when an epoch would take longer than slow_epoch_hours."""
        from .plan import slow_warning
        if self.warned_slow:
            return
        warning = slow_warning(seconds_per_step, self.steps_per_epoch, self.config.slow_epoch_hours,
                               self._slow_hints())
        if warning:
            self._write(bar, warning)
            self.warned_slow = True

    def _write(self, bar, text: str) -> None:
        if bar is not None:
            bar.write(text)
        elif self.accelerator.is_main_process:
            import sys
            print(text, file=sys.stderr, flush=True)

    # -- the kNN monitor ----------------------------------------------------------------------

    def _knn_loaders(self, data, val):
        """Deterministic loaders of the training and the validation shards (resize whole,
        normalise, no augmentation): the training features vote, the validation ones are
        classified."""
        from .features import eval_loader
        if not self.loader.shards.classes:
            raise cfg.ConfigError(f"--val needs labelled training shards, and {data} has no classes: the "
                                  "kNN monitor classifies by the labels of the training features")
        from ..pipeline.source import resolve
        val_set = resolve(val)
        if not val_set.classes:
            raise cfg.ConfigError(f"--val {val}: the shard set has no labels (no classes in its manifest); the "
                                  "kNN monitor needs labelled validation shards (for clvr shard index: a .cls "
                                  "in every sample)")
        from .evaluate import compare_classes
        found = compare_classes(self.shard_set, val_set, sides=(("train", "--data"), ("val", "--val")),
                                specs=(data, val))
        if found["error"]:
            raise cfg.ConfigError(f"the kNN monitor: {found['error']}")
        if found["note"]:
            note = f"the kNN monitor: {found['note']}"
            self.notes.append(note)
            self._say(f"note: {note}")
        acc, d = self.accelerator, self.config.data
        recipe = self.loader.ctx.recipe(0)
        common = dict(batch_size=d.batch_size, size=int(recipe.size), device=d.device, rank=acc.process_index,
                      world_size=acc.num_processes, local_rank=acc.local_process_index,
                      num_threads=d.threads or None, torch_device=acc.device, on_error=d.on_error)
        views = d.views or self.method_cls.views
        if views not in ("two_view", "video_clips"):
            views = "two_view"          # jigsaw, cpc_grid, objects, captions: the whole image
        return eval_loader(data, views=views, **common), eval_loader(val, views=views, **common)

    def knn(self) -> dict:
        """kNN top-1 / top-5 of the validation features against the training ones (InstDisc's
        weighted vote), with the encoder as it is now."""
        from .features import extract_features
        from .knn import knn_accuracy
        c = self.config
        train, val = self.knn_loaders
        encoder = self.evaluated_encoder()
        features, labels, _ = extract_features(encoder, train)
        vfeatures, vlabels, _ = extract_features(encoder, val)
        # samples without a label (-1) neither vote nor are scored; how many is said once (_log_knn)
        keep, vkeep = labels >= 0, vlabels >= 0
        for name, mask, spec in (("train", keep, self.data_specs["data"]), ("val", vkeep, self.data_specs["val"])):
            if not bool(mask.any()):
                raise TrainingError(f"the kNN monitor: none of the {mask.numel()} samples of {spec} has a label")
            self.knn_left_out[name] = {"unlabelled": int((~mask).sum()), "samples": int(mask.numel())}
        features, labels, vfeatures, vlabels = features[keep], labels[keep], vfeatures[vkeep], vlabels[vkeep]
        result = knn_accuracy(features, labels, vfeatures, vlabels, k=min(c.knn_k, len(labels)),
                              temperature=c.knn_temperature)
        return {f"knn_{k}": v for k, v in result.items()}

    # -- state --------------------------------------------------------------------------------

    def _state(self) -> dict:
        acc = self.accelerator
        rng = rng_state()
        if acc.num_processes > 1:
            import torch.distributed as dist
            every = [None] * acc.num_processes
            dist.all_gather_object(every, rng)
            rng = every
        else:
            rng = [rng]
        encoder = self.method.encoder
        prefix = next(name for name, module in self.method.named_modules() if module is encoder) + "."
        evaluated = self.evaluated_encoder()
        kind = self.method.input_kind
        return {"step": self.step, "epoch": self.step // self.steps_per_epoch,
                "position": self.step % self.steps_per_epoch, "method": self.method_cls.name,
                "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "rng": rng, "config": cfg.to_dict(self.config), "skipped_steps": self.skipped_steps,
                "world_size": acc.num_processes, DATA: self.data_identity,
                "steps_per_epoch": self.steps_per_epoch, "global_batch": self.global_batch,
                "encoder": {"prefix": prefix,
                            "architecture": {"kind": kind, "name": self.method.config.backbone,
                                             "options": self.method.backbone_options(),
                                             "num_features": int(evaluated.num_features),
                                             **({"patch_grid": self.evaluation_grid}
                                                if self.evaluation_grid else {})},
                            "input": {**_normalization(self.loader),
                                      "layout": "B,T,3,H,W" if kind == "video" else "B,3,H,W"}}}

    def _compare_resume(self, path: Path, accept) -> dict:
        """Load the checkpoint ``--resume`` names and compare its settings with this run's
        (:mod:`.resume`): a guarded difference not in ``accept`` is refused by name."""
        state = load_checkpoint(path)
        if state.get("method") != self.method_cls.name:
            raise ResumeError(f"--resume {path}: a checkpoint of method {state.get('method')!r}, not "
                              f"{self.method_cls.name!r}; resume it with --method {state.get('method')}, "
                              "or start a new run in another --out")
        changes = compare(state, cfg.to_dict(self.config), self.accelerator.num_processes,
                          self.data_identity, accept)
        if changes.refused:
            raise ResumeError(refusal(path, changes))
        if changes.moves_position and not state.get("steps_per_epoch"):
            raise ResumeError(f"--resume {path}: the checkpoint does not record its epoch length (written by "
                              "an earlier clvr), so its position cannot be carried over to another batch size, "
                              f"number of processes or data set ({', '.join(changes.accepted)})")
        for note in changes.notes:
            self.notes.append(note)
            self._say(f"note: {note}")
        for key, (old, new) in {**changes.accepted, **changes.free}.items():
            self._say(f"resuming with {key} changed: {old!r} -> {new!r}"
                      + (" (accepted by --resume-changed)" if key in changes.accepted else ""))
        self.resume_changes = changes
        return state

    def _restore(self, path: Path, state: dict) -> None:
        acc = self.accelerator
        try:
            self.method.load_state_dict(state["model"])
        except RuntimeError as e:
            shapes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
            raise ResumeError(f"--resume {path}: the checkpoint's state does not fit this run: "
                              + ("; ".join(shapes) or str(e).splitlines()[0]).rstrip(".")
                              + ". A memory bank or queue is as large as its data set and settings: resume with "
                                "the checkpoint's, or start a new run (clvr export takes its encoder)") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])
        saved_step = int(state["step"])
        self.step, self.skipped_steps = saved_step, int(state.get("skipped_steps", 0))
        rngs = state["rng"]
        if acc.process_index < len(rngs) and len(rngs) == acc.num_processes:
            set_rng_state(rngs[acc.process_index])
        else:                           # another number of processes (accepted): a stream per process
            seed_everything(self.config.seed * 1_000_003 + saved_step, acc.process_index)
        changes = self.resume_changes
        if changes is not None and changes.moves_position:
            self.step = converted_step(saved_step, int(state["steps_per_epoch"]), int(state["global_batch"]),
                                       self.steps_per_epoch, self.global_batch)
            self._say(f"the saved step {saved_step} (epoch {saved_step // state['steps_per_epoch']}, "
                      f"{state['steps_per_epoch']} steps of {state['global_batch']} images) continues as step "
                      f"{self.step} ({self.steps_per_epoch} steps of {self.global_batch} images)")
        if changes is not None and (changes.moves_position or set(changes.free) & {"epochs", "max_steps"}):
            self._reschedule()
        newer = [p for p in list_checkpoints(self.out) if checkpoint_step(p) > self.step]
        if newer and self.step == saved_step:
            # they would be mixed with this run's new ones, and --resume auto would take them
            raise TrainingError(f"{path} is step {self.step}, but {self.out} holds later checkpoints "
                                f"({', '.join(p.name for p in newer)}); move them away to go back to this one")
        old = list_checkpoints(self.out) if self.step != saved_step else []
        if old and acc.is_main_process:    # steps numbered anew: the old numbering moves aside
            aside = self.out / f"{CHECKPOINTS}.before-step-{saved_step}"
            aside.mkdir(exist_ok=True)
            for p in old:
                p.rename(aside / p.name)
            self._say(f"the checkpoints counted in batches of {state['global_batch']} "
                      f"({', '.join(p.name for p in old)}) moved to {aside}: --resume auto takes this run's")
        if self.step < self.total_steps:
            self.loader.seek(self.step // self.steps_per_epoch, self.step % self.steps_per_epoch)
        self.resumed_from = path

    def _reschedule(self) -> None:
        """The learning rate of the resumed step under this run's schedule (its length or its
        step numbering changed): the scheduler's count and every group's lr."""
        sched, k = self.scheduler, self.config.grad_accum
        sched.last_epoch = self.step // k
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._say(f"the lr schedule now spans {self.total_steps} steps: lr {self.optimizer.param_groups[0]['lr']:.4g} "
                  f"at step {self.step}")

    def checkpoint(self) -> Path | None:
        state = self._state()           # every process takes part (RNG states are gathered)
        path = None
        if self.accelerator.is_main_process:
            try:
                path = save_checkpoint(self.out, self.step, state, keep=self.config.keep)
            except OSError as e:        # save_checkpoint raises the system's error, not torch's wrapper
                raise write_error(checkpoint_path(self.out, self.step), e, self.out) from None
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    # -- the loop -----------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        """SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 (Slurm, before a time limit): stop at the end of the
        step, agreed by every process (:meth:`_agree_stop`); a second Ctrl-C aborts at once."""
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
        if self._signalled is None:
            self._signalled = signal.Signals(signum).name

    def _on_launcher_gone(self, pid: int) -> None:
        """The launcher died (:mod:`.launcher`): stop like a signal, at the next step boundary."""
        if self._signalled is None:
            self._signalled = f"the exit of the launcher (pid {pid})"

    def _agree_stop(self) -> None:
        """After each step: every process stops when any has been signalled (each node of a
        pre-empted job may be signalled at a different moment), so all checkpoint one step."""
        flag = self._signalled is not None
        if self.accelerator.num_processes > 1:
            from .distributed import max_across_processes
            flag = bool(max_across_processes([int(flag)], self.accelerator.device)[0])
        if flag and not self._stop:
            self._stop = True
            if self.accelerator.is_main_process:
                how = self._signalled or "a stop asked on another process"
                self._write(None, f"clvr train: {how} received: stopping after step {self.step} with a "
                                  "checkpoint (every process)")

    def _start_files(self) -> MetricsLog:
        """The main process's files of the run: config.yaml, data.json, and metrics.jsonl (cut
        back to the resumed step, with a ``resumed`` event line saying from where and what changed)."""
        from ..shards.fileio import write_atomic
        import yaml
        files = {"config.yaml": yaml.safe_dump(cfg.to_dict(self.config), sort_keys=False),
                 # the shards the run read: clvr eval previews the run's views on them
                 "data.json": json.dumps(self.data_specs, indent=1) + "\n"}
        for name, text in files.items():
            try:
                write_atomic(self.out / name, text.encode(), f".{os.getpid()}.tmp")
            except OSError as e:
                raise write_error(self.out / name, e, self.out) from None
        metrics = MetricsLog(self.out)
        if self.resumed_from is not None:
            dropped = metrics.cut_back(self.step)
            metrics.open()
            changes = self.resume_changes
            metrics.write({"step": self.step, "event": "resumed", "checkpoint": str(self.resumed_from),
                           "dropped_lines": dropped, **(changes.as_event() if changes else {})})
            if dropped:
                self._say(f"{metrics.path}: {dropped} line(s) logged after step {self.step} dropped "
                          "(this run logs those steps again)")
            return metrics
        return metrics.open()

    def _write_status(self, status: dict) -> None:
        """``OUT/status.json``: how the run ended, for job scripts (a launcher's own exit status
        says how the launcher ended: ``accelerate launch`` exits 143 when it is sent SIGTERM, even
        though every worker stopped with a checkpoint and exited 0)."""
        status = {**status, "step": self.step, "total_steps": self.total_steps,
                  "last_checkpoint": str(latest_checkpoint(self.out) or "") or None}
        self._write_run_file(STATUS, status)

    def _write_run_file(self, name: str, content: dict) -> None:
        """``OUT/name`` as JSON, atomically; a line (not a failure) when it cannot be written."""
        from ..shards.fileio import write_atomic
        try:
            write_atomic(self.out / name, (json.dumps(content, indent=1) + "\n").encode(), f".{os.getpid()}.tmp")
        except OSError as e:
            self._write(None, f"clvr train: could not write {self.out / name} ({e.strerror})")

    def run(self) -> dict:
        acc, c = self.accelerator, self.config
        main = acc.is_main_process
        try:
            metrics = self._start_files() if main else None
        except BaseException:
            self.release()
            raise
        self.last_checkpoint = None
        stop_signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        previous = {s: signal.signal(s, self._on_signal) for s in stop_signals}
        watch = LauncherWatch.start_if_launched(self._on_launcher_gone)
        bar, status = None, {"status": "failed"}
        try:
            if self.tensorboard:
                acc.init_trackers("tensorboard", config={k: v for k, v in flatten(cfg.to_dict(c)).items()
                                                         if isinstance(v, (int, float, str, bool))})
            if main:
                check = self.view_check() if c.view_check and self.resumed_from is None else None
                self._write(None, self.plan(check).text().rstrip("\n"))
                if check is not None and not isinstance(check, str):
                    self._write_run_file(VIEW_CHECK, {**check.to_dict(), "warnings": check.warnings()})
                    for warning in check.warnings():
                        self._write(None, f"clvr train: {warning}")
            if main and c.progress:
                from ..shards.progress import bar as progress_bar      # plain lines when stderr is a log file
                bar = progress_bar(self.total_steps, f"{self.method_cls.name}", "step", initial=self.step)
            result = self._loop(metrics, bar)
            status = {"status": "stopped" if result["stopped_by_signal"] else "done", "by": result["signal"],
                      "checkpoint": None if result["checkpoint"] is None else str(result["checkpoint"])}
        except KeyboardInterrupt:
            status = {"status": "aborted", "by": "a second Ctrl-C"}
            raise
        except Exception as e:
            status = {"status": "failed", "error": str(e) or type(e).__name__}
            raise
        finally:
            if main:
                self._write_status(status)
            if watch is not None:
                watch.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.tensorboard:
                acc.end_training()
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
            self.release()          # last: nothing of this run is written after another may start
        return result

    def _loop(self, metrics, bar) -> dict:
        acc, c = self.accelerator, self.config
        tick, seen = time.perf_counter(), 0
        from .plan import StepTimer
        self.timer, self.warned_slow = StepTimer(), False
        while self.step < self.total_steps and not self._stop:
            epoch = self.step // self.steps_per_epoch
            for batch in self.loader:
                if self.step >= self.total_steps or self._stop:
                    break
                if self.timer.seen == 0 and acc.is_main_process:
                    self._first_estimate(batch, bar)
                    if bar is not None:
                        bar.set_postfix_str("first step (builds kernels, fills the data queue)")
                logs = self._train_step(batch)
                self.step += 1
                self._agree_stop()
                measured = self.timer.step()
                if measured is not None and acc.is_main_process:
                    self._measured_estimate(measured, bar)
                seen += len(batch) * acc.num_processes
                log_step = self.step % c.log_every == 0 or self.step == self.total_steps
                if log_step:
                    logs.update(self._check_collapse(metrics, bar))
                write = metrics is not None and log_step
                if bar is not None or write:
                    rate = seen / max(time.perf_counter() - tick, 1e-9)
                    lr = self.optimizer.param_groups[0]["lr"]
                    if bar is not None:
                        bar.update(1)
                        extra = {}
                        if self.collapse.last is not None:
                            extra["spread"] = f"{self.collapse.last:.3f}"
                        if "backbone" in self.collapse.ranks:
                            extra["rank"] = f"{self.collapse.ranks['backbone'][0]:.0f}"
                        if self.collapse.collapsed:
                            extra["COLLAPSE"] = f"since step {self.collapse.since_step}"
                        elif self.collapse.dimensional:
                            extra["DIM_COLLAPSE"] = ",".join(self.collapse.narrow)
                        bar.set_postfix(epoch=epoch, loss=f"{logs['loss']:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}",
                                        **extra)
                    if write:
                        line = {"step": self.step, "epoch": epoch, "lr": lr, "images_per_s": rate, **logs}
                        metrics.write(line)
                        if self.tensorboard:
                            acc.log({k: v for k, v in line.items() if k != "step"}, step=self.step)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step < self.total_steps:
                    self.checkpoint()
                done_epoch = self.step % self.steps_per_epoch == 0
                if (self.knn_loaders and c.knn_every and done_epoch and self.step < self.total_steps
                        and (self.step // self.steps_per_epoch) % c.knn_every == 0):
                    self._log_knn(metrics, bar)
                if acc.num_processes == 1 or done_epoch:      # several: gathered at epoch ends
                    self._report_skips(metrics, bar, epoch_end=done_epoch)
                if self._stop:
                    break       # before the next batch is made: the last checkpoint holds this step's state
        if self.knn_loaders and not self._stop:
            self._log_knn(metrics, bar)
        self._report_skips(metrics, bar, epoch_end=True)
        path = self.checkpoint()
        stopped = self._stop and self.step < self.total_steps
        return {"steps": self.step, "total_steps": self.total_steps, "checkpoint": path,
                "stopped_by_signal": stopped, "signal": (self._signalled or "a stop asked on another process")
                if stopped else None, "skipped_steps": self.skipped_steps,
                "resumed_from": self.resumed_from, "skipped_samples": self.skipped_samples,
                "repeats_dropped": self.repeats_dropped, "notes": list(self.notes)}

    def _skip_sources(self) -> list:
        """(name, loader) of every loader whose skipped samples are reported."""
        out = [("data", self.loader)]
        if self.knn_loaders:
            out += [("data (kNN monitor)", self.knn_loaders[0]), ("val", self.knn_loaders[1])]
        return out

    def _report_skips(self, metrics, bar, epoch_end: bool = False) -> None:
        """Report the samples the loaders skipped since the last call (``on_error = skip``): an
        event line each in metrics.jsonl, a line each on stderr (the first ``SHOW_SKIPPED``; the
        rest counted at the epoch's end), and the run's counts. With several processes every
        process takes part (the lists are gathered), at epoch ends only."""
        acc = self.accelerator
        epoch = max(self.step - 1, 0) // self.steps_per_epoch
        new = []
        for name, loader in self._skip_sources():
            done = self._skips_read.get(name, 0)
            entries = list(loader.skipped[done:])
            self._skips_read[name] = done + len(entries)
            new += [{"set": name, "shard": str(e.get("shard")), "key": e.get("key"), "reason": e.get("reason"),
                     "epoch": e.get("epoch", epoch)} for e in entries]
        repeats = int(self.loader.repeats_dropped)
        if acc.num_processes > 1:
            import torch.distributed as dist
            every = [None] * acc.num_processes
            dist.all_gather_object(every, (new, repeats))
            new = [e for part, _ in every for e in part]
            repeats = sum(r for _, r in every)
        self.repeats_dropped = repeats
        if not acc.is_main_process:
            return
        for e in new:
            self.skipped_samples += 1
            if metrics is not None:
                metrics.write({"step": self.step, "event": "skipped", "epoch": e["epoch"], "set": e["set"],
                               "shard": e["shard"], "key": e["key"], "reason": e["reason"]})
            if self._skips_shown < self.SHOW_SKIPPED:
                self._skips_shown += 1
                where = "" if e["set"] == "data" else f" ({e['set']})"
                self._write(bar, f"clvr train: step {self.step}: skipped a sample{where}: {e['shard']}: "
                                 f"key {e['key']}: {e['reason']}")
            else:
                self._skips_unshown += 1
        if epoch_end and self._skips_unshown:
            self._write(bar, f"clvr train: epoch {epoch}: {self._skips_unshown} more skipped sample(s) not shown "
                             f"({self.skipped_samples} in all so far; each is an event line in metrics.jsonl)")
            self._skips_unshown = 0

    def _check_collapse(self, metrics, bar) -> dict:
        """The collapse monitor's verdict on the steps since the last check (logged with the
        step); a collapse that starts is written as an event line and to the bar or stderr, and
        stops the run when ``on_collapse = stop`` (decided by every process together)."""
        status = self.collapse.check(self.step)
        collapsed = self.collapse.collapsed
        if self.accelerator.num_processes > 1 and self.config.on_collapse == "stop":
            from .distributed import any_across_processes
            collapsed = any_across_processes(collapsed, self.accelerator.device)
        if self.collapse.started and self.accelerator.is_main_process:
            text = self.collapse.message(self.method_cls.name, self.method_cls.collapse_hint)
            if metrics is not None:
                metrics.write({"step": self.step, "event": "collapse", "feature_spread": self.collapse.last,
                               "message": text})
            if bar is not None:
                bar.write(f"step {self.step}: {text}")
            else:
                import sys
                print(f"clvr train: step {self.step}: {text}", file=sys.stderr)
        if self.collapse.dimensional_started and self.accelerator.is_main_process:
            text = self.collapse.dimensional_message(self.method_cls.name, self.method_cls.collapse_hint)
            if metrics is not None:
                metrics.write({"step": self.step, "event": "dimensional_collapse", "parts": self.collapse.narrow,
                               "effective_rank": {p: round(r, 2) for p, (r, _) in self.collapse.ranks.items()},
                               "message": text})
            self._write(bar, f"clvr train: step {self.step}: {text}")
        if collapsed and self.config.on_collapse == "stop":
            raise TrainingError(f"step {self.step}: {self.collapse.message(self.method_cls.name, self.method_cls.collapse_hint)}; stopping "
                                f"(on_collapse = stop). The last checkpoint is "
                                f"{self.last_checkpoint or 'none yet (the run start)'}")
        return status

    def _log_knn(self, metrics, bar) -> None:
        result = self.knn()
        if not self._knn_left_out_said:
            self._knn_left_out_said = True
            for name, n in self.knn_left_out.items():
                if n["unlabelled"] and self.accelerator.is_main_process:
                    spec = self.data_specs["data" if name == "train" else "val"]
                    text = (f"the kNN monitor: {name} ({spec}): {n['unlabelled']} of {n['samples']} samples have "
                            "no label (-1) and are left out")
                    self.notes.append(text)
                    self._write(bar, f"clvr train: note: {text}")
                    if metrics is not None:
                        metrics.write({"step": self.step, "event": "unlabelled", "set": name,
                                       "count": n["unlabelled"], "samples": n["samples"], "message": text})
        line = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **result}
        if metrics is not None:
            metrics.write(line)
            if self.tensorboard:
                self.accelerator.log(result, step=self.step)
        if bar is not None:
            bar.write(f"epoch {line['epoch']:g}: kNN top-1 {result['knn_top1']:.4f}"
                      + (f", top-5 {result['knn_top5']:.4f}" if "knn_top5" in result else ""))

    def _train_step(self, batch) -> dict:
        acc, c = self.accelerator, self.config
        with acc.accumulate(self.model):
            with acc.autocast():
                out = self.model(batch)
            loss = out.loss
            bad = not math.isfinite(float(loss.detach()))
            if acc.num_processes > 1:
                from .distributed import any_across_processes
                bad = any_across_processes(bad, loss.device)
            if bad:
                if c.on_nonfinite == "stop":
                    where = self.last_checkpoint or "none yet (the run's start)"
                    raise TrainingError(
                        f"step {self.step}: the loss is {float(loss.detach())} (not finite); stopping. "
                        f"The last good checkpoint is {where}. Lower optim.lr, check the data, or set "
                        "on_nonfinite=skip to skip such steps")
                self.skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return {"loss": float("nan"), "skipped": 1}
            acc.backward(loss)
            self.optimizer.step()
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        extra = {}
        if acc.sync_gradients:      # an optimiser step happened: momentum encoders follow
            k = c.grad_accum
            extra = self.method.after_step(self.step // k, max(self.total_steps // k, 1)) or {}
        logs = {"loss": float(loss.detach())}
        logs.update({k: float(v) for k, v in out.logs.items()})
        logs.update({k: float(v) for k, v in extra.items()})
        return logs


def train(method: str | None, data, out, config_file=None, sets=None, overrides=None, resume=None,
          resume_changed=()) -> dict:
    """Resolve the configuration and train; returns a summary (steps, last checkpoint...)."""
    config, settings = cfg.build_for_data(method, config_file, sets, data, overrides)
    trainer = Trainer(config, data, out, resume=resume, settings=settings, resume_changed=resume_changed)
    return trainer.run()
