"""Attack stage: the sparse L1 attack with a tune-attack run's chosen settings on one split.

``run_attack`` writes an attack run (kind ``attack``, parents: the tune-attack run, plus the
interrupted run it resumes): ``results.npz`` (:class:`AttackBatchResult`, rows in ascending sample
index: first, best and sparse example of every sample), ``params.json`` (the attack settings) and a
summary with the decision rule, the cells the attack may change, success counts and the sizes of the
examples per direction.

Design:

- **The model's decision rule** (its threshold t, stored in the model run) decides which samples are
  correctly classified (the ones attacked) and what counts as a flip.
- **Threat.** ``attack.cells = record`` (the default) alters each sample's measurements — its measured
  hourly values and the pre-window bin — and the model sees the input preprocessing makes from the
  altered record: the data-entry-error model (L0 counts altered measurements; the results store the
  record change beside the model input's change). ``observed`` changes measured model-input cells
  alone (not producible from a record; a comparison); ``all`` is Sun et al.'s setting.
- **Blocks.** The rows a run attacks (the split's, or a shard's own), in ascending order, are cut into
  blocks of ``attack.block_size`` rows, the unit of progress; within a block, samples are attacked in
  batches of ``attack.batch_size`` (a speed setting: every sample has its own state, so results do not
  depend on it). Every way of running the attack (whole, sharded, interrupted and resumed, any batch or
  block size) gives the same rows: the same successes and iterations, deltas equal to float32 rounding
  (samples batched with others meet other matrix-kernel orders).
- **Ctrl-C** keeps the finished blocks: they are held in memory, and on ``KeyboardInterrupt`` the run
  is published with status ``interrupted`` holding them (nothing finished → nothing written).
  ``resume=<interrupted run>`` attacks the blocks it lacks and writes a complete run.
- **Shards.** ``Shard(i, n)`` owns the split's rows at positions ``p`` with ``p mod n == i − 1`` — defined
  by the rows, not by a block size, so shards run with other block or batch sizes (a CPU shard and a GPU
  shard) still partition the split — and marks its run with ``shard = "i/n"``; its results hold the rows
  it owns. ``merge_attack_shards`` writes one run from complete shards 1…n of the same tune-attack run,
  split and result settings (parents: the tune-attack run and the shard runs), after checking that their
  rows partition the split exactly; shards of other settings are left out and named. Its rows equal the
  unsharded attack's. The CLI merges automatically once the last shard finishes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import attrs
import numpy as np
import torch

from lstm_adv import uncertainty
from lstm_adv.attacks import L1Attack, L1Settings
from lstm_adv.config import AUTO_BLOCK, AttackConfig, Config
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix, split_name
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import RunId
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AttackSummary, Batches, DirectionStats, NormMeans, TuneAttackSummary
from lstm_adv.targets import AttackSurface, AttackTarget, attack_surface, l1_attack, target_from, tuned_settings
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
    """Shard ``index`` of ``count`` (1-based): the blocks b with b mod count == index − 1."""

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


def block_size(config: AttackConfig, device: torch.device) -> int:
    """Samples per block: ``attack.block_size``, or for ``auto`` 256 on a CPU and 16,384 on a GPU."""
    if config.block_size == "auto":
        return AUTO_BLOCK["cuda" if device.type == "cuda" else "cpu"]
    return config.block_size


def shard_rows(rows: np.ndarray, shard: Shard | None) -> np.ndarray:
    """The rows a shard owns: those at positions p of ``rows`` with p mod n = i − 1 (all without a shard)."""
    return rows if shard is None else rows[shard.index - 1 :: shard.count]


def blocks_of(rows: np.ndarray, block_size: int, shard: Shard | None) -> list[np.ndarray]:
    """The blocks this shard attacks: its own rows (:func:`shard_rows`) in blocks of ``block_size``."""
    owned = shard_rows(rows, shard)
    return [owned[start : start + block_size] for start in range(0, owned.size, block_size)]


# --- the attack run ---------------------------------------------------------------------------------


@attrs.frozen
class _Plan:
    """Everything checked before a run is written."""

    tuned: Run
    target: AttackTarget
    config: Config
    settings: L1Settings
    split: str
    shard: Shard | None
    todo: list[np.ndarray] = attrs.field(eq=False)
    n_samples: int
    previous: AttackBatchResult | None = attrs.field(eq=False)
    parents: tuple[RunId, ...]
    surface: AttackSurface = attrs.field(eq=False)


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
    """Attack ``split`` (default: test) with the settings of tune-attack run ``tuned`` and write an attack run.

    ``resume``: an interrupted attack run to complete (its tune-attack run, split and shard are used).
    ``progress(n)`` is called after each finished block of n samples. Returns the run, with status
    ``interrupted`` after Ctrl-C (finished blocks kept). Bad input writes no run.
    """
    plan = _plan(store, tuned, config, split=split, shard=shard, resume=resume)
    device = resolve_device(plan.config.attack.device)
    model, decision = plan.target.load(plan.surface.features, device)
    cfg = plan.config.attack
    attack = l1_attack(
        model,
        plan.settings,
        decision=decision,
        surface=plan.surface,
        config=cfg,
        device=device,
        max_batch_size=block_size(cfg, device),  # every call attacks one block
    )
    batch_size = attack.batch_size
    with store.create("attack", parents=plan.parents, config=config_as_dict(plan.config)) as writer:
        artifacts.write_json(writer.file(artifacts.ATTACK_PARAMS_FILE), _params(plan, batch_size))
        parts, status = _attack_blocks(attack, plan, progress)
        result = sort_rows(AttackBatchResult.concatenate(parts))
        artifacts.save_attack_result(writer.path, result)
        writer.summary = attack_summary(
            result,
            tuned=plan.tuned.id,
            target=plan.target,
            decision=decision,
            split=plan.split,
            shard=None if plan.shard is None else str(plan.shard),
            cells=cfg.cells,
            batch_size=batch_size,
            batches=Batches(done=result.n, total=plan.n_samples),
            device=str(device),
        )
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
    settings = tuned_settings(tuned, config.attack)
    summary = tuned.summary_as(TuneAttackSummary)
    target = target_from(store, summary.model_run, summary.model_trial, summary.features_run)
    spec = artifacts.feature_definitions(target.features_run).to_spec()
    split = split_name(split or "test")
    features = artifacts.load_features(target.features_run)
    surface = attack_surface(config.attack, features, spec)  # a bad mask or threat fails before anything is written
    rows = split_indices(features, split, origin=f"features run {target.features_run.id}")
    if shard is not None and shard.count > rows.size:
        raise ConfigError(
            f"--shard {shard}: the {split} split has {rows.size} samples, so at most {rows.size} shards each own one; "
            f"use --shard i/n with n <= {rows.size}"
        )
    block = block_size(config.attack, resolve_device(config.attack.device))
    blocks = blocks_of(rows, block, shard)
    done = np.zeros(0, dtype=np.int64) if previous is None else previous.sample_index
    todo = [b[~np.isin(b, done)] for b in blocks]
    todo = [b for b in todo if b.size]
    n_samples = sum(b.size for b in blocks)
    return _Plan(
        tuned, target, config, settings, split, shard, todo, n_samples, previous, (tuned.id, *parents), surface
    )


def _resume_inputs(
    store: RunStore, resume: Run, tuned: Run | None, config: Config, split: str | None, shard: Shard | None
) -> tuple[Run, Config, str, Shard | None]:
    """The interrupted run's tune-attack run, attack settings (device and batch size: the current ones),
    split and shard."""
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
    now = config.attack
    speed = attrs.evolve(old_attack, device=now.device, batch_size=now.batch_size, cudnn=now.cudnn)
    config = attrs.evolve(config, attack=speed)
    return old_tuned, config, summary.split, old_shard


def _attack_blocks(attack: L1Attack, plan: _Plan, progress: Progress | None) -> tuple[list[AttackBatchResult], str]:
    """Attack the plan's remaining blocks; Ctrl-C stops after the finished ones (none finished: re-raised)."""
    parts = [] if plan.previous is None else [plan.previous]
    try:
        for rows in plan.todo:
            parts.append(plan.surface.attack(attack, rows))
            if progress is not None:
                progress(len(rows))
    except KeyboardInterrupt:
        if not parts:
            raise
        log.info("attack interrupted: %d finished blocks kept; continue with --resume", len(parts))
        return parts, "interrupted"
    return parts, "complete"


def sort_rows(result: AttackBatchResult) -> AttackBatchResult:
    """The rows of ``result`` in ascending sample index."""
    return result.take(np.argsort(result.sample_index, kind="stable"))


def _params(plan: _Plan, batch_size: int) -> dict[str, object]:
    cfg = plan.config.attack
    return {
        **attrs.asdict(plan.settings),
        "batch_size": batch_size,
        "cells": cfg.cells,
        "record_prewindow": cfg.record_prewindow,
        "max_change": dict(cfg.max_change),
        "include_misclassified": cfg.include_misclassified,
        "features": list(cfg.features),
        "hours": list(cfg.hours),
    }


def attack_summary(
    result: AttackBatchResult,
    *,
    tuned: RunId,
    target: AttackTarget,
    decision: DecisionRule,
    split: str,
    shard: str | None,
    cells: str,
    batch_size: int,
    batches: Batches,
    device: str,
    merged_shards: tuple[RunId, ...] = (),
) -> AttackSummary:
    """Lineage, the decision rule, counts, success rate and the sizes of the examples per direction."""
    found = result.found
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
        n_successful=int(found.sum()),
        success_rate=result.success_rate,
        iterations=result.iterations,
        directions={name: _direction(result, code) for name, code in DIRECTIONS.items()},
        merged_shards=merged_shards,
        decision=decision.rule,
        threshold=decision.threshold,
        cells=cells,
        n_no_cell=int((result.skip == 2).sum()),
        median_l0_sparse=float(np.median(result.l0("sparse")[found])) if found.any() else None,
        unit=result.unit,
        median_input_l0_sparse=float(np.median(result.input_l0("sparse")[found])) if found.any() else None,
        success=uncertainty.rate_estimate(int(found.sum()), int(result.attacked.sum())),
        median_l0_interval=uncertainty.median_estimate(result.l0("sparse")[found]),
    )


def _direction(result: AttackBatchResult, code: int) -> DirectionStats:
    predicted = result.predicted
    found = result.found & (predicted == code)
    attacked = int((result.attacked & (predicted == code)).sum())

    def sizes(which: str) -> NormMeans:
        if not found.any():
            return NormMeans(mean_l0=None, mean_l1=None)
        l0 = result.l0(which)[found]
        return NormMeans(
            mean_l0=float(l0.mean()), mean_l1=float(result.l1(which)[found].mean()), median_l0=float(np.median(l0))
        )

    return DirectionStats(
        attacked=attacked,
        successful=int(found.sum()),
        success_rate=float(found.sum()) / attacked if attacked else 0.0,
        first=sizes("first"),
        best=sizes("best"),
        sparse=sizes("sparse"),
    )


# --- shards -----------------------------------------------------------------------------------------


def find_shards(
    store: RunStore, tuned: Run, *, split: str, count: int, settings: dict[str, object] | None = None
) -> tuple[dict[int, Run], list[Run]]:
    """The newest complete shard run of each index 1…count of ``tuned`` on ``split`` whose result settings are
    ``settings`` (default: those of the newest such shard), and the shard runs left out for other settings."""
    candidates = []
    for run in store.list("attack"):  # oldest first
        summary = run.manifest.summary
        if not isinstance(summary, AttackSummary) or run.manifest.status != "complete":
            continue
        if not summary.shard or summary.tune_attack_run != tuned.id or summary.split != split:
            continue
        if Shard.parse(summary.shard).count == count:
            candidates.append(run)
    if settings is None and candidates:
        settings = _result_settings(candidates[-1].manifest.config.get("attack", {}))
    found: dict[int, Run] = {}
    other: list[Run] = []
    for run in candidates:
        if _result_settings(run.manifest.config.get("attack", {})) != settings:
            other.append(run)
            continue
        found[Shard.parse(run.summary_as(AttackSummary).shard or "1/1").index] = run  # the newest wins
    return found, other


def find_merged(store: RunStore, tuned: Run, *, split: str, count: int, settings: dict[str, object]) -> Run | None:
    """The newest complete run merged from ``count`` shards of ``tuned`` on ``split`` with these result settings."""
    for run in reversed(store.list("attack")):
        summary = run.manifest.summary
        if (
            isinstance(summary, AttackSummary)
            and run.complete
            and len(summary.merged_shards) == count
            and (summary.tune_attack_run, summary.split) == (tuned.id, split)
            and _result_settings(run.manifest.config.get("attack", {})) == settings
        ):
            return run
    return None


def merge_attack_shards(
    store: RunStore, tuned: Run, *, split: str, count: int, reference: Run | None = None
) -> Run | None:
    """One attack run from complete shards 1…count (parents: ``tuned`` and the shards); ``None`` if any is missing.

    Shards count when their result settings (everything in ``[attack]`` but the speed settings) are those of
    ``reference`` (default: the newest shard); others are left out and named in the log. Their rows must
    partition the split exactly (no row twice, none missing), else a :class:`DataError`. The merged rows equal
    an unsharded attack's (ascending sample index). When shards of this attack were merged before (same
    tune-attack run, split, count and result settings), that run is returned and nothing new is written.
    """
    split = split_name(split)
    settings = None if reference is None else _result_settings(reference.manifest.config.get("attack", {}))
    shards, other = find_shards(store, tuned, split=split, count=count, settings=settings)
    if other:
        log.warning("left out shard runs of other [attack] settings: %s", ", ".join(str(r.id) for r in other))
    if len(shards) < count:
        log.info("shards of %s on %s: %d of %d finished; not merging yet", tuned.id, split, len(shards), count)
        return None
    runs = [shards[i] for i in range(1, count + 1)]
    settings = _result_settings(runs[0].manifest.config.get("attack", {}))
    existing = find_merged(store, tuned, split=split, count=count, settings=settings)
    if existing is not None:  # merging is idempotent: a re-run shard gives the same rows
        return existing
    result = sort_rows(AttackBatchResult.concatenate([artifacts.load_attack_result(r) for r in runs]))
    first = runs[0].summary_as(AttackSummary)
    target = target_from(store, first.model_run, first.model_trial, first.features_run)
    _check_partition(result, artifacts.load_features(target.features_run), split, runs)
    total = sum(r.summary_as(AttackSummary).batches.total for r in runs)
    with store.create("attack", parents=[tuned.id, *(r.id for r in runs)], config=runs[0].manifest.config) as writer:
        params = artifacts.ATTACK_PARAMS_FILE
        writer.file(params).write_bytes(runs[0].file(params).read_bytes())
        artifacts.save_attack_result(writer.path, result)
        writer.summary = attack_summary(
            result,
            tuned=tuned.id,
            target=target,
            decision=DecisionRule(first.decision, first.threshold),
            split=split,
            shard=None,
            cells=first.cells,
            batch_size=first.batch_size,
            batches=Batches(done=total, total=total),
            device=first.device,
            merged_shards=tuple(r.id for r in runs),
        )
    assert writer.committed is not None
    return writer.committed


def _check_partition(result: AttackBatchResult, features: FeatureMatrix, split: str, runs: list[Run]) -> None:
    """The shards' rows are the split's rows, each exactly once, else one line saying how they differ."""
    expected = features.indices(split)
    rows = result.sample_index
    duplicated = int(rows.size - np.unique(rows).size)
    missing = int(np.setdiff1d(expected, rows).size)
    foreign = int(np.setdiff1d(rows, expected).size)
    if duplicated or missing or foreign:
        names = ", ".join(str(r.id) for r in runs)
        raise DataError(
            f"shards {names} do not partition the {split} split ({expected.size} rows): {duplicated} duplicated, "
            f"{missing} missing, {foreign} not in the split; re-run the odd shards with the same settings"
        )


def _result_settings(attack_config: dict[str, object]) -> dict[str, object]:
    """The [attack] settings that change results (not the speed settings: device, batch and block size, cuDNN)."""
    return {
        key: value for key, value in attack_config.items() if key not in ("device", "batch_size", "block_size", "cudnn")
    }
