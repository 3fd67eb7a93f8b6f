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

import attrs
import numpy as np
import torch

from lstm_adv.attacks import L1Attack, L1Settings
from lstm_adv.config import AttackConfig, Config
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix, split_name
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import RunId
from lstm_adv.resources import load_feature_spec
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AttackSummary, Batches, DirectionStats, NormMeans, TuneAttackSummary
from lstm_adv.targets import AttackTarget, attack_mask, target_from
from lstm_adv.training_loop import resolve_device

log = logging.getLogger(__name__)

DIRECTIONS = {"0to1": 0, "1to0": 1}
Progress = Callable[[int], None]


def split_indices(features: FeatureMatrix, split: str, *, origin: str) -> np.ndarray:
    """Row indices of ``split`` (``val`` = ``validation``; ``all`` = every row), ascending; empty is a DataError."""
    rows = features.indices(split)
    if rows.size == 0:
        name = split_name(split)
        raise DataError(f"{origin}: the {name} split is empty; there is nothing to attack; choose another --split")
    return rows


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
    best = artifacts.load_tuned_settings(tuned)
    if best is None:
        raise ConfigError(
            f"tune-attack run {tuned.id} has no completed trial; continue it with "
            f"`lstm-adv tune-attack --resume {tuned.id}`"
        )
    settings = L1Settings(
        kappa=best.kappa,
        lam=best.lam,
        step_size=best.step_size,
        method=best.method,
        max_iterations=config.max_iterations,
    )
    return settings, best.batch_size


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
    features: FeatureMatrix = attrs.field(eq=False)
    mask: np.ndarray | None = attrs.field(eq=False)


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
    cfg = plan.config.attack
    attack = L1Attack(
        plan.target.load_model(device),
        plan.settings,
        device=device,
        mask=plan.mask,
        batch_size=plan.batch_size,
        include_misclassified=cfg.include_misclassified,
    )
    with store.create("attack", parents=plan.parents, config=config_as_dict(plan.config)) as writer:
        artifacts.write_json(writer.file(artifacts.ATTACK_PARAMS_FILE), _params(plan))
        parts, status = _attack_batches(attack, plan.features, plan, progress)
        result = sort_rows(AttackBatchResult.concatenate(parts))
        artifacts.save_attack_result(writer.path, result)
        writer.summary = _run_summary(plan, result, done=len(parts) - (plan.previous is not None), device=device)
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
        previous = artifacts.load_attack_result(resume)
        parents = (resume.id,)
    if tuned is None:
        raise ConfigError("no tune-attack run given; pass --tuned <id>")
    settings, batch_size = tuned_settings(tuned, config.attack)
    summary = tuned.summary_as(TuneAttackSummary)
    target = target_from(store, summary.model_run, summary.model_trial, summary.features_run)
    mask = attack_mask(config.attack, load_feature_spec())  # a bad mask fails before anything is written
    split = split_name(split or "test")
    features = artifacts.load_features(target.features_run)
    rows = split_indices(features, split, origin=f"features run {target.features_run.id}")
    batches = batches_of(rows, batch_size, shard)
    if not batches:
        n_all = len(batches_of(rows, batch_size, None))
        raise DataError(
            f"shard {shard} of the {split} split holds no batch ({rows.size} samples in {n_all} batches "
            f"of {batch_size}); use at most {n_all} shards"
        )
    done = set() if previous is None else set(previous.sample_index.tolist())
    todo = [b for b in batches if int(b[0]) not in done]
    return _Plan(
        tuned,
        target,
        config,
        settings,
        batch_size,
        split,
        shard,
        todo,
        len(batches),
        previous,
        (tuned.id, *parents),
        features,
        mask,
    )


def _resume_inputs(
    store: RunStore, resume: Run, tuned: Run | None, config: Config, split: str | None, shard: Shard | None
) -> tuple[Run, Config, str, Shard | None]:
    """The interrupted run's tune-attack run, attack settings (device: the current one), split and shard."""
    if resume.kind != "attack" or resume.manifest.status != "interrupted":
        raise ConfigError(
            f"--resume needs an interrupted attack run; run {resume.id} is a {resume.manifest.status} {resume.kind} run"
        )
    summary = resume.summary_as(AttackSummary)
    old_tuned = store.get(str(summary.tune_attack_run), kind="tune-attack")
    old_shard = Shard.parse(summary.shard) if summary.shard else None
    given = {
        "--tuned": (tuned.id if tuned else None, old_tuned.id),
        "--shard": (shard, old_shard),
        "--split": (split_name(split) if split else None, summary.split),
    }
    for option, (new, old) in given.items():
        if new is not None and new != old:
            raise ConfigError(
                f"attack run {resume.id} was run with {option} {old}, not {new}; leave out {option} when resuming"
            )
    old_attack = structure(resume.manifest.config["attack"], AttackConfig)
    config = attrs.evolve(config, attack=attrs.evolve(old_attack, device=config.attack.device))
    return old_tuned, config, summary.split, old_shard


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
        log.info("attack interrupted: %d finished batches kept; continue with --resume", len(parts))
        return parts, "interrupted"
    return parts, "complete"


def sort_rows(result: AttackBatchResult) -> AttackBatchResult:
    """The rows of ``result`` in ascending sample index."""
    order = np.argsort(result.sample_index, kind="stable")
    arrays = {f.name: getattr(result, f.name)[order] for f in attrs.fields(AttackBatchResult) if f.name != "iterations"}
    return AttackBatchResult(result.iterations, **arrays)


def _params(plan: _Plan) -> dict[str, object]:
    cfg = plan.config.attack
    return {
        **attrs.asdict(plan.settings),
        "batch_size": plan.batch_size,
        "include_misclassified": cfg.include_misclassified,
        "features": list(cfg.features),
        "hours": list(cfg.hours),
    }


def _run_summary(plan: _Plan, result: AttackBatchResult, *, done: int, device: torch.device) -> AttackSummary:
    batches = Batches(done=plan.n_batches - len(plan.todo) + done, total=plan.n_batches)
    return attack_summary(
        result,
        tuned=plan.tuned.id,
        target=plan.target,
        split=plan.split,
        shard=None if plan.shard is None else str(plan.shard),
        batch_size=plan.batch_size,
        batches=batches,
        device=str(device),
    )


def attack_summary(
    result: AttackBatchResult,
    *,
    tuned: RunId,
    target: AttackTarget,
    split: str,
    shard: str | None,
    batch_size: int,
    batches: Batches,
    device: str,
    merged_shards: tuple[RunId, ...] = (),
) -> AttackSummary:
    """Lineage, counts, success rate, and mean L0 / L1 of the first and best examples per direction."""
    return AttackSummary(
        tune_attack_run=tuned,
        model_run=target.model_run.id,
        model_trial=target.trial,
        features_run=target.features_run.id,
        split=split,
        shard=shard,
        batch_size=batch_size,
        batches=batches,
        device=device,
        n_samples=result.n,
        n_attacked=int(result.attacked.sum()),
        n_successful=int(result.found.sum()),
        success_rate=result.success_rate,
        iterations=result.iterations,
        directions={name: _direction(result, code) for name, code in DIRECTIONS.items()},
        merged_shards=merged_shards,
    )


def _direction(result: AttackBatchResult, code: int) -> DirectionStats:
    predicted = result.predicted
    found = result.found & (predicted == code)
    attacked = int((result.attacked & (predicted == code)).sum())

    def means(which: str) -> NormMeans:
        if not found.any():
            return NormMeans(mean_l0=None, mean_l1=None)
        return NormMeans(mean_l0=float(result.l0(which)[found].mean()), mean_l1=float(result.l1(which)[found].mean()))

    return DirectionStats(
        attacked=attacked,
        successful=int(found.sum()),
        success_rate=float(found.sum()) / attacked if attacked else 0.0,
        first=means("first"),
        best=means("best"),
    )


# --- shards -----------------------------------------------------------------------------------------


def find_shards(store: RunStore, tuned: Run, *, split: str, count: int) -> dict[int, Run]:
    """The newest complete shard run of each index 1…count of ``tuned`` on ``split`` (missing indices absent)."""
    found: dict[int, Run] = {}
    for run in store.list("attack"):
        summary = run.manifest.summary
        if not isinstance(summary, AttackSummary) or run.manifest.status != "complete":
            continue
        if not summary.shard or summary.tune_attack_run != tuned.id:
            continue
        parsed = Shard.parse(summary.shard)
        if summary.split == split and parsed.count == count:
            found[parsed.index] = run  # store.list is oldest first: the newest wins
    return found


def find_merged(store: RunStore, tuned: Run, *, split: str, count: int, attack: object) -> Run | None:
    """The newest complete run merged from ``count`` shards of ``tuned`` on ``split`` with [attack] ``attack``."""
    for run in reversed(store.list("attack")):
        summary = run.manifest.summary
        if (
            isinstance(summary, AttackSummary)
            and run.complete
            and len(summary.merged_shards) == count
            and (summary.tune_attack_run, summary.split) == (tuned.id, split)
            and run.manifest.config.get("attack") == attack
        ):
            return run
    return None


def merge_attack_shards(store: RunStore, tuned: Run, *, split: str, count: int) -> Run | None:
    """One attack run from complete shards 1…count (parents: ``tuned`` and the shards); ``None`` if any is missing.

    The merged rows equal an unsharded attack's (same batches, ascending sample index). When these
    shards were merged before (same tune-attack run, split, count and [attack] settings), that run is
    returned and nothing new is written.
    """
    split = split_name(split)
    shards = find_shards(store, tuned, split=split, count=count)
    if len(shards) < count:
        log.info("shards of %s on %s: %d of %d finished; not merging yet", tuned.id, split, len(shards), count)
        return None
    runs = [shards[i] for i in range(1, count + 1)]
    configs = {json.dumps(run.manifest.config.get("attack"), sort_keys=True) for run in runs}
    if len(configs) != 1:
        raise DataError(
            f"shards {', '.join(str(r.id) for r in runs)} used different [attack] settings; "
            "re-run the odd ones with the same settings"
        )
    existing = find_merged(store, tuned, split=split, count=count, attack=runs[0].manifest.config.get("attack"))
    if existing is not None:  # merging is idempotent: a re-run shard gives the same rows
        return existing
    result = sort_rows(AttackBatchResult.concatenate([artifacts.load_attack_result(r) for r in runs]))
    first = runs[0].summary_as(AttackSummary)
    target = target_from(store, first.model_run, first.model_trial, first.features_run)
    total = sum(r.summary_as(AttackSummary).batches.total for r in runs)
    with store.create("attack", parents=[tuned.id, *(r.id for r in runs)], config=runs[0].manifest.config) as writer:
        params = artifacts.ATTACK_PARAMS_FILE
        writer.file(params).write_bytes(runs[0].file(params).read_bytes())
        artifacts.save_attack_result(writer.path, result)
        writer.summary = attack_summary(
            result,
            tuned=tuned.id,
            target=target,
            split=split,
            shard=None,
            batch_size=first.batch_size,
            batches=Batches(done=total, total=total),
            device=first.device,
            merged_shards=tuple(r.id for r in runs),
        )
    assert writer.committed is not None
    return writer.committed
