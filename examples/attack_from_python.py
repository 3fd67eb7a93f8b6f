# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attacking a model from Python
#
# This notebook uses the toolkit's Python API on a workspace made by the CLI — for instance
# `lstm-adv demo` (the MIMIC-III demo) or `lstm-adv demo --synthetic 3000`. It finds the workspace as
# the CLI does: `$LSTM_ADV_HOME`, else the nearest `.lstm-adv` folder above the working directory.
# Open it with Jupyter (`jupytext --to ipynb examples/attack_from_python.py`) or run it as a script.

# %%
import numpy as np

import lstm_adv as la

print(la.runs()[["id", "kind", "status"]].tail(10).to_string(index=False))

# %% [markdown]
# ## The model and its data
#
# `load_model` takes a model run's id (or a unique prefix, or the run itself). The model comes with
# its **decision rule**: the threshold on P(death) chosen on the validation split, or argmax. Every
# attack decides at this rule.

# %%
model = la.load_model(la.latest("model"))
features = la.load_features(model)
print(model.decision.describe())
print(f"{features.n_samples} samples; {features.measured_fraction().mean():.0%} of cells measured on average")

x_test = features.values[features.indices("test")]
p = model.predict_proba(x_test)
print(f"test split: {len(x_test)} samples, {model.predict(x_test).mean():.1%} predicted to die")

# %% [markdown]
# ## One call: adversarial inputs, δ and a table
#
# `attack_batch` runs the sparse L1 attack with the settings a tune-attack run chose (or the defaults) on a
# batch, changing only cells that held a measurement (`cells="observed"`). It returns the adversarial
# inputs (`x_adv`, in [0, 1]), the perturbation of the chosen example kind (`delta`; `sparse`, the
# fewest cells that still flip the decision, by default) and one row per sample.

# %%
tuned = la.latest("tune-attack")
out = la.attack_batch(model, features, split="test", limit=32, tuned=tuned)
print(out.table[["label", "predicted", "attacked", "success", "p_before", "p_after", "l0"]].head(10).to_string())

# %%
flipped = out.table["success"].to_numpy()
print(f"{flipped.sum()} of {out.table['attacked'].sum()} attacked samples flipped")
print(f"median number of changed cells: {np.median(out.table.loc[flipped, 'l0']):.0f} of 912")
assert out.x_adv.min() >= 0.0
assert out.x_adv.max() <= 1.0
assert (model.predict(out.x_adv[flipped]) != model.predict(x_test[:32][flipped])).all()

# %% [markdown]
# ## Which features did the attack change?
#
# The cells of one sparse example, in the features' names and clinical units
# (δ × (p95 − p5) of the training split).

# %%
names = features.feature_names
if flipped.any():
    row = int(np.flatnonzero(flipped)[0])
    hours, columns = np.nonzero(out.delta[row])
    span = features.scaling.p95 - features.scaling.p5
    for hour, column in zip(hours, columns, strict=False):
        change = out.delta[row, hour, column] * span[column]
        print(f"hour {hour:2d}  {names[column]:<12} {change:+.3g}")

# %% [markdown]
# ## Analysis tables
#
# The tables an `lstm-adv analyze` run stored (GMP/GPP per cell, susceptibility per feature and hour,
# sizes of every example) come back as DataFrames.

# %%
if not la.runs("analysis").empty:
    tables = la.analysis_tables(la.latest("analysis"))
    ranking = tables["features"]
    print(ranking[(ranking["which"] == "sparse")].sort_values(["direction", "rank"]).head(10).to_string(index=False))
