"""What each built-in method is tested against: `gradsurg plugins` shows it, README's
feature tables say the same (`tests/test_tested_against.py` keeps the two in step).

A plugin's class may carry its own `tested_against` string; the listing shows that instead.
"""

from __future__ import annotations

COMBINERS: dict[str, str] = {
    'sum': 'row sum / mean (hypothesis); the one-backward shortcut equals the matrix path',
    'mean': 'row sum / mean (hypothesis); the one-backward shortcut equals the matrix path',
    'pcgrad': 'closed form for two groups, a plain vector loop for many; seeded order survives a checkpoint',
    'project': 'a vector reference, an exact float64 reference at 1e-30..1e15, no conflict left, idempotent, scale properties',
    'merge': 'composition of `project` and `sum` against the hand result',
    'blockwise': 'each block against the inner combiner on its column slice by hand; per-exit groups with a block per layer against UPGrad over the exits that reach each layer',
    'cagrad': "SciPy SLSQP on the paper's primal problem; ball constraint; `c=0` is `sum`; degenerate fallback; torchjd's CAGrad",
    'gradvac': "first step equals PCGrad; a vector implementation over several steps; EMA state through a `weights_only` checkpoint; torchjd's GradVac step by step",
    'mgda': "min-norm point by enumerating the hull's faces; conflicts with no group; torchjd's MGDA",
    'imtlg': "the paper's closed form; equal projections; invariance to each row's scale; torchjd's IMTLG",
    'upgrad': "sum of dual-cone projections found by enumerating active sets; no conflict left; `sum` without conflict; torchjd's UPGrad",
    'dualproj': "the sum's dual-cone projection found by enumerating active sets; no conflict left; torchjd's DualProj (quadprog, regularization 1e-12)",
    'aligned_mtl': "the paper's SVD of the matrix; aligned rows have equal singular values; torchjd's AlignedMTL",
    'nash_mtl': "equals `fairgrad` at alpha = 1; direction ignores each row's length; Pareto-stationary input gives 0; torchjd's NashMTL (cvxpy) over steps, with weight reuse; state through a `weights_only` checkpoint",
    'config': "the paper's pseudo-inverse formula in numpy; equal positive cosines; torchjd's ConFIG (zero rows too)",
    'fairgrad': "SciPy least squares on the paper's system G w = w^(-1/alpha); the optimality condition itself; torchjd's FairGrad",
    'graddrop': "the paper's masks coordinate by coordinate in numpy; torchjd's GradDrop seeded alike (equal); seeded state through a checkpoint",
    'rlw': "torchjd's Random seeded alike; fresh weights each step; seeded state through a checkpoint",
    'dbmtl': 'a numpy rendering over several steps; averages kept per group name; state through a `weights_only` checkpoint',
    'pcd': "cvxpy (Clarabel) on the paper's primal QP with normalized rows; KKT conditions of the Gramian solver; torchjd's PCD step by step (k times its output, scalar and per-group tau); named primary independent of row order; `tau: 0` on two groups is `project`'s projected target; averages by group name through a `weights_only` checkpoint",
    'krum': "a numpy rendering of the paper's scores (squared distances) by brute force; torchjd's Krum with `squared: false` for every n_byzantine and n_selected (ties: equal scores); outliers never selected; trains tiny RomeBERT and digits with per-exit groups",
    'trimmed_mean': "a numpy sort per column; torchjd's TrimmedMean for every trim; bounded by the honest rows' values; `trim: 0` is `sum`; trains tiny RomeBERT and digits with per-exit groups",
    'cr_mogm': "a numpy rendering of the moving average over 5 steps around mgda, upgrad, dualproj and mean (alpha 0: the inner combiner; 1: frozen); torchjd's CRMOGMWeighting around UPGrad and the mean step by step; averages by group name; state (with the inner one's) through a `weights_only` checkpoint",
    'excess_mtl': "a numpy rendering of eqs. 6, 7 and 9 over 7 steps (with and without warm-up); torchjd's ExcessMTL step by step; a growing group gains the weight; state by group name, through a `weights_only` checkpoint",
    'sdmgrad': "torchjd's SDMGradWeighting step by step (k times its weights on batch 3; defaults, no momentum, one inner step, a preference); the paper's Algorithm 1 in numpy (momentum 0); MGDA's weights at lam 0, the preferred sum at large lam; group order free, batch order not; state through a `weights_only` checkpoint; trains tiny RomeBERT and digits three batches a step",
    'modo': "torchjd's MoDoWeighting step by step (k times its weights on batch 3, three option sets); the paper's Algorithm 1 in numpy (simplex projection by bisection); group order free, batch order not; state through a `weights_only` checkpoint; trains tiny RomeBERT and digits three batches a step",
    'moco': "a numpy rendering of Algorithm 1 over several steps (simplex projection by bisection); converges to MGDA's weights on fixed gradients; state through a checkpoint",
}

WEIGHTINGS: dict[str, str] = {
    'uncertainty': "numpy SGD steps; torchjd's `UW` (value and gradients)",
    'dwa': "numpy over 5 epochs; torchjd's `DWA`",
    'famo': "numpy Algorithms 1 and 2 over 8 steps; torchjd's `FAMO` step by step; SIGKILL + resume bit for bit",
    'geometric': "autograd of the product; torchjd's `GeometricMean`",
    'imtll': "numpy SGD steps; torchjd's `IMTLL`",
    'stch': "numpy over 4 epochs; k x torchjd's `STCH` on the normalized logs",
    'pbi': "numpy gradient of d1 + theta d2 around a reference point 0 or drawn (hypothesis); torchjd's `PBI` by autograd, `reference` too; negative weights from theta > 1 shown; seeded Dirichlet resampling through a `weights_only` checkpoint; trains the digits and a tiny RomeBERT recipe",
    'cosmos': "numpy gradient of r.L - lambda cos(r, L) (hypothesis); torchjd's `COSMOS` by autograd; seeded Dirichlet resampling through a `weights_only` checkpoint; trains the digits and a tiny RomeBERT recipe; conditioning: the ray concatenated or projected by hand, a plain loop where one MLP learns y = r1 - r2 per ray, the ray stream through a checkpoint, a tiny RomeBERT fed each step's ray then served at any `--preference`",
    'layerskip': "numpy rendering of the authors' `layer_ids_to_loss_scales` (six scales, three depths, early scale); rotation over three cycles, exits in any group order; state through a `weights_only` checkpoint; trains a tiny RomeBERT recipe and the digits recipe with per-exit groups",
    'eellm_warmup': "numpy rendering of the authors' `EarlyExitLossWeight` iteration by iteration (linear, cosine, warm-up 0/1/5 steps, per-exit targets, cool-down); state through a `weights_only` checkpoint; trains a tiny RomeBERT recipe and the digits recipe with per-exit groups",
}

#: `gradsurg plugins` kind -> name -> what it is tested against.
TESTED_AGAINST: dict[str, dict[str, str]] = {"combiners": COMBINERS, "loss_weightings": WEIGHTINGS}
