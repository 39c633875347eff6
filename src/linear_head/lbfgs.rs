//! L-BFGS with a strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5-3.6, 7.4-7.5),
//! with scikit-learn's stopping rules (`tol` on the projected gradient, `ftol` on the relative
//! decrease, `maxls` line-search steps).
//!
//! Hand-written because the solver must stop exactly where scikit-learn's `lbfgs` does (same
//! rules, same memory) and switch from f32 to f64 kernels part-way, which no Rust optimiser
//! crate offers.

use super::*;

// ---------------------------------------------------------------------------
// L-BFGS with a strong-Wolfe line search
// ---------------------------------------------------------------------------

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) struct Memory {
    pub(crate) s: VecDeque<Vec<f64>>,
    pub(crate) y: VecDeque<Vec<f64>>,
    pub(crate) rho: VecDeque<f64>,
}

impl Memory {
    pub(crate) fn new() -> Self {
        Memory {
            s: VecDeque::new(),
            y: VecDeque::new(),
            rho: VecDeque::new(),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.s.clear();
        self.y.clear();
        self.rho.clear();
    }

    pub(crate) fn push(&mut self, s: Vec<f64>, y: Vec<f64>) {
        let sy = dot(&s, &y);
        if sy.is_nan() || sy <= 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
            return; // skip pairs that would break positive definiteness
        }
        if self.s.len() == MEMORY {
            self.s.pop_front();
            self.y.pop_front();
            self.rho.pop_front();
        }
        self.s.push_back(s);
        self.y.push_back(y);
        self.rho.push_back(1.0 / sy);
    }

    /// `−H·g` by the two-loop recursion.
    pub(crate) fn direction(&self, g: &[f64]) -> Vec<f64> {
        let mut q = g.to_vec();
        let m = self.s.len();
        let mut alpha = vec![0.0; m];
        for i in (0..m).rev() {
            let a = self.rho[i] * dot(&self.s[i], &q);
            alpha[i] = a;
            for (qj, yj) in q.iter_mut().zip(&self.y[i]) {
                *qj -= a * yj;
            }
        }
        if let (Some(s), Some(y)) = (self.s.back(), self.y.back()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for (i, a) in alpha.iter().enumerate() {
            let beta = self.rho[i] * dot(&self.y[i], &q);
            for (qj, sj) in q.iter_mut().zip(&self.s[i]) {
                *qj += (a - beta) * sj;
            }
        }
        q.iter_mut().for_each(|v| *v = -*v);
        q
    }
}

pub(crate) struct Point {
    pub(crate) step: f64,
    pub(crate) f: f64,
    pub(crate) g: Vec<f64>,
    pub(crate) dg: f64,
}

/// Strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5–3.6, cubic interpolation).
#[allow(clippy::too_many_arguments)]
pub(crate) fn line_search(
    problem: &Problem<'_>,
    precision: Precision,
    x: &[f64],
    f0: f64,
    dg0: f64,
    dir: &[f64],
    first_step: f64,
    evals: &mut usize,
) -> Option<Point> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let eval_at = |a: f64, evals: &mut usize| -> Point {
        let xt: Vec<f64> = x.iter().zip(dir).map(|(xi, di)| xi + a * di).collect();
        let (f, g) = problem.eval(&xt, precision);
        *evals += 1;
        let dg = dot(&g, dir);
        Point { step: a, f, g, dg }
    };
    let mut prev = Point {
        step: 0.0,
        f: f0,
        g: Vec::new(),
        dg: dg0,
    };
    let mut a = first_step;
    let mut used = 0;
    let max_ls = match precision {
        Precision::Single => SINGLE_MAX_LS,
        Precision::Double => MAX_LS,
    };
    loop {
        if used >= max_ls {
            return None;
        }
        let cur = eval_at(a, evals);
        used += 1;
        if !cur.f.is_finite() || cur.f > f0 + C1 * a * dg0 || (used > 1 && cur.f >= prev.f) {
            return zoom(prev, cur, f0, dg0, &eval_at, evals, used, max_ls);
        }
        if cur.dg.abs() <= -C2 * dg0 {
            return Some(cur);
        }
        if cur.dg >= 0.0 {
            return zoom(cur, prev, f0, dg0, &eval_at, evals, used, max_ls);
        }
        let next = (a * 4.0).min(a + 1e6);
        prev = cur;
        a = next;
    }
}

pub(crate) fn cubic_min(a: &Point, b: &Point) -> Option<f64> {
    // Minimiser of the cubic interpolating (step, f, dg) at a and b.
    let d1 = a.dg + b.dg - 3.0 * (a.f - b.f) / (a.step - b.step);
    let disc = d1 * d1 - a.dg * b.dg;
    if disc < 0.0 {
        return None;
    }
    let d2 = disc.sqrt() * (b.step - a.step).signum();
    let t = b.step - (b.step - a.step) * (b.dg + d2 - d1) / (b.dg - a.dg + 2.0 * d2);
    t.is_finite().then_some(t)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn zoom<F: Fn(f64, &mut usize) -> Point>(
    mut lo: Point,
    mut hi: Point,
    f0: f64,
    dg0: f64,
    eval_at: &F,
    evals: &mut usize,
    mut used: usize,
    max_ls: usize,
) -> Option<Point> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    loop {
        if used >= max_ls || (hi.step - lo.step).abs() <= 1e-16 * lo.step.abs().max(1e-300) {
            // Accept the best point found if it decreased f at all.
            return (lo.step > 0.0 && lo.f < f0 && !lo.g.is_empty()).then_some(lo);
        }
        let (l, h) = if lo.step < hi.step {
            (lo.step, hi.step)
        } else {
            (hi.step, lo.step)
        };
        let width = h - l;
        let mut a = if hi.f.is_finite() {
            cubic_min(&lo, &hi).unwrap_or(0.5 * (l + h))
        } else {
            0.5 * (l + h)
        };
        // Keep the trial well inside the bracket.
        if a < l + 0.1 * width || a > h - 0.1 * width {
            a = 0.5 * (l + h);
        }
        let cur = eval_at(a, evals);
        used += 1;
        if !cur.f.is_finite() || cur.f > f0 + C1 * a * dg0 || cur.f >= lo.f {
            hi = cur;
        } else {
            if cur.dg.abs() <= -C2 * dg0 {
                return Some(cur);
            }
            if cur.dg * (hi.step - lo.step) >= 0.0 {
                hi = lo;
            }
            lo = cur;
        }
    }
}

pub(crate) fn lbfgs(
    problem: &Problem<'_>,
    mut x: Vec<f64>,
    opts: &FitOptions,
) -> (Vec<f64>, FitReport) {
    let mut precision = Precision::Single;
    let (mut f, mut g) = problem.eval(&x, precision);
    let mut evals = 1usize;
    let mut iters = 0usize;
    let mut mem = Memory::new();
    // Switch to f64 kernels; returns false if already there.
    let to_double = |precision: &mut Precision,
                     x: &[f64],
                     f: &mut f64,
                     g: &mut Vec<f64>,
                     evals: &mut usize|
     -> bool {
        if *precision == Precision::Double {
            return false;
        }
        *precision = Precision::Double;
        let (nf, ng) = problem.eval(x, Precision::Double);
        *f = nf;
        *g = ng;
        *evals += 1;
        true
    };
    let stop = loop {
        let gmax = max_abs(&g);
        if gmax <= opts.tol {
            if opts.tol < SINGLE_PRECISION_TOL
                && to_double(&mut precision, &x, &mut f, &mut g, &mut evals)
            {
                continue;
            }
            break StopReason::GradientTolerance;
        }
        if iters >= opts.max_iter {
            break StopReason::MaxIterations;
        }
        let mut dir = mem.direction(&g);
        let mut dg = dot(&dir, &g);
        if dg.is_nan() || dg >= 0.0 {
            mem.clear();
            dir = g.iter().map(|v| -v).collect();
            dg = dot(&dir, &g);
        }
        // f32 kernels resolve the objective to about 1e-7 of its size: when the expected
        // decrease is below that, continue in f64.
        if precision == Precision::Single
            && -dg < 1e-7 * f.abs().max(1.0)
            && to_double(&mut precision, &x, &mut f, &mut g, &mut evals)
        {
            continue;
        }
        let first_step = if mem.s.is_empty() {
            (1.0 / dot(&g, &g).sqrt()).min(1.0)
        } else {
            1.0
        };
        match line_search(problem, precision, &x, f, dg, &dir, first_step, &mut evals) {
            Some(pt) => {
                let s: Vec<f64> = dir.iter().map(|v| pt.step * v).collect();
                let y: Vec<f64> = pt.g.iter().zip(&g).map(|(a, b)| a - b).collect();
                let rel = (f - pt.f) / f.abs().max(pt.f.abs()).max(1.0);
                x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += si);
                mem.push(s, y);
                f = pt.f;
                g = pt.g;
                iters += 1;
                if rel <= FTOL {
                    if to_double(&mut precision, &x, &mut f, &mut g, &mut evals) {
                        continue;
                    }
                    break StopReason::RelativeReduction;
                }
            }
            None => {
                if to_double(&mut precision, &x, &mut f, &mut g, &mut evals) {
                    mem.clear();
                    continue;
                }
                break StopReason::LineSearchFailed;
            }
        }
    };
    let grad_norm = max_abs(&g);
    let converged = match stop {
        StopReason::GradientTolerance | StopReason::RelativeReduction | StopReason::NoData => true,
        StopReason::MaxIterations => false,
        StopReason::LineSearchFailed => grad_norm <= opts.tol,
    };
    (
        x,
        FitReport {
            c: opts.c,
            iterations: iters,
            evaluations: evals,
            loss: f,
            grad_norm,
            converged,
            stop,
        },
    )
}
