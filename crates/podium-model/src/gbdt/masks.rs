//! Scoring by leaf masks (the QuickScorer method of Lucchese et al., SIGIR 2015), for forests
//! whose trees have at most 64 leaves.
//!
//! Number each tree's leaves left to right and give each row one bit per leaf, all set. Every
//! split node that sends the row right rules out the leaves of its left subtree, so clear their
//! bits; the leaf the row reaches is then the lowest bit still set. (Any leaf left of the exit
//! leaf lies in the left subtree of some node on the path where the row went right, so its bit is
//! cleared; the exit leaf is in no cleared subtree, since every node whose left subtree holds it
//! is on the path and sent the row left.) Which nodes send a row right no longer depends on the
//! path, so they can be found feature by feature with no data-dependent branching: for a
//! non-missing `x`, the numeric nodes on a feature that send `x` right are exactly those whose
//! *cut* (the least f32 that goes right, `next_up(threshold)`) is at most `x`, a prefix of the
//! feature's nodes sorted by cut. A missing input instead goes right at the nodes whose missing
//! direction is right, whose masks are combined per tree and feature ahead of time; the rare
//! nodes with another rule (categorical, LightGBM zero-as-missing) are tested one by one with the
//! same code as the tree walk. The decision at every node is the walk's, so the exit leaf is too;
//! leaf values are then summed in tree order in the library's precision, exactly as before.
//!
//! Two orders of work use this:
//! - A single row goes feature by feature: a binary search finds the prefix of nodes that send
//!   its value right (about half of them), and each clears its bits in its tree's mask.
//! - A group of `L` rows goes tree by tree: every numeric node of the tree is tested on all lanes
//!   with one compare and applied with one select, which the compiler turns into vector
//!   instructions, and the tree's masks for the group stay in registers. Testing every node
//!   rather than a prefix costs little here, since the prefix for the largest of `L` values is
//!   most of the list anyway, and it avoids read-modify-writes of masks in memory. Missing
//!   values need no separate pass: each feature's values are held three times, as given (a NaN
//!   fails every `x >= cut`, going left), with NaN read as +inf (passing every cut, going right),
//!   and with NaN read as +inf and every present value as -inf (for LightGBM's `threshold=inf`
//!   splits, which send only missing values right), and each node reads the copy matching its
//!   missing direction.
//!
//! What is and is not faster was measured on the standard 300-tree, 31-leaf model (Zen 4, one
//! thread); see the commit messages for the figures. Not kept: several copies of a single row's
//! masks to break store-to-load chains (no gain), a second accumulator per tree (slower),
//! AVX-512 variants (no faster than AVX2 on Zen 4), 128-bit masks (the compiler scalarises them).

use super::{Forest, Node, CATEGORICAL, FEATURE_MASK, LEAF, NAN_LEFT, ZERO_MISSING};
use crate::Columns;
use std::cell::Cell;
use std::fmt::Debug;
use std::ops::BitAnd;

/// One bit per leaf of a tree.
pub(crate) trait Mask:
    Copy + Debug + PartialEq + BitAnd<Output = Self> + Send + Sync
{
    /// Every leaf still possible.
    const ALL: Self;
    /// Leaves a tree may have.
    const BITS: usize;
    /// `ALL` without the bits `first..=last`.
    fn without(first: usize, last: usize) -> Self;
    /// The lowest set bit: the exit leaf's index within its tree.
    fn first(self) -> usize;
    /// A tree index and a mask, packed to load at once where they fit in a word.
    type Entry: Copy + Debug + PartialEq + Send + Sync;
    /// Packs `tree` and `mask`.
    fn entry(tree: u32, mask: Self) -> Self::Entry;
    /// The tree index and mask of an entry.
    fn open(entry: Self::Entry) -> (usize, Self);
    /// Takes this thread's scratch for single rows (`keep: None`), or puts it back.
    fn scratch(keep: Option<RowScratch<Self>>) -> RowScratch<Self>;
}

macro_rules! mask {
    ($t:ty, $entry:ty, $pack:expr, $open:expr) => {
        impl Mask for $t {
            type Entry = $entry;
            #[inline(always)]
            fn entry(tree: u32, mask: Self) -> $entry {
                $pack(tree, mask)
            }
            #[inline(always)]
            fn open(entry: $entry) -> (usize, Self) {
                $open(entry)
            }
            fn scratch(keep: Option<RowScratch<Self>>) -> RowScratch<Self> {
                thread_local! {
                    static SCRATCH: Cell<RowScratch<$t>> =
                        const { Cell::new(RowScratch::EMPTY) };
                }
                SCRATCH.replace(keep.unwrap_or(RowScratch::EMPTY))
            }
            const ALL: Self = <$t>::MAX;
            const BITS: usize = <$t>::BITS as usize;
            fn without(first: usize, last: usize) -> Self {
                debug_assert!(first <= last && last < <Self as Mask>::BITS);
                let span = last - first + 1;
                let ones = if span == <Self as Mask>::BITS {
                    <$t>::MAX
                } else {
                    ((1 as $t) << span) - 1
                };
                !(ones << first)
            }
            #[inline(always)]
            fn first(self) -> usize {
                self.trailing_zeros() as usize
            }
        }
    };
}
mask!(
    u32,
    u64,
    |tree, mask| (u64::from(tree) << 32) | u64::from(mask),
    |e: u64| ((e >> 32) as usize, e as u32)
);
mask!(u64, (u32, u64), |t, m| (t, m), |(t, m): (u32, u64)| (
    t as usize, m
));

/// A running sum of leaf values in a library's precision.
pub(crate) trait Accumulator: Copy {
    /// The sum with `leaf` added.
    fn plus(self, leaf: f64) -> Self;
}

impl Accumulator for f64 {
    #[inline(always)]
    fn plus(self, leaf: f64) -> f64 {
        self + leaf
    }
}

impl Accumulator for f32 {
    #[inline(always)]
    fn plus(self, leaf: f64) -> f32 {
        // XGBoost leaves are f32, so the narrowing is exact.
        self + leaf as f32
    }
}

/// A numeric split node as a group of rows tests it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TreeNode<M> {
    /// The least f32 the node sends right.
    cut: f32,
    /// Index of the group's values to compare: `COPIES * slot + copy`, where copy [`AS_IS`]
    /// serves nodes that send missing values left, [`NAN_HIGH`] those that send them right,
    /// and [`ONLY_NAN`] those that send every present value left and missing ones right.
    values: u32,
    /// The tree's leaves outside the node's left subtree.
    mask: M,
}

/// A forest's split nodes arranged for leaf-mask scoring, each with the bits it clears.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeafMasks<M: Mask> {
    /// Each tree's leaf values left to right, padded with zeros to `M::BITS` per tree, so
    /// that the exit leaf is found without a bounds check. (A mask is never empty: the
    /// rightmost leaf is in no node's left subtree. Its lowest bit is below `M::BITS`, and
    /// masking the index with `M::BITS - 1` changes nothing but lets the compiler drop the
    /// check.)
    leaf_table: Vec<f64>,
    /// Per tree `t`, its numeric nodes are `tree_nodes[tree_starts[t]..tree_starts[t + 1]]`.
    tree_starts: Vec<u32>,
    /// Per feature slot, bit `c` set when some node reads copy `c` of a group's values (the
    /// values as given are always filled in, for the one-by-one nodes).
    copies: Vec<u8>,
    tree_nodes: Vec<TreeNode<M>>,
    /// Per tree `t`, `special[special_starts[t]..special_starts[t + 1]]` are the nodes tested
    /// one by one with `Forest::goes_left` (categorical, LightGBM zero-as-missing).
    special_starts: Vec<u32>,
    special: Vec<(M, Node)>,
    /// Per feature slot `f`, its numeric nodes are `cuts[starts[f]..starts[f + 1]]` (and the
    /// same range of `entries`), by ascending cut: those that send a present value `x`
    /// right are the prefix with `cut <= x`.
    starts: Vec<u32>,
    cuts: Vec<f32>,
    /// Tree and mask of each node in `cuts`.
    entries: Vec<M::Entry>,
    /// Per feature slot, `missing[missing_starts[f]..missing_starts[f + 1]]` are the (tree,
    /// combined mask) pairs that a missing value clears at the numeric nodes sending it right.
    missing_starts: Vec<u32>,
    missing: Vec<(u32, M)>,
}

impl<M: Mask> LeafMasks<M> {
    /// Arranges `forest` (bound to its feature slots), or `None` when a tree has more leaves
    /// than `M` has bits.
    pub(crate) fn new(forest: &Forest) -> Option<Self> {
        let width = forest.num_features;
        // The leftmost and rightmost leaf under a child reference: leaves are laid out left to
        // right, so a subtree's leaves are the contiguous range between the two.
        let edge = |mut at: u32, right: bool| -> u32 {
            while at & LEAF == 0 {
                let n = &forest.nodes[at as usize];
                at = if right { n.right } else { n.left };
            }
            at & !LEAF
        };
        let mut scorer = LeafMasks {
            leaf_table: Vec::with_capacity(forest.roots.len() * M::BITS),
            tree_starts: vec![0],
            copies: vec![0; width],
            tree_nodes: Vec::new(),
            special_starts: vec![0],
            special: Vec::new(),
            starts: vec![0],
            cuts: Vec::new(),
            entries: Vec::new(),
            missing_starts: vec![0],
            missing: Vec::new(),
        };
        let mut by_feature: Vec<Vec<(f32, u32, M)>> = vec![Vec::new(); width];
        let mut missing: Vec<Vec<(u32, M)>> = vec![Vec::new(); width];
        let mut stack = Vec::new();
        for (tree, &root) in forest.roots.iter().enumerate() {
            let (base, last) = (edge(root, false), edge(root, true));
            if (last - base) as usize >= M::BITS {
                return None;
            }
            let leaves = &forest.leaves[base as usize..=last as usize];
            scorer.leaf_table.extend(leaves);
            scorer
                .leaf_table
                .extend(std::iter::repeat_n(0.0, M::BITS - leaves.len()));
            let tree = tree as u32;
            stack.clear();
            if root & LEAF == 0 {
                stack.push(root);
            }
            while let Some(at) = stack.pop() {
                let node = forest.nodes[at as usize];
                for child in [node.right, node.left] {
                    if child & LEAF == 0 {
                        stack.push(child);
                    }
                }
                let mask = M::without(
                    (edge(node.left, false) - base) as usize,
                    (edge(node.left, true) - base) as usize,
                );
                let slot = node.feature & FEATURE_MASK;
                let flags = node.feature & !FEATURE_MASK;
                let missing_right = flags & NAN_LEFT == 0;
                if flags & (ZERO_MISSING | CATEGORICAL) != 0 {
                    scorer.special.push((mask, node));
                    continue;
                }
                // `goes_left` sends a present `x` right iff `!(x <= t)`.
                let t = node.threshold;
                let (cut, copy) = if t == f32::INFINITY {
                    // Every present value goes left, +inf included; LightGBM writes such nodes
                    // (threshold `inf`) to split missing values off. With a group, compare the
                    // copy where only a missing value passes +inf.
                    (f32::INFINITY, ONLY_NAN)
                } else if t.is_nan() {
                    // Every present value goes right.
                    (f32::NEG_INFINITY, AS_IS)
                } else {
                    // `x > t` iff `x >= next_up(t)`; for t = -inf that is -f32::MAX.
                    (t.next_up(), AS_IS)
                };
                let copy = if missing_right && copy == AS_IS {
                    NAN_HIGH
                } else {
                    copy
                };
                // A node that sends everything left clears nothing.
                if missing_right || t != f32::INFINITY {
                    scorer.copies[slot as usize] |= 1 << copy;
                    scorer.tree_nodes.push(TreeNode {
                        cut,
                        values: COPIES as u32 * slot + copy as u32,
                        mask,
                    });
                }
                if t != f32::INFINITY {
                    by_feature[slot as usize].push((cut, tree, mask));
                }
                if missing_right {
                    let list = &mut missing[slot as usize];
                    match list.last_mut() {
                        // A tree's nodes are visited together, so combining with the last
                        // entry suffices.
                        Some((t, m)) if *t == tree => *m = *m & mask,
                        _ => list.push((tree, mask)),
                    }
                }
            }
            scorer.tree_starts.push(scorer.tree_nodes.len() as u32);
            scorer.special_starts.push(scorer.special.len() as u32);
        }
        for mut nodes in by_feature {
            nodes.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (cut, tree, mask) in nodes {
                scorer.cuts.push(cut);
                scorer.entries.push(M::entry(tree, mask));
            }
            scorer.starts.push(scorer.cuts.len() as u32);
        }
        for list in missing {
            scorer.missing.extend(list);
            scorer.missing_starts.push(scorer.missing.len() as u32);
        }
        Some(scorer)
    }

    /// Scores row `row` of `columns` (read through `reads`), handing each tree's exit leaf
    /// value, in tree order, to `add`.
    #[inline(always)]
    pub(crate) fn row(
        &self,
        forest: &Forest,
        columns: &Columns<'_>,
        reads: &[u32],
        row: usize,
        add: impl FnMut(f64),
    ) {
        // Working memory is kept per thread between calls: allocating it costs about a tenth of
        // scoring a row. (Taken out rather than borrowed in place, so that no closure stands
        // between this code and the caller compiled for the CPU's vector extensions.)
        let mut scratch = M::scratch(None);
        self.row_with(forest, columns, reads, row, &mut scratch, add);
        M::scratch(Some(scratch));
    }

    #[inline(always)]
    fn row_with(
        &self,
        forest: &Forest,
        columns: &Columns<'_>,
        reads: &[u32],
        row: usize,
        scratch: &mut RowScratch<M>,
        mut add: impl FnMut(f64),
    ) {
        let RowScratch { state, xs, counts } = scratch;
        let trees = self.num_trees();
        state.clear();
        state.resize(trees, M::ALL);
        // A slice, not the Vec: its pointer and length then stay in registers.
        let state = &mut state[..];
        // First every feature's value and prefix length: the searches are independent, so the
        // processor overlaps them.
        xs.clear();
        counts.clear();
        for (slot, &column) in reads.iter().enumerate() {
            let x = columns.column(column as usize)[row];
            let cuts = &self.cuts[self.starts[slot] as usize..self.starts[slot + 1] as usize];
            // A missing value passes no cut.
            counts.push(cuts.partition_point(|&c| c <= x) as u32);
            xs.push(x);
        }
        for (slot, (&x, &count)) in xs.iter().zip(counts.iter()).enumerate() {
            let start = self.starts[slot] as usize;
            let end = start + count as usize;
            // Unrolled by hand: the compiler does not, and the loop is most of the work.
            let (quads, rest) = self.entries[start..end].as_chunks::<4>();
            for &[e0, e1, e2, e3] in quads {
                let ((t0, m0), (t1, m1)) = (M::open(e0), M::open(e1));
                let ((t2, m2), (t3, m3)) = (M::open(e2), M::open(e3));
                state[t0] = state[t0] & m0;
                state[t1] = state[t1] & m1;
                state[t2] = state[t2] & m2;
                state[t3] = state[t3] & m3;
            }
            for &e in rest {
                let (t, m) = M::open(e);
                state[t] = state[t] & m;
            }
            if x.is_nan() {
                let range =
                    self.missing_starts[slot] as usize..self.missing_starts[slot + 1] as usize;
                for &(t, m) in &self.missing[range] {
                    state[t as usize] = state[t as usize] & m;
                }
            }
        }
        if !self.special.is_empty() {
            for (tree, m) in state.iter_mut().enumerate() {
                let range =
                    self.special_starts[tree] as usize..self.special_starts[tree + 1] as usize;
                for (mask, node) in &self.special[range] {
                    let x = xs[(node.feature & FEATURE_MASK) as usize];
                    if !forest.goes_left(node, x) {
                        *m = *m & *mask;
                    }
                }
            }
        }
        for (leaves, m) in self.leaf_table.chunks_exact(M::BITS).zip(state.iter()) {
            add(leaves[m.first() & (M::BITS - 1)]);
        }
    }

    /// Number of trees.
    fn num_trees(&self) -> usize {
        self.tree_starts.len() - 1
    }

    /// Scores rows `first..first + rows` of `columns` (read through `reads`), `rows <= L`,
    /// adding each tree's exit leaf value, in tree order, to the row's lane of `acc` (lanes at
    /// and past `rows` repeat row `first`).
    #[inline(always)]
    pub(crate) fn group<const L: usize, A: Accumulator>(
        &self,
        forest: &Forest,
        columns: &Columns<'_>,
        reads: &[u32],
        (first, rows): (usize, usize),
        scratch: &mut GroupScratch<L>,
        acc: &mut [A; L],
    ) {
        let xs = &mut scratch.xs;
        // Sized once per call; only the copies some node reads are filled in.
        xs.resize(COPIES * reads.len(), Aligned([0.0; L]));
        let slots = xs.chunks_exact_mut(COPIES).zip(reads).zip(&self.copies);
        for ((xs, &column), &copies) in slots {
            let values = &columns.column(column as usize)[first..first + rows];
            // Unused lanes repeat the first row.
            let mut x = [values[0]; L];
            x[..rows].copy_from_slice(values);
            if copies & (1 << NAN_HIGH) != 0 {
                xs[NAN_HIGH].0 = x.map(|v| if v.is_nan() { f32::INFINITY } else { v });
            }
            if copies & (1 << ONLY_NAN) != 0 {
                xs[ONLY_NAN].0 = x.map(|v| {
                    if v.is_nan() {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    }
                });
            }
            xs[AS_IS].0 = x;
        }
        // A block of trees' masks, then their sums: with both in one loop the compiler splits
        // the masks across registers to suit the sums, and the node loop runs twice as long.
        let mut masks = [Aligned([M::ALL; L]); TREE_BLOCK];
        let tables = self.leaf_table.chunks_exact(M::BITS * TREE_BLOCK);
        for (block, tables) in tables.enumerate() {
            let trees = block * TREE_BLOCK..(block + 1) * TREE_BLOCK;
            for (tree, m) in trees.zip(masks.iter_mut()) {
                m.0 = self.tree_masks(forest, tree, xs);
            }
            for (m, leaves) in masks.iter().zip(tables.chunks_exact(M::BITS)) {
                for (a, m) in acc.iter_mut().zip(&m.0) {
                    *a = a.plus(leaves[m.first() & (M::BITS - 1)]);
                }
            }
        }
        let done = self.num_trees() / TREE_BLOCK * TREE_BLOCK;
        let tables = self.leaf_table[done * M::BITS..].chunks_exact(M::BITS);
        for (tree, leaves) in (done..self.num_trees()).zip(tables) {
            let m = self.tree_masks(forest, tree, xs);
            for (a, m) in acc.iter_mut().zip(&m) {
                *a = a.plus(leaves[m.first() & (M::BITS - 1)]);
            }
        }
    }

    /// The leaves of tree `tree` still possible for each lane of `xs`.
    #[inline(always)]
    fn tree_masks<const L: usize>(
        &self,
        forest: &Forest,
        tree: usize,
        xs: &[Aligned<[f32; L]>],
    ) -> [M; L] {
        let mut m = [M::ALL; L];
        let nodes = self.tree_starts[tree] as usize..self.tree_starts[tree + 1] as usize;
        for &TreeNode { cut, values, mask } in &self.tree_nodes[nodes] {
            let x = xs[values as usize].0;
            for (m, v) in m.iter_mut().zip(x) {
                *m = *m & if v >= cut { mask } else { M::ALL };
            }
        }
        let special = self.special_starts[tree] as usize..self.special_starts[tree + 1] as usize;
        for (mask, node) in &self.special[special] {
            let x = &xs[COPIES * (node.feature & FEATURE_MASK) as usize + AS_IS].0;
            for (m, &v) in m.iter_mut().zip(x) {
                if !forest.goes_left(node, v) {
                    *m = *m & *mask;
                }
            }
        }
        m
    }
}

/// Trees whose masks a group computes before summing their leaves.
const TREE_BLOCK: usize = 16;

/// Copies of a group's values per feature slot, each serving a kind of node (see `TreeNode`).
const COPIES: usize = 3;
/// The values as given: a missing value fails every `x >= cut`.
const AS_IS: usize = 0;
/// Missing values read as +inf, passing every cut.
const NAN_HIGH: usize = 1;
/// Missing values read as +inf and present ones as -inf: only missing values pass a cut of +inf.
const ONLY_NAN: usize = 2;

/// A group's values or masks for every lane, on cache lines of their own (a vector load that
/// straddles two lines costs about twice as much).
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub(crate) struct Aligned<T>(T);

/// Working memory of [`LeafMasks::group`], kept between the groups of a call.
#[derive(Debug)]
pub(crate) struct GroupScratch<const L: usize> {
    /// Per feature slot, its values in each of the `COPIES`.
    xs: Vec<Aligned<[f32; L]>>,
}

impl<const L: usize> Default for GroupScratch<L> {
    fn default() -> Self {
        Self { xs: Vec::new() }
    }
}

/// Working memory of [`LeafMasks::row`], kept between rows of one call.
#[derive(Debug)]
pub(crate) struct RowScratch<M> {
    /// Leaves still possible, per tree.
    state: Vec<M>,
    /// The row's value of each feature slot.
    xs: Vec<f32>,
    /// Length of each feature slot's prefix of nodes to apply.
    counts: Vec<u32>,
}

impl<M> RowScratch<M> {
    const EMPTY: Self = Self {
        state: Vec::new(),
        xs: Vec::new(),
        counts: Vec::new(),
    };
}

#[cfg(test)]
mod tests {
    use super::super::{
        next_down, Child, Engine, GbdtModel, Isa, Library, RawSplit, RawTree, SplitTest, Sum,
        LIGHTGBM_ZERO_THRESHOLD,
    };
    use super::*;
    use crate::{Link, Runtime};
    use std::path::PathBuf;

    /// A small deterministic generator, so a failure reproduces.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick(&mut self, values: &[f32]) -> f32 {
            values[self.below(values.len())]
        }
    }

    /// Values on and around every kind of threshold the parsers produce.
    fn edge_values() -> Vec<f32> {
        let mut v = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(1),
            LIGHTGBM_ZERO_THRESHOLD,
            -LIGHTGBM_ZERO_THRESHOLD,
            next_down(-LIGHTGBM_ZERO_THRESHOLD),
            1e-36,
            0.1,
            next_down(0.1),
            0.5,
            1.0,
            2.0,
            3.0,
            33.0,
            -1.0,
            -0.5,
            1.9,
        ];
        for i in -8..=8 {
            v.push(i as f32 * 0.25);
        }
        let more: Vec<f32> = v
            .iter()
            .filter(|x| x.is_finite())
            .flat_map(|&x| [next_down(x), x.next_up()])
            .collect();
        v.extend(more);
        v
    }

    /// A random tree with `leaves` leaves over `features` features.
    fn random_tree(rng: &mut SplitMix, leaves: usize, features: usize, special: bool) -> RawTree {
        let values = edge_values();
        let mut tree = RawTree {
            splits: Vec::new(),
            leaves: Vec::new(),
            root: Child::Leaf(0),
        };
        // Splits `n` leaves into a subtree; returns its root.
        fn grow(
            rng: &mut SplitMix,
            tree: &mut RawTree,
            n: usize,
            features: usize,
            special: bool,
            values: &[f32],
        ) -> Child {
            if n == 1 {
                tree.leaves.push((rng.below(2001) as f64 - 1000.0) / 256.0);
                return Child::Leaf(tree.leaves.len() - 1);
            }
            // Lopsided splits too, as LightGBM's leaf-wise growth makes.
            let left = if rng.below(2) == 0 {
                1 + rng.below(n - 1)
            } else if rng.below(2) == 0 {
                1
            } else {
                n - 1
            };
            let test = match rng.below(if special { 10 } else { 8 }) {
                8 => SplitTest::Category {
                    bits: (0..1 + rng.below(3)).map(|_| rng.next() as u32).collect(),
                },
                k => SplitTest::Numeric {
                    threshold: rng.pick(values),
                    nan_left: rng.below(2) == 0,
                    zero_missing: special && k == 9,
                },
            };
            let at = tree.splits.len();
            tree.splits.push(RawSplit {
                feature: rng.below(features),
                test,
                left: Child::Leaf(0),
                right: Child::Leaf(0),
            });
            let l = grow(rng, tree, left, features, special, values);
            let r = grow(rng, tree, n - left, features, special, values);
            tree.splits[at].left = l;
            tree.splits[at].right = r;
            Child::Split(at)
        }
        tree.root = grow(rng, &mut tree, leaves, features, special, &values);
        tree
    }

    fn model(trees: &[RawTree], features: usize, sum: Sum) -> GbdtModel {
        let mut forest = Forest::new(features).unwrap();
        for t in trees {
            forest.push(t).unwrap();
        }
        GbdtModel {
            source: PathBuf::from("random"),
            library: Library::Lightgbm,
            feature_names: None,
            generated_names: false,
            objective: String::new(),
            link: Link::Identity,
            sum,
            forest,
        }
    }

    /// Scores `columns` in batches of `batch` rows.
    fn scores(runtime: &dyn Runtime, columns: &[Vec<f32>], batch: usize) -> Vec<u32> {
        let rows = columns[0].len();
        let mut all = Vec::new();
        let mut start = 0;
        while start < rows {
            let end = (start + batch).min(rows);
            let slices: Vec<&[f32]> = columns.iter().map(|c| &c[start..end]).collect();
            let mut out = vec![f32::NAN; end - start];
            runtime
                .predict_raw(&Columns::new(&slices, end - start).unwrap(), &mut out)
                .unwrap();
            all.extend(out.iter().map(|v| v.to_bits()));
            start = end;
        }
        all
    }

    /// Leaf masks and the tree walk agree bit for bit on random forests and edge-case inputs.
    fn agree(max_leaves: usize, special: bool, expect: fn(&Engine) -> bool, seed: u64) {
        let mut rng = SplitMix(seed);
        let values = edge_values();
        for round in 0..6 {
            let features = 1 + rng.below(6);
            let trees: Vec<RawTree> = (0..1 + rng.below(40))
                .map(|_| {
                    let leaves = 1 + rng.below(max_leaves);
                    random_tree(&mut rng, leaves, features, special)
                })
                .collect();
            let sum = if round % 2 == 0 {
                Sum::Double {
                    divisor: 1.0 + rng.below(3) as f64,
                    scale: 0.5 + rng.below(3) as f64,
                }
            } else {
                Sum::Single {
                    base_margin: rng.pick(&values[13..]),
                }
            };
            let model = model(&trees, features, sum);
            let names: Vec<String> = (0..features).map(|i| format!("x{i}")).collect();
            let mut runtime = model.into_runtime(&names).unwrap();
            assert!(expect(&runtime.engine), "{:?}", runtime.engine);
            let rows = 301;
            let columns: Vec<Vec<f32>> = (0..features)
                .map(|_| (0..rows).map(|_| rng.pick(&values)).collect())
                .collect();
            let want = scores(&runtime.walking(), &columns, rows);
            // The loops as compiled for this CPU and for the baseline target.
            for isa in [runtime.isa, Isa::Baseline] {
                runtime.isa = isa;
                // Single rows, groups of 16 (full or not), of 32 or 64 (full or not).
                for batch in [1, 3, 4, 16, 17, 48, 64, 100, rows] {
                    assert_eq!(
                        scores(&runtime, &columns, batch),
                        want,
                        "seed {seed} round {round} {isa:?} batch {batch}"
                    );
                }
            }
        }
    }

    #[test]
    fn masks_match_the_walk_on_small_trees() {
        for seed in 0..6 {
            agree(32, false, |e| matches!(e, Engine::Masks32(_)), seed);
        }
    }

    #[test]
    fn masks_match_the_walk_with_categorical_and_zero_missing_nodes() {
        for seed in 100..106 {
            agree(32, true, |e| matches!(e, Engine::Masks32(_)), seed);
        }
    }

    #[test]
    fn masks_match_the_walk_on_larger_trees() {
        let wide = |e: &Engine| matches!(e, Engine::Masks32(_) | Engine::Masks64(_));
        agree(64, true, wide, 200);
        agree(128, true, |_| true, 300);
        agree(400, true, |_| true, 400);
    }

    #[test]
    fn mask_widths_follow_the_largest_tree() {
        let mut rng = SplitMix(9);
        for (leaves, expect) in [(1, 32), (32, 32), (33, 64), (64, 64), (65, 0), (300, 0)] {
            let tree = random_tree(&mut rng, leaves, 3, true);
            let small = random_tree(&mut rng, 2, 3, false);
            let runtime = model(&[small, tree], 3, Sum::Single { base_margin: 0.0 })
                .into_runtime(&["a".into(), "b".into(), "c".into()])
                .unwrap();
            let width = match runtime.engine {
                Engine::Masks32(_) => 32,
                Engine::Masks64(_) => 64,
                Engine::Walk => 0,
            };
            assert_eq!(width, expect, "{leaves} leaves");
        }
    }

    #[test]
    fn without_clears_exactly_the_range() {
        assert_eq!(u32::without(0, 31), 0);
        assert_eq!(u32::without(0, 0), !1);
        assert_eq!(u32::without(3, 5), !0b111000);
        assert_eq!(u64::without(63, 63), !(1 << 63));
        assert_eq!(u64::without(1, 63), 1);
        assert_eq!(u64::without(5, 5).first(), 0);
        assert_eq!(u32::without(0, 30).first(), 31);
    }
}
