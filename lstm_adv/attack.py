"""Attack stage: the sparse L1 attack with a tune-attack run's best settings on one split.

``run_attack`` writes an attack run (kind ``attack``, parents: the tune-attack run, plus the
interrupted run it resumes): ``results.npz`` (:class:`AttackBatchResult`, rows in ascending sample
index), ``params.json`` (the attack settings) and a summary with success counts and mean L0/L1 of
the first and best examples per direction.

Design:

- **Batches.** The split's samples, in ascending row order, are cut into batches of the tuned batch
  size; batch ``b`` holds positions ``b·B … b·B + B − 1``. The batch is the unit of progress,
  checkpointing and sharding, and a sample is always attacked together with the same batch-mates,
  so every way of running the attack (whole, sharded, interrupted and resumed) gives identical rows.
- **Ctrl-C** keeps the finished batches: they are held in memory, and on ``KeyboardInterrupt`` the run
  is published with status ``interrupted`` holding them (nothing finished → nothing written). A hard
  crash loses the batches of that invocation. ``resume=<interrupted run>`` attacks the batches it
  lacks and writes a complete run with the same rows as an uninterrupted one.
- **Shards.** ``Shard(i, n)`` attacks batches ``b`` with ``b mod n == i − 1`` and marks its run with
  ``shard = "i/n"``. ``merge_attack_shards`` writes one run from the complete shards 1…n of the same
  tune-attack run, split and attack settings (parents: the tune-attack run and the shard runs); its
  rows equal the unsharded attack's. The CLI merges automatically once the last shard finishes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from lstm_adv.attacks import L1Attack, L1Settings, cell_mask
from lstm_adv.config import AttackConfig, Config
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import RunId
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.train import jsonable, load_features, load_model, load_trained_model, write_json
from lstm_adv.training_loop import resolve_device
from lstm_adv.tune_model import TRIALS_DIR, trial_params

log = logging.getLogger(__name__)

RESULTS_FILE = "results.npz"
PARAMS_FILE = "params.json"
BEST_PARAMS_FILE = "best_params.json"
SPLIT_CHOICES = ("test", "validation", "train", "all")
DIRECTIONS = {"0to1": 0, "1to0": 1}
Progress = Callable[[int], None]


# --- what is attacked: the model, the split, the shard, the mask ------------------------------------


@attrs.frozen
class AttackTarget:
    """The model under attack: a model run, or trial ``trial`` of a tune-model run, and its features run."""

    model_run: Run
    trial: int | None
    features_run: Run

    def load_model(self, device: torch.device) -> nn.Module:
        """The trained BiLSTM, in eval mode on ``device``."""
        if self.trial is None:
            return load_trained_model(self.model_run, device=device)
        return load_model(self.model_run.path / TRIALS_DIR / str(self.trial), device=device)

    def describe(self) -> dict[str, Any]:
        """Lineage keys for run summaries."""
        return {"model_run": str(self.model_run.id), "model_trial": self.trial,
                "features_run": str(self.features_run.id)}  # fmt: skip


def resolve_target(store: RunStore, run: Run, trial: int | None = None) -> AttackTarget:
    """A model run (``trial`` must be ``None``) or a tune-model run's trial (default: its best) as a target."""
    if run.kind == "model":
        if trial is not None:
            raise ConfigError(f"--trial selects a trial of a tune-model run; run {run.id} is a model run")
        if run.manifest.summary.get("cv"):
            raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")
        return AttackTarget(run, None, store.get(str(run.manifest.parents[0]), kind="features"))
    if run.kind == "tune-model":
        number, _params = trial_params(run, trial)
        return AttackTarget(run, number, store.get(str(run.manifest.summary["features_run"]), kind="features"))
    raise RunKindError(
        f"run {run.id} is a {run.kind} run; --model needs a model run (or a tune-model run with --trial)"
    )


def target_of(store: RunStore, tuned: Run) -> AttackTarget:
    """The target a tune-attack run was tuned against."""
    summary = tuned.manifest.summary
    trial = summary.get("model_trial")
    return AttackTarget(store.get(str(summary["model_run"])), None if trial is None else int(trial),
                        store.get(str(summary["features_run"]), kind="features"))  # fmt: skip


def split_indices(features: FeatureMatrix, split: str, *, origin: str) -> np.ndarray:
    """Row indices of ``split`` (``val`` = ``validation``; ``all`` = every row), ascending; empty is a DataError."""
    name = "validation" if split == "val" else split
    if name not in SPLIT_CHOICES:
        raise ConfigError(f"--split must be one of test, val, train, all; got {split!r}")
    rows = np.arange(features.n_samples, dtype=np.int64) if name == "all" else features.indices(name)
    if rows.size == 0:
        raise DataError(f"{origin}: the {name} split is empty; there is nothing to attack; choose another --split")
    return rows


def attack_mask(config: AttackConfig) -> np.ndarray | None:
    """The (48, 19) cell mask of ``[attack] features`` and ``hours`` (``None`` = every cell). Shape: (48, 19)."""
    spec = load_feature_spec()
    names = [f.name for f in spec.features]
    sources = {f.source for f in spec.features}
    unknown = [n for n in config.features if n not in names and n not in sources]
    if unknown:
        raise ConfigError(f"attack.features: unknown feature or source {unknown!r}; use names from features.toml "
                          f"or one of {', '.join(sorted(sources))}")  # fmt: skip
    first, last = config.hours
    if not 0 <= first <= last <= 48:
        raise ConfigError(f"attack.hours must be [first, last) with 0 <= first <= last <= 48; got [{first}, {last}]")
    if not config.features and (first, last) == (0, 48):
        return None
    chosen = [i for i, f in enumerate(spec.features) if f.name in config.features or f.source in config.features]
    mask = cell_mask(features=chosen if config.features else None, hours=range(first, last))
    if not mask.any():
        raise ConfigError(f"attack.hours [{first}, {last}) excludes every cell (48 × 19); allow at least one hour")
    return mask


@attrs.frozen
class Shard:
    """Shard ``index`` of ``count`` (1-based): the batches b with b mod count == index − 1."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """``"i/n"`` with 1 ≤ i ≤ n."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if match is None:
            raise ConfigError(f"--shard must look like i/n with whole numbers, e.g. 1/4; got {spec!r}")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise ConfigError(f"--shard i/n needs 1 <= i <= n; got {spec!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def batches_of(rows: np.ndarray, batch_size: int, shard: Shard | None) -> list[np.ndarray]:
    """The batches of ``rows`` this shard attacks (all of them without a shard)."""
    batches = [rows[start : start + batch_size] for start in range(0, rows.size, batch_size)]
    if shard is None:
        return batches
    return batches[shard.index - 1 :: shard.count]


# --- settings from the tune-attack run -------------------------------------------------------------


def tuned_settings(tuned: Run, config: AttackConfig) -> tuple[L1Settings, int]:
    """The best κ, λ, step size and method of a tune-attack run with ``max_iterations``, and its batch size."""
    if tuned.kind != "tune-attack":
        raise RunKindError(f"run {tuned.id} is a {tuned.kind} run; --tuned needs a tune-attack run")
    path = tuned.path / BEST_PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"tune-attack run {tuned.id} has no completed trial; continue it with "
                          f"`lstm-adv tune-attack --resume {tuned.id}`")  # fmt: skip
    best = json.loads(path.read_text(encoding="utf-8"))
    settings = L1Settings(kappa=float(best["kappa"]), lam=float(best["lam"]), step_size=float(best["step_size"]),
                          method=str(best["method"]), max_iterations=config.max_iterations)  # fmt: skip
    return settings, int(best["batch_size"])


# --- the attack run ---------------------------------------------------------------------------------


@attrs.frozen
class _Plan:
    """Everything checked before a run is written."""

    tuned: Run
    target: AttackTarget
    config: Config
    settings: L1Settings
    batch_size: int
    split: str
    shard: Shard | None
    todo: list[np.ndarray] = attrs.field(eq=False)
    n_batches: int
    previous: AttackBatchResult | None = attrs.field(eq=False)
    parents: tuple[RunId, ...]


def run_attack(
    store: RunStore,
    tuned: Run | None,
    config: Config,
    *,
    split: str | None = None,
    shard: Shard | None = None,
    resume: Run | None = None,
    progress: Progress | None = None,
) -> Run:
    """Attack ``split`` (default: test) with the best settings of tune-attack run ``tuned`` and write an attack run.

    ``resume``: an interrupted attack run to complete (its tune-attack run, split and shard are used).
    ``progress(n)`` is called after each finished batch of n samples. Returns the run, with status
    ``interrupted`` after Ctrl-C (finished batches kept). Bad input writes no run.
    """
    plan = _plan(store, tuned, config, split=split, shard=shard, resume=resume)
    device = resolve_device(plan.config.attack.device)
    features = load_features(plan.target.features_run)
    cfg = plan.config.attack
    attack = L1Attack(plan.target.load_model(device), plan.settings, device=device, mask=attack_mask(cfg),
                      batch_size=plan.batch_size, include_misclassified=cfg.include_misclassified)  # fmt: skip
    with store.create("attack", parents=plan.parents, config=config_as_dict(plan.config)) as writer:
        write_json(writer.file(PARAMS_FILE), _params(plan))
        parts, status = _attack_batches(attack, features, plan, progress)
        result = sort_rows(AttackBatchResult.concatenate(parts))
        result.to_npz(writer.file(RESULTS_FILE))
        writer.summary.update(_run_summary(plan, result, done=len(parts) - (plan.previous is not None), device=device))
        writer.commit(status=status)
    assert writer.committed is not None
    log.info("attack run %s (%s): success rate %.3f", writer.committed.id, status, result.success_rate)
    return writer.committed


def _plan(
    store: RunStore, tuned: Run | None, config: Config, *, split: str | None, shard: Shard | None, resume: Run | None
) -> _Plan:
    previous = None
    parents: tuple[RunId, ...] = ()
    if resume is not None:
        tuned, config, split, shard = _resume_inputs(store, resume, tuned, config, split, shard)
        previous = AttackBatchResult.from_npz(resume.file(RESULTS_FILE))
        parents = (resume.id,)
    if tuned is None:
        raise ConfigError("no tune-attack run given; pass --tuned <id>")
    settings, batch_size = tuned_settings(tuned, config.attack)
    target = target_of(store, tuned)
    attack_mask(config.attack)  # a bad mask fails before anything is loaded or written
    resolve_device(config.attack.device)
    split = split or "test"
    rows = split_indices(load_features(target.features_run), split, origin=f"features run {target.features_run.id}")
    batches = batches_of(rows, batch_size, shard)
    if not batches:
        n_all = len(batches_of(rows, batch_size, None))
        raise DataError(f"shard {shard} of the {split} split holds no batch ({rows.size} samples in {n_all} batches "
                        f"of {batch_size}); use at most {n_all} shards")  # fmt: skip
    done = set() if previous is None else set(previous.sample_index.tolist())
    todo = [b for b in batches if int(b[0]) not in done]
    name = "validation" if split == "val" else split
    return _Plan(tuned, target, config, settings, batch_size, name, shard, todo, len(batches), previous,
                 (tuned.id, *parents))  # fmt: skip


def _resume_inputs(
    store: RunStore, resume: Run, tuned: Run | None, config: Config, split: str | None, shard: Shard | None
) -> tuple[Run, Config, str, Shard | None]:
    """The interrupted run's tune-attack run, attack settings (device: the current one), split and shard."""
    if resume.kind != "attack" or resume.manifest.status != "interrupted":
        raise ConfigError(f"--resume needs an interrupted attack run; run {resume.id} is a {resume.manifest.status} "
                          f"{resume.kind} run")  # fmt: skip
    summary = resume.manifest.summary
    old_tuned = store.get(str(summary["tune_attack_run"]), kind="tune-attack")
    old_shard = Shard.parse(summary["shard"]) if summary.get("shard") else None
    given = {"--tuned": (tuned.id if tuned else None, old_tuned.id), "--shard": (shard, old_shard),
             "--split": ("validation" if split == "val" else split, summary["split"])}  # fmt: skip
    for option, (new, old) in given.items():
        if new is not None and new != old:
            raise ConfigError(f"attack run {resume.id} was run with {option} {old}, not {new}; leave out {option} "
                              "when resuming")  # fmt: skip
    old_attack = structure(resume.manifest.config["attack"], AttackConfig)
    config = attrs.evolve(config, attack=attrs.evolve(old_attack, device=config.attack.device))
    return old_tuned, config, str(summary["split"]), old_shard


def _attack_batches(
    attack: L1Attack, features: FeatureMatrix, plan: _Plan, progress: Progress | None
) -> tuple[list[AttackBatchResult], str]:
    """Attack the plan's remaining batches; Ctrl-C stops after the finished ones (none finished: re-raised)."""
    parts = [] if plan.previous is None else [plan.previous]
    try:
        for rows in plan.todo:
            parts.append(attack.run(features.values[rows], features.labels[rows], sample_index=rows))
            if progress is not None:
                progress(len(rows))
    except KeyboardInterrupt:
        if not parts:
            raise
        log.warning("attack interrupted: %d finished batches kept; continue with --resume", len(parts))
        return parts, "interrupted"
    return parts, "complete"


def sort_rows(result: AttackBatchResult) -> AttackBatchResult:
    """The rows of ``result`` in ascending sample index."""
    order = np.argsort(result.sample_index, kind="stable")
    arrays = {f.name: getattr(result, f.name)[order] for f in attrs.fields(AttackBatchResult) if f.name != "iterations"}
    return AttackBatchResult(result.iterations, **arrays)


def _params(plan: _Plan) -> dict[str, Any]:
    cfg = plan.config.attack
    return {**attrs.asdict(plan.settings), "batch_size": plan.batch_size, "include_misclassified":
            cfg.include_misclassified, "features": list(cfg.features), "hours": list(cfg.hours)}  # fmt: skip


def _run_summary(plan: _Plan, result: AttackBatchResult, *, done: int, device: torch.device) -> dict[str, Any]:
    extra = {"tune_attack_run": str(plan.tuned.id), **plan.target.describe(), "split": plan.split,
             "shard": None if plan.shard is None else str(plan.shard), "batch_size": plan.batch_size,
             "batches": {"done": plan.n_batches - len(plan.todo) + done, "total": plan.n_batches},
             "device": str(device)}  # fmt: skip
    return extra | attack_summary(result)


def attack_summary(result: AttackBatchResult) -> dict[str, Any]:
    """Counts, success rate, and mean L0 / L1 of the first and best examples per direction (0to1, 1to0)."""
    predicted = result.predicted
    directions = {}
    for name, code in DIRECTIONS.items():
        found = result.found & (predicted == code)
        attacked = int((result.attacked & (predicted == code)).sum())
        entry: dict[str, Any] = {"attacked": attacked, "successful": int(found.sum()),
                                 "success_rate": float(found.sum()) / attacked if attacked else 0.0}  # fmt: skip
        for which in ("first", "best"):
            l0, l1 = result.l0(which)[found], result.l1(which)[found]
            entry[which] = {"mean_l0": float(l0.mean()) if found.any() else None,
                            "mean_l1": float(l1.mean()) if found.any() else None}  # fmt: skip
        directions[name] = entry
    summary: dict[str, Any] = jsonable({
        "n_samples": result.n, "n_attacked": int(result.attacked.sum()), "n_successful": int(result.found.sum()),
        "success_rate": result.success_rate, "iterations": result.iterations, "directions": directions,
    })  # fmt: skip
    return summary


# --- shards -----------------------------------------------------------------------------------------


def find_shards(store: RunStore, tuned: Run, *, split: str, count: int) -> dict[int, Run]:
    """The newest complete shard run of each index 1…count of ``tuned`` on ``split`` (missing indices absent)."""
    found: dict[int, Run] = {}
    for run in store.list("attack"):
        summary = run.manifest.summary
        shard = summary.get("shard")
        if run.manifest.status != "complete" or not shard or summary.get("tune_attack_run") != str(tuned.id):
            continue
        parsed = Shard.parse(shard)
        if summary.get("split") == split and parsed.count == count:
            found[parsed.index] = run  # store.list is oldest first: the newest wins
    return found


def merge_attack_shards(store: RunStore, tuned: Run, *, split: str, count: int) -> Run | None:
    """One attack run from complete shards 1…count (parents: ``tuned`` and the shards); ``None`` if any is missing.

    The merged rows equal an unsharded attack's (same batches, ascending sample index).
    """
    split = "validation" if split == "val" else split
    shards = find_shards(store, tuned, split=split, count=count)
    if len(shards) < count:
        log.info("shards of %s on %s: %d of %d finished; not merging yet", tuned.id, split, len(shards), count)
        return None
    runs = [shards[i] for i in range(1, count + 1)]
    configs = {json.dumps(run.manifest.config.get("attack"), sort_keys=True) for run in runs}
    if len(configs) != 1:
        raise DataError(f"shards {', '.join(str(r.id) for r in runs)} used different [attack] settings; "
                        "re-run the odd ones with the same settings")  # fmt: skip
    result = sort_rows(AttackBatchResult.concatenate([AttackBatchResult.from_npz(r.file(RESULTS_FILE)) for r in runs]))
    first = runs[0].manifest.summary
    with store.create("attack", parents=[tuned.id, *(r.id for r in runs)], config=runs[0].manifest.config) as writer:
        writer.file(PARAMS_FILE).write_bytes(runs[0].file(PARAMS_FILE).read_bytes())
        result.to_npz(writer.file(RESULTS_FILE))
        total = sum(int(r.manifest.summary["batches"]["total"]) for r in runs)
        keep = ("tune_attack_run", "model_run", "model_trial", "features_run", "split", "batch_size", "device")
        writer.summary.update({key: first.get(key) for key in keep} | {"shard": None,
                              "batches": {"done": total, "total": total}, "merged_shards": [str(r.id) for r in runs]}
                              | attack_summary(result))  # fmt: skip
    assert writer.committed is not None
    return writer.committed

