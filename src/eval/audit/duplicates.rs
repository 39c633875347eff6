//! Duplicates: exact copies by content hash, and near-duplicates by embedding cosine.
//!
//! Exact copies are found by SHA-256 of each file's bytes (the `sha2` crate, RustCrypto, already
//! in the dependency tree; at 256 bits an accidental collision is out of reach, unlike the
//! project's 64-bit FNV-1a, which is a cache key, and it runs at several hundred MB/s with the
//! CPU's SHA extensions).
//!
//! Near-duplicates come from an exact k-nearest-neighbour search in blocks: the L2-normalised
//! embeddings are packed once as the "weight" of the project's AVX-512 SGEMM
//! ([`crate::clip::kernels::gemm::PackedWeight`]), and each block of `block_rows` query rows is
//! multiplied against all of them, giving a `block_rows x n` slab of cosines that is scanned
//! (pairs above the threshold, the `k` best neighbours of each row) and dropped. Memory is the
//! embeddings twice (rows and packed copy) plus one slab, never the `n x n` matrix. Where the
//! CPU lacks AVX-512 the slab comes from candle's CPU matmul (the `gemm` crate) instead.
//! Pairs are grouped with a union-find (written here: twenty lines, no crate needed).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::AuditError;
use crate::clip::kernels::gemm;

/// Disjoint sets over `0..n` (union by size, path halving).
#[derive(Clone, Debug)]
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    /// The representative of `x`'s set.
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let p = self.parent[x] as usize;
            self.parent[x] = self.parent[p];
            x = self.parent[x] as usize;
        }
        x
    }

    /// Merges the sets of `a` and `b`; returns whether they were apart.
    pub fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra as u32;
        self.size[ra] += self.size[rb];
        true
    }

    /// The sets with at least two members, each sorted, ordered by their smallest member.
    pub fn groups(&mut self) -> Vec<Vec<usize>> {
        let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..self.parent.len() {
            let r = self.find(i);
            by_root.entry(r).or_default().push(i);
        }
        let mut out: Vec<Vec<usize>> = by_root.into_values().filter(|g| g.len() > 1).collect();
        out.sort_by_key(|g| g[0]);
        out
    }
}

/// A pair of rows whose cosine reached the threshold (`a < b`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair {
    /// The lower row.
    pub a: usize,
    /// The higher row.
    pub b: usize,
    /// Their cosine similarity.
    pub cosine: f32,
}

/// What [`neighbours`] finds.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbours {
    /// Every pair with cosine `>= threshold`, ordered by `(a, b)`.
    pub pairs: Vec<Pair>,
    /// For each row, its `k` nearest other rows as `(row, cosine)`, most similar first (ties
    /// by row).
    pub knn: Vec<Vec<(usize, f32)>>,
}

impl Neighbours {
    /// Mean cosine of each row to its `k` nearest other rows (its k-NN density).
    pub fn density(&self) -> Vec<f32> {
        self.knn
            .iter()
            .map(|v| {
                if v.is_empty() {
                    0.0
                } else {
                    (v.iter().map(|&(_, c)| c as f64).sum::<f64>() / v.len() as f64) as f32
                }
            })
            .collect()
    }
}

/// Computes `rows x n` cosines of a block against all rows.
enum Slab {
    Packed(gemm::PackedWeight),
    Candle(candle_core::Tensor),
}

impl Slab {
    fn new(x: &[f32], n: usize, d: usize, portable: bool) -> Result<Self, AuditError> {
        if gemm::available() && !portable {
            Ok(Slab::Packed(gemm::PackedWeight::new(x, None, n, d)))
        } else {
            let t = candle_core::Tensor::from_slice(x, (n, d), &candle_core::Device::Cpu)?
                .t()?
                .contiguous()?;
            Ok(Slab::Candle(t))
        }
    }

    fn fill(
        &self,
        block: &[f32],
        m: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), AuditError> {
        match self {
            Slab::Packed(w) => {
                // The packed kernel runs as a candle op (its direct slice entry is test-only).
                let q = candle_core::Tensor::from_slice(block, (m, d), &candle_core::Device::Cpu)?;
                *out = q
                    .apply_op1_no_bwd(&w.op(gemm::Epilogue::None))?
                    .flatten_all()?
                    .to_vec1()?;
            }
            Slab::Candle(xt) => {
                let q = candle_core::Tensor::from_slice(block, (m, d), &candle_core::Device::Cpu)?;
                *out = q.matmul(xt)?.flatten_all()?.to_vec1()?;
            }
        }
        Ok(())
    }
}

/// What the scan of one query row finds: its pairs above the threshold and its `k` best.
type RowFinds = (Vec<Pair>, Vec<(usize, f32)>);

/// Inserts `(j, s)` into `top` (at most `k`, best first, ties by row) if it belongs there.
fn push_top(top: &mut Vec<(usize, f32)>, k: usize, j: usize, s: f32) {
    let better = |a: (usize, f32), b: (usize, f32)| a.1 > b.1 || (a.1 == b.1 && a.0 < b.0);
    if top.len() == k && !better((j, s), top[k - 1]) {
        return;
    }
    let pos = top.partition_point(|&t| better(t, (j, s)));
    if top.len() == k {
        top.pop();
    }
    top.insert(pos, (j, s));
}

/// Exact search over `x` (`n * d` values, rows L2-normalised by the caller): every pair with
/// cosine `>= threshold` and each row's `k` nearest other rows, in blocks of `block_rows` query
/// rows. `progress(done, n)` is called after each block.
pub fn neighbours(
    x: &[f32],
    d: usize,
    threshold: f32,
    k: usize,
    block_rows: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Neighbours, AuditError> {
    neighbours_with(x, d, threshold, k, block_rows, false, progress)
}

/// [`neighbours`], with `portable` forcing candle's matmul even where AVX-512 is present.
fn neighbours_with(
    x: &[f32],
    d: usize,
    threshold: f32,
    k: usize,
    block_rows: usize,
    portable: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<Neighbours, AuditError> {
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(AuditError::Shape {
            what: "embeddings".into(),
            expected: d,
            found: x.len(),
        });
    }
    if block_rows == 0 {
        return Err(AuditError::BadOption {
            option: "block_rows",
            message: "must be at least 1".into(),
        });
    }
    let n = x.len() / d;
    let mut pairs = Vec::new();
    let mut knn = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Neighbours { pairs, knn });
    }
    let slab = Slab::new(x, n, d, portable)?;
    let k = k.min(n - 1);
    let mut buf = Vec::new();
    let mut start = 0;
    while start < n {
        let m = block_rows.min(n - start);
        slab.fill(&x[start * d..(start + m) * d], m, d, &mut buf)?;
        let rows: Vec<RowFinds> = buf[..m * n]
            .par_chunks(n)
            .enumerate()
            .map(|(r, sims)| {
                let i = start + r;
                let mut found = Vec::new();
                let mut top: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
                for (j, &s) in sims.iter().enumerate() {
                    if j == i {
                        continue;
                    }
                    if j > i && s >= threshold {
                        found.push(Pair {
                            a: i,
                            b: j,
                            cosine: s,
                        });
                    }
                    if k > 0 && (top.len() < k || s >= top[k - 1].1) {
                        push_top(&mut top, k, j, s);
                    }
                }
                (found, top)
            })
            .collect();
        for (p, t) in rows {
            pairs.extend(p);
            knn.push(t);
        }
        start += m;
        progress(start, n);
    }
    Ok(Neighbours { pairs, knn })
}

/// SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
    }
    Ok(h.finalize().into())
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Groups rows with equal digests (rows without one are skipped): groups of two or more,
/// each sorted, ordered by their first row.
pub fn exact_groups(digests: &[Option<[u8; 32]>]) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
    for (i, d) in digests.iter().enumerate() {
        if let Some(d) = d {
            by.entry(*d).or_default().push(i);
        }
    }
    let mut out: Vec<Vec<usize>> = by.into_values().filter(|g| g.len() > 1).collect();
    out.sort_by_key(|g| g[0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut x: Vec<f32> = (0..n * d).map(|_| next() as f32).collect();
        // Plant near-copies: row 3i+1 is row 3i plus a little noise, every third row.
        for i in (0..n.saturating_sub(1)).step_by(3) {
            for c in 0..d {
                x[(i + 1) * d + c] = x[i * d + c] + 0.05 * next() as f32;
            }
        }
        for r in x.chunks_mut(d) {
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            r.iter_mut().for_each(|v| *v /= norm);
        }
        x
    }

    type Brute = (Vec<(usize, usize)>, Vec<Vec<(usize, f64)>>);

    fn brute(x: &[f32], d: usize, thr: f64, k: usize) -> Brute {
        let n = x.len() / d;
        let cos = |i: usize, j: usize| -> f64 {
            (0..d)
                .map(|c| x[i * d + c] as f64 * x[j * d + c] as f64)
                .sum()
        };
        let mut pairs = Vec::new();
        let mut knn = Vec::new();
        for i in 0..n {
            let mut all: Vec<(usize, f64)> =
                (0..n).filter(|&j| j != i).map(|j| (j, cos(i, j))).collect();
            for &(j, s) in &all {
                if j > i && s >= thr {
                    pairs.push((i, j));
                }
            }
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            knn.push(all);
        }
        (pairs, knn)
    }

    #[test]
    fn blocked_search_matches_brute_force() {
        let (n, d, k, thr) = (301, 48, 5, 0.9f32);
        let x = random_unit_rows(n, d, 11);
        let (bp, bk) = brute(&x, d, thr as f64, k);
        assert!(bp.len() >= 90, "planted pairs: {}", bp.len());
        for (block, portable) in [
            (1, false),
            (7, false),
            (64, true),
            (301, false),
            (1000, true),
        ] {
            let mut calls = 0;
            let nb = neighbours_with(&x, d, thr, k, block, portable, |_, _| calls += 1).unwrap();
            assert_eq!(calls, n.div_ceil(block));
            let got: Vec<(usize, usize)> = nb.pairs.iter().map(|p| (p.a, p.b)).collect();
            assert_eq!(got, bp, "block {block}");
            for p in &nb.pairs {
                let want = bk[p.a]
                    .iter()
                    .find(|e| e.0 == p.b)
                    .map(|e| e.1)
                    .unwrap_or(f64::NAN);
                if want.is_finite() {
                    assert!((p.cosine as f64 - want).abs() < 1e-5);
                }
            }
            for (i, (g, w)) in nb.knn.iter().zip(&bk).enumerate() {
                assert_eq!(g.len(), k);
                for (a, b) in g.iter().zip(w) {
                    assert!((a.1 as f64 - b.1).abs() < 1e-5, "row {i}: {g:?} vs {w:?}");
                }
                // Same neighbours wherever the brute-force order is not a near-tie.
                for t in 0..k {
                    let gap_ok = (t == 0 || w[t - 1].1 - w[t].1 > 1e-5)
                        && (t + 1 >= w.len() || w[t].1 - w[t + 1].1 > 1e-5);
                    if gap_ok {
                        assert_eq!(g[t].0, w[t].0, "row {i} rank {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn union_find_groups() {
        let mut uf = UnionFind::new(8);
        assert!(uf.union(5, 1));
        assert!(uf.union(1, 3));
        assert!(!uf.union(3, 5));
        assert!(uf.union(6, 7));
        assert_eq!(uf.find(3), uf.find(5));
        assert_ne!(uf.find(0), uf.find(1));
        assert_eq!(uf.groups(), vec![vec![1, 3, 5], vec![6, 7]]);
    }

    #[test]
    fn exact_groups_by_digest() {
        let a = Some([1u8; 32]);
        let b = Some([2u8; 32]);
        let g = exact_groups(&[b, a, None, b, a, Some([3u8; 32]), None]);
        assert_eq!(g, vec![vec![0, 3], vec![1, 4]]);
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hex(&sha256_file(&p).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
