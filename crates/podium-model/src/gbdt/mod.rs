//! Exact runtimes for gradient-boosted tree ensembles trained by LightGBM and XGBoost.
//!
//! Both libraries' model files are parsed into one compact form, a `Forest`: every split node of
//! every tree in one flat array of 16-byte nodes laid out depth-first (a root-to-leaf path stays in
//! few cache lines), every leaf value in another. Each library's decision rule is rewritten at load
//! into one test on the f32 input, "left iff `x <= threshold`", plus the direction a missing value
//! takes; the rewrite is exact for every f32 input (see [`lightgbm`] and [`xgboost`] for why
//! it holds), so Podium follows the training library's path through every tree, including for missing
//! values and values that sit on or next to a threshold. Sums are accumulated in each library's own
//! precision and tree order, so outputs agree to the last few bits, not merely within a tolerance.
//!
//! Two engines score a bound model, both making exactly the decisions described above:
//! - Leaf masks (`masks.rs`, the QuickScorer method), for forests whose trees have at most 64
//!   leaves, LightGBM's and XGBoost's usual sizes: every node that sends a row right clears its
//!   left subtree's leaves from a per-tree bit mask, and the exit leaf is the lowest bit left.
//!   A single row applies only the nodes its values pass, found by binary search in each
//!   feature's nodes sorted by threshold; groups of up to 64 rows test every node on all rows
//!   at once with vector instructions (AVX2 where the CPU has it, detected at run time). On the
//!   standard 300-tree model this is about 10x faster than the walk at batch 100 and 4 to 5x at
//!   batch 1 (see `docs/PERFORMANCE.md`).
//! - The tree walk, for larger trees: a block of rows' inputs (only the features the trees test)
//!   is copied into a small feature-major buffer and run through one tree at a time, so a tree's
//!   nodes stay in cache while the block uses them; within the block, groups of rows walk each
//!   tree in lockstep so their independent memory loads overlap.
//!
//! This module does not support multiclass or multi-target models, LightGBM linear trees,
//! XGBoost categorical splits, DART boosters or objectives whose link Podium's manifest cannot
//! express (exp, sqrt); those are refused at load with [`ModelError::Unsupported`].

pub mod lightgbm;
mod masks;
pub mod xgboost;

use crate::{Columns, Link, ModelError, Runtime};
use masks::{GroupScratch, LeafMasks, Mask};
use std::path::{Path, PathBuf};

/// Set in a child reference when it names a leaf rather than a split node.
const LEAF: u32 = 1 << 31;
/// Low bits of `Node::feature` hold the input column; the top bits hold the flags below.
const FEATURE_MASK: u32 = (1 << 24) - 1;
/// Most features (and inputs) a model may have: what fits below the flag bits.
pub(crate) const MAX_FEATURES: usize = FEATURE_MASK as usize + 1;
/// A missing (NaN) input goes left.
const NAN_LEFT: u32 = 1 << 31;
/// LightGBM "zero as missing": inputs within [`LIGHTGBM_ZERO_THRESHOLD`] of zero count as missing.
const ZERO_MISSING: u32 = 1 << 30;
/// LightGBM categorical split: `threshold`'s bits index `Forest::cat_ranges`.
const CATEGORICAL: u32 = 1 << 29;

/// LightGBM's `kZeroThreshold`, declared `const double kZeroThreshold = 1e-35f;`: a float literal
/// widened to double, so `|x| <= kZeroThreshold` on a widened f32 is exactly `|x| <= 1e-35f32`.
pub(crate) const LIGHTGBM_ZERO_THRESHOLD: f32 = 1e-35;

/// Rows scored together through each tree; large enough to amortise pulling a tree into cache,
/// small enough that the block's accumulators and input values stay in L1.
const BLOCK: usize = 64;
/// Rows that walk a tree together (see `Forest::walk`).
const LANES: usize = 8;

/// Why a parser gave up; turned into a [`ModelError`] naming the file.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The file is not a well-formed model of its kind.
    Parse(String),
    /// The file is well formed but uses something this runtime does not implement.
    Unsupported(String),
}

impl Fail {
    fn into_error(self, path: &Path) -> ModelError {
        match self {
            Fail::Parse(message) => ModelError::parse(path, message),
            Fail::Unsupported(message) => {
                ModelError::Unsupported(format!("{}: {message}", path.display()))
            }
        }
    }
}

impl From<String> for Fail {
    fn from(message: String) -> Self {
        Fail::Parse(message)
    }
}

/// Reads a model file as UTF-8 text; bytes that are not UTF-8 are a parse error, not an I/O one.
fn read_text(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        ModelError::parse(
            path,
            format!(
                "not UTF-8 text (byte {}): not a model file",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The largest f32 below `x` (NaN and -inf map to themselves).
pub(crate) fn next_down(x: f32) -> f32 {
    if x.is_nan() || x == f32::NEG_INFINITY {
        x
    } else if x == 0.0 {
        -f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() - 1)
    } else {
        f32::from_bits(x.to_bits() + 1)
    }
}

/// The test at one split node, in Podium's normalised form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SplitTest {
    /// Left iff `x <= threshold`. A NaN input goes left iff `nan_left`; with `zero_missing`, so
    /// does any input within [`LIGHTGBM_ZERO_THRESHOLD`] of zero. A NaN threshold sends every
    /// non-missing input right (it is how "x < -inf" is written).
    Numeric {
        /// Largest f32 that goes left.
        threshold: f32,
        /// Direction of a missing input.
        nan_left: bool,
        /// Whether values near zero count as missing (LightGBM `missing_type=Zero`).
        zero_missing: bool,
    },
    /// LightGBM categorical split: left iff `x` is not NaN, truncates to a non-negative integer
    /// `c`, and bit `c` of `bits` is set.
    Category {
        /// Bitset of the categories that go left, 32 per word.
        bits: Vec<u32>,
    },
}

/// A child reference in a [`RawTree`], in the model file's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Child {
    /// Index into `RawTree::splits`.
    Split(usize),
    /// Index into `RawTree::leaves`.
    Leaf(usize),
}

/// One split node as a parser read it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawSplit {
    /// Feature index in the model file's numbering.
    pub feature: usize,
    /// The normalised test.
    pub test: SplitTest,
    /// Where inputs that pass the test go.
    pub left: Child,
    /// Where the others go.
    pub right: Child,
}

/// One tree as a parser read it, before validation and layout.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawTree {
    /// Split nodes.
    pub splits: Vec<RawSplit>,
    /// Leaf values.
    pub leaves: Vec<f64>,
    /// The root: a split, or a leaf for a constant tree.
    pub root: Child,
}

/// A split node in the flat layout. 16 bytes, four to a cache line.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Node {
    /// Numeric: the largest f32 that goes left. Categorical: the bits of an index into
    /// `Forest::cat_ranges`.
    threshold: f32,
    /// Input column (low 24 bits) and flags (`NAN_LEFT`, `ZERO_MISSING`, `CATEGORICAL`).
    feature: u32,
    /// Left child: a node index, or `LEAF | leaf index`.
    left: u32,
    /// Right child, encoded like `left`.
    right: u32,
}

/// Every tree of an ensemble in one flat layout, validated: each tree is a proper tree (no
/// cycles, no shared nodes, every reference in range), so a walk always ends at a leaf. A tree's
/// leaves are contiguous in `leaves`, left to right, which leaf-mask scoring relies on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Forest {
    nodes: Vec<Node>,
    /// One child reference per tree, in the order the library sums them.
    roots: Vec<u32>,
    leaves: Vec<f64>,
    /// `(start, len)` of each categorical split's bitset in `cat_words`.
    cat_ranges: Vec<(u32, u32)>,
    cat_words: Vec<u32>,
    /// Features in the model file's numbering; split features are below this.
    num_features: usize,
}

impl Forest {
    /// An empty forest over `num_features` features.
    pub(crate) fn new(num_features: usize) -> Result<Self, Fail> {
        if num_features > MAX_FEATURES {
            return Err(Fail::Unsupported(format!(
                "the model declares {num_features} features; at most {MAX_FEATURES} are supported"
            )));
        }
        Ok(Self {
            nodes: Vec::new(),
            roots: Vec::new(),
            leaves: Vec::new(),
            cat_ranges: Vec::new(),
            cat_words: Vec::new(),
            num_features,
        })
    }

    /// Number of trees.
    pub(crate) fn num_trees(&self) -> usize {
        self.roots.len()
    }

    /// Validates `tree` and appends it, split nodes in depth-first (pre-)order. The error says
    /// what was wrong in the tree's own numbering; the caller adds the file and tree index. On
    /// error the forest is left as it was.
    pub(crate) fn push(&mut self, tree: &RawTree) -> Result<(), String> {
        let marks = (
            self.nodes.len(),
            self.leaves.len(),
            self.cat_ranges.len(),
            self.cat_words.len(),
        );
        let result = self.lay_out(tree);
        match result {
            Ok(root) => {
                self.roots.push(root);
                Ok(())
            }
            Err(e) => {
                self.nodes.truncate(marks.0);
                self.leaves.truncate(marks.1);
                self.cat_ranges.truncate(marks.2);
                self.cat_words.truncate(marks.3);
                Err(e)
            }
        }
    }

    fn lay_out(&mut self, tree: &RawTree) -> Result<u32, String> {
        let in_range = |child: Child| -> Result<(), String> {
            match child {
                Child::Split(i) if i >= tree.splits.len() => Err(format!(
                    "a child refers to split node {i}, but the tree has {}",
                    tree.splits.len()
                )),
                Child::Leaf(i) if i >= tree.leaves.len() => Err(format!(
                    "a child refers to leaf {i}, but the tree has {}",
                    tree.leaves.len()
                )),
                _ => Ok(()),
            }
        };
        in_range(tree.root)?;
        for (i, s) in tree.splits.iter().enumerate() {
            in_range(s.left)?;
            in_range(s.right)?;
            if s.feature >= self.num_features {
                return Err(format!(
                    "split node {i} tests feature {}, but the model has {} features",
                    s.feature, self.num_features
                ));
            }
        }
        if self.nodes.len() + tree.splits.len() >= LEAF as usize
            || self.leaves.len() + tree.leaves.len() >= LEAF as usize
        {
            return Err("too many nodes for one model".into());
        }

        // Iterative (a garbled file may describe a very deep "tree"), refusing any node reached
        // twice: that is what keeps every later walk finite. Pushing the right child before the
        // left lays each left subtree out directly after its parent, and appends the leaves
        // left to right.
        let mut seen_split = vec![false; tree.splits.len()];
        let mut seen_leaf = vec![false; tree.leaves.len()];
        let mut root = 0;
        let mut stack: Vec<(Option<(usize, bool)>, Child)> = vec![(None, tree.root)];
        while let Some((parent, child)) = stack.pop() {
            let placed = match child {
                Child::Leaf(i) => {
                    if std::mem::replace(&mut seen_leaf[i], true) {
                        return Err(format!("leaf {i} is reached twice"));
                    }
                    self.leaves.push(tree.leaves[i]);
                    LEAF | (self.leaves.len() - 1) as u32
                }
                Child::Split(i) => {
                    if std::mem::replace(&mut seen_split[i], true) {
                        return Err(format!("split node {i} is reached twice (a cycle)"));
                    }
                    let s = &tree.splits[i];
                    let (threshold, flags) = match &s.test {
                        SplitTest::Numeric {
                            threshold,
                            nan_left,
                            zero_missing,
                        } => {
                            let mut flags = 0;
                            if *nan_left {
                                flags |= NAN_LEFT;
                            }
                            if *zero_missing {
                                flags |= ZERO_MISSING;
                            }
                            (*threshold, flags)
                        }
                        SplitTest::Category { bits } => {
                            let range = (self.cat_words.len() as u32, bits.len() as u32);
                            self.cat_words.extend_from_slice(bits);
                            self.cat_ranges.push(range);
                            let index = (self.cat_ranges.len() - 1) as u32;
                            (f32::from_bits(index), CATEGORICAL)
                        }
                    };
                    self.nodes.push(Node {
                        threshold,
                        feature: s.feature as u32 | flags,
                        left: 0,
                        right: 0,
                    });
                    let at = self.nodes.len() - 1;
                    stack.push((Some((at, true)), s.right));
                    stack.push((Some((at, false)), s.left));
                    at as u32
                }
            };
            match parent {
                None => root = placed,
                Some((at, false)) => self.nodes[at].left = placed,
                Some((at, true)) => self.nodes[at].right = placed,
            }
        }
        Ok(root)
    }

    /// Which file features some split tests.
    fn used_features(&self) -> Vec<bool> {
        let mut used = vec![false; self.num_features];
        for n in &self.nodes {
            used[(n.feature & FEATURE_MASK) as usize] = true;
        }
        used
    }

    /// The same forest reading feature slot `slots[f]` (one of `width`) wherever it read file
    /// feature `f`.
    fn bind(&self, slots: &[u32], width: usize) -> Forest {
        let mut bound = self.clone();
        for n in &mut bound.nodes {
            let f = (n.feature & FEATURE_MASK) as usize;
            n.feature = (n.feature & !FEATURE_MASK) | slots[f];
        }
        bound.num_features = width;
        bound
    }

    /// The leaves (as `LEAF`-tagged references) that block rows `first..first + lanes` reach in
    /// the tree at `root`; entries past `lanes` are meaningless.
    ///
    /// The rows walk the tree in lockstep: each level advances every lane once, so the lanes'
    /// independent load-compare chains overlap instead of each row waiting on its own memory
    /// latency, and a lane that has reached its leaf idles on a select rather than a branch.
    #[inline(always)]
    fn walk(&self, root: u32, block: &[[f32; BLOCK]], first: usize, lanes: usize) -> [u32; LANES] {
        let mut at = [root; LANES];
        if root & LEAF != 0 {
            return at;
        }
        loop {
            let mut open = false;
            for (k, a) in at.iter_mut().enumerate().take(lanes) {
                let live = *a & LEAF == 0;
                // A finished lane re-reads node 0 and discards the result.
                let node = &self.nodes[if live { *a as usize } else { 0 }];
                // Masking proves the row index in range; it never changes it (first + k < BLOCK).
                let x = block[(node.feature & FEATURE_MASK) as usize][(first + k) % BLOCK];
                let next = if self.goes_left(node, x) {
                    node.left
                } else {
                    node.right
                };
                *a = if live { next } else { *a };
                open |= live;
            }
            if !open {
                return at;
            }
        }
    }

    /// Whether input `x` goes to the left child of `node`.
    #[inline(always)]
    fn goes_left(&self, node: &Node, x: f32) -> bool {
        let flags = node.feature & !FEATURE_MASK;
        if flags & (ZERO_MISSING | CATEGORICAL) == 0 {
            // The common case, branch-free: a NaN input fails `<=` and is sent left only by
            // the NaN-left flag.
            (x <= node.threshold) | (x.is_nan() & (flags != 0))
        } else {
            self.goes_left_rare(node, x)
        }
    }

    #[inline(never)]
    fn goes_left_rare(&self, node: &Node, x: f32) -> bool {
        if node.feature & CATEGORICAL != 0 {
            // LightGBM `CategoricalDecision`: NaN and negative categories go right. Its
            // `static_cast<int>` truncates toward zero like `as`; where C++ is undefined (out of
            // int range) x86 yields INT_MIN, which also goes right, and `as` saturates to a value
            // past any bitset, which goes right too.
            if x.is_nan() {
                return false;
            }
            let category = x as i32;
            if category < 0 {
                return false;
            }
            let (start, len) = self.cat_ranges[node.threshold.to_bits() as usize];
            let word = category as u32 / 32;
            if word >= len {
                return false;
            }
            (self.cat_words[(start + word) as usize] >> (category as u32 % 32)) & 1 == 1
        } else {
            // LightGBM `missing_type=Zero`: NaN becomes 0, and anything within kZeroThreshold of
            // zero takes the default direction.
            if x.is_nan() || x.abs() <= LIGHTGBM_ZERO_THRESHOLD {
                node.feature & NAN_LEFT != 0
            } else {
                x <= node.threshold
            }
        }
    }
}

/// The library that wrote a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// LightGBM text model.
    Lightgbm,
    /// XGBoost JSON model.
    Xgboost,
}

impl std::fmt::Display for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Library::Lightgbm => "LightGBM",
            Library::Xgboost => "XGBoost",
        })
    }
}

/// How leaf values become the raw output, following each library's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Sum {
    /// LightGBM: an f64 sum over trees in order, then divided by `divisor` (random-forest
    /// averaging) and multiplied by `scale` (the binary objective's sigmoid parameter, which
    /// Podium folds into the margin so the manifest's plain logistic link applies).
    Double {
        /// Number of trees when averaging, else 1.
        divisor: f64,
        /// Factor applied to the margin.
        scale: f64,
    },
    /// XGBoost: an f32 sum that starts at the base margin and adds trees in order.
    Single {
        /// The base score in margin space.
        base_margin: f32,
    },
}

/// A parsed LightGBM or XGBoost model, features still numbered as in its file.
///
/// Bind it to a manifest's input order with [`GbdtModel::into_runtime`].
#[derive(Clone, Debug)]
pub struct GbdtModel {
    source: PathBuf,
    library: Library,
    feature_names: Option<Vec<String>>,
    /// LightGBM writes `Column_0 …` when trained without names; such names may be matched by
    /// position instead.
    generated_names: bool,
    objective: String,
    link: Link,
    sum: Sum,
    forest: Forest,
}

impl GbdtModel {
    /// The file the model was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The library that wrote the model.
    pub fn library(&self) -> Library {
        self.library
    }

    /// Feature names in the file's order, when the file names its features.
    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// The training objective as the file names it (`binary`, `reg:squarederror`, …).
    pub fn objective(&self) -> &str {
        &self.objective
    }

    /// The link that turns this model's raw output into the library's prediction; a bundle's
    /// manifest must declare the same one.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Number of trees summed.
    pub fn num_trees(&self) -> usize {
        self.forest.num_trees()
    }

    /// Binds the model to `inputs`, the manifest's input names in column order.
    ///
    /// When the file names its features, each feature a split tests must be among `inputs`
    /// (features the trees never test need not be); otherwise feature `i` reads column `i`.
    pub fn into_runtime(&self, inputs: &[String]) -> Result<GbdtRuntime, ModelError> {
        if inputs.len() > MAX_FEATURES {
            return Err(ModelError::Unsupported(format!(
                "{}: {} inputs; GBDT runtimes read at most {MAX_FEATURES}",
                self.source.display(),
                inputs.len(),
            )));
        }
        let position: std::collections::HashMap<&str, u32> = inputs
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        let by_name = self.feature_names.as_deref().filter(|names| {
            !(self.generated_names && names.iter().all(|n| !position.contains_key(n.as_str())))
        });
        let used = self.forest.used_features();
        // Each feature a split tests gets a slot in the scoring block; `reads` says which input
        // column fills it.
        let mut slots = vec![0u32; self.forest.num_features];
        let mut reads = Vec::new();
        for (f, _) in used.iter().enumerate().filter(|(_, &u)| u) {
            let column = match by_name {
                Some(names) => *position.get(names[f].as_str()).ok_or_else(|| {
                    ModelError::Schema(format!(
                        "{}: the {} model splits on feature {:?}, which model.toml's inputs \
                         [{}] do not list",
                        self.source.display(),
                        self.library,
                        names[f],
                        inputs.join(", ")
                    ))
                })?,
                None if f < inputs.len() => f as u32,
                None => {
                    return Err(ModelError::Schema(format!(
                        "{}: the {} model names no features and splits on feature index {f}, \
                         but model.toml lists only {} inputs",
                        self.source.display(),
                        self.library,
                        inputs.len()
                    )))
                }
            };
            slots[f] = reads.len() as u32;
            reads.push(column);
        }
        let forest = self.forest.bind(&slots, reads.len());
        let engine = Engine::choose(&forest);
        Ok(GbdtRuntime {
            forest,
            engine,
            isa: Isa::detect(),
            reads,
            sum: self.sum,
            num_inputs: inputs.len(),
        })
    }
}

/// A tree ensemble bound to a manifest's input order; scores batches exactly as the training
/// library does.
#[derive(Clone, Debug)]
pub struct GbdtRuntime {
    /// Trees whose split features index `reads`.
    forest: Forest,
    /// How rows find their leaves.
    engine: Engine,
    /// The vector extensions this CPU has, for the leaf-mask loops.
    isa: Isa,
    /// The input column of each feature the trees read.
    reads: Vec<u32>,
    sum: Sum,
    num_inputs: usize,
}

/// How a runtime finds each row's leaves.
#[derive(Clone, Debug)]
enum Engine {
    /// Walk each tree from its root (any tree size).
    Walk,
    /// Leaf masks, for forests whose trees have at most 32 or 64 leaves. (128-bit masks
    /// were tried: the compiler does not vectorise them, and groups of rows ran 4x slower
    /// than the walk.)
    Masks32(LeafMasks<u32>),
    Masks64(LeafMasks<u64>),
}

impl Engine {
    fn choose(forest: &Forest) -> Self {
        if let Some(m) = LeafMasks::new(forest) {
            Engine::Masks32(m)
        } else if let Some(m) = LeafMasks::new(forest) {
            Engine::Masks64(m)
        } else {
            Engine::Walk
        }
    }
}

/// The vector extensions the leaf-mask loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// What the compilation target guarantees (SSE2 on x86-64).
    Baseline,
    /// AVX2 and BMI1.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best this CPU supports.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
        {
            return Isa::Avx2;
        }
        Isa::Baseline
    }
}

impl GbdtRuntime {
    /// Number of trees summed.
    pub fn num_trees(&self) -> usize {
        self.forest.num_trees()
    }

    /// The same runtime scoring by walking each tree, whatever the trees' sizes: for comparing
    /// the engines in tests and benchmarks.
    pub fn walking(&self) -> Self {
        Self {
            engine: Engine::Walk,
            ..self.clone()
        }
    }

    fn score(&self, columns: &Columns<'_>, out: &mut [f32]) {
        // Lanes per group: as many as the masks' registers allow (see `by_masks`).
        match &self.engine {
            Engine::Walk => self.walk(columns, out),
            Engine::Masks32(m) => self.by_masks::<_, 64>(m, columns, out),
            Engine::Masks64(m) => self.by_masks::<_, 32>(m, columns, out),
        }
    }

    /// Scores by leaf masks, with the loops compiled for AVX2 where the CPU has it. (AVX-512
    /// was no faster on the Zen 4 machine the work was measured on, which runs it on 256-bit
    /// units.)
    fn by_masks<M: Mask, const L: usize>(
        &self,
        masks: &LeafMasks<M>,
        columns: &Columns<'_>,
        out: &mut [f32],
    ) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is `Avx2` only where `Isa::detect` found AVX2 and BMI1 on this CPU,
            // the only requirement of `by_masks_avx2`.
            Isa::Avx2 => unsafe { self.by_masks_avx2::<M, L>(masks, columns, out) },
            Isa::Baseline => self.by_masks_any::<M, L>(masks, columns, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1")]
    fn by_masks_avx2<M: Mask, const L: usize>(
        &self,
        masks: &LeafMasks<M>,
        columns: &Columns<'_>,
        out: &mut [f32],
    ) {
        self.by_masks_any::<M, L>(masks, columns, out)
    }

    /// Groups of `L` rows while enough remain to fill most of one, then groups of 16, and the
    /// last rows (at most 3) one by one: a group costs about as much whether full or not.
    #[inline(always)]
    fn by_masks_any<M: Mask, const L: usize>(
        &self,
        masks: &LeafMasks<M>,
        columns: &Columns<'_>,
        out: &mut [f32],
    ) {
        let mut wide = GroupScratch::<L>::default();
        let mut narrow = GroupScratch::<16>::default();
        let mut first = 0;
        while first < out.len() {
            let left = out.len() - first;
            let rows = if 4 * left >= 3 * L {
                let rows = left.min(L);
                self.mask_group(masks, columns, (first, rows), &mut wide, out);
                rows
            } else if left >= 4 {
                let rows = left.min(16);
                self.mask_group(masks, columns, (first, rows), &mut narrow, out);
                rows
            } else {
                self.mask_row(masks, columns, first, &mut out[first]);
                1
            };
            first += rows;
        }
    }

    /// Scores rows `first..first + rows` of the batch, `rows <= L`, into `out`.
    #[inline(always)]
    fn mask_group<M: Mask, const L: usize>(
        &self,
        masks: &LeafMasks<M>,
        columns: &Columns<'_>,
        (first, rows): (usize, usize),
        scratch: &mut GroupScratch<L>,
        out: &mut [f32],
    ) {
        let (forest, reads) = (&self.forest, &self.reads[..]);
        let out = &mut out[first..first + rows];
        match self.sum {
            Sum::Double { divisor, scale } => {
                let mut acc = [0.0f64; L];
                masks.group(forest, columns, reads, (first, rows), scratch, &mut acc);
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = (a / divisor * scale) as f32;
                }
            }
            Sum::Single { base_margin } => {
                let mut acc = [base_margin; L];
                masks.group(forest, columns, reads, (first, rows), scratch, &mut acc);
                out.copy_from_slice(&acc[..rows]);
            }
        }
    }

    /// Scores row `row` of the batch into `out`.
    #[inline(always)]
    fn mask_row<M: Mask>(
        &self,
        masks: &LeafMasks<M>,
        columns: &Columns<'_>,
        row: usize,
        out: &mut f32,
    ) {
        let (forest, reads) = (&self.forest, &self.reads[..]);
        match self.sum {
            Sum::Double { divisor, scale } => {
                let mut acc = 0.0f64;
                masks.row(forest, columns, reads, row, |leaf| acc += leaf);
                *out = (acc / divisor * scale) as f32;
            }
            Sum::Single { base_margin } => {
                let mut acc = base_margin;
                // XGBoost leaves are f32, so the narrowing is exact.
                masks.row(forest, columns, reads, row, |leaf| acc += leaf as f32);
                *out = acc;
            }
        }
    }

    fn walk(&self, columns: &Columns<'_>, out: &mut [f32]) {
        // The block's values of the features the trees read, feature-major: a split's input is
        // one load away from its node, and the whole block sits in L1.
        let mut block = vec![[0.0f32; BLOCK]; self.reads.len()];
        for (b, out) in out.chunks_mut(BLOCK).enumerate() {
            let rows = b * BLOCK..b * BLOCK + out.len();
            for (slot, &column) in block.iter_mut().zip(&self.reads) {
                slot[..out.len()].copy_from_slice(&columns.column(column as usize)[rows.clone()]);
            }
            match self.sum {
                Sum::Double { divisor, scale } => {
                    let mut acc = [0.0f64; BLOCK];
                    let acc = &mut acc[..out.len()];
                    self.accumulate(&block, acc, |a, leaf| *a += leaf);
                    for (o, a) in out.iter_mut().zip(acc.iter()) {
                        *o = (a / divisor * scale) as f32;
                    }
                }
                Sum::Single { base_margin } => {
                    out.fill(base_margin);
                    // XGBoost leaves are f32, so the narrowing is exact.
                    self.accumulate(&block, out, |a, leaf| *a += leaf as f32);
                }
            }
        }
    }

    /// Adds every tree's leaf value, in tree order, to the accumulators of the block's rows.
    #[inline(always)]
    fn accumulate<A>(&self, block: &[[f32; BLOCK]], acc: &mut [A], add: impl Fn(&mut A, f64)) {
        let forest = &self.forest;
        for &root in &forest.roots {
            for (group, acc) in acc.chunks_mut(LANES).enumerate() {
                let leaves = forest.walk(root, block, group * LANES, acc.len());
                for (a, &leaf) in acc.iter_mut().zip(&leaves) {
                    add(a, forest.leaves[(leaf & !LEAF) as usize]);
                }
            }
        }
    }
}

impl Runtime for GbdtRuntime {
    fn num_inputs(&self) -> usize {
        self.num_inputs
    }

    fn describe(&self) -> String {
        let engine = match (&self.engine, self.isa) {
            (Engine::Walk, _) => "tree walk",
            (Engine::Masks32(_), Isa::Baseline) => "32-bit leaf masks",
            (Engine::Masks64(_), Isa::Baseline) => "64-bit leaf masks",
            #[cfg(target_arch = "x86_64")]
            (Engine::Masks32(_), Isa::Avx2) => "32-bit leaf masks, AVX2",
            #[cfg(target_arch = "x86_64")]
            (Engine::Masks64(_), Isa::Avx2) => "64-bit leaf masks, AVX2",
        };
        format!(
            "{} trees, {} split nodes, {} leaves ({engine})",
            self.forest.num_trees(),
            self.forest.nodes.len(),
            self.forest.leaves.len()
        )
    }

    fn predict_raw(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
        if input.width() != self.num_inputs {
            return Err(ModelError::Input(format!(
                "GBDT model takes {} inputs, got {}",
                self.num_inputs,
                input.width()
            )));
        }
        if out.len() != input.rows() {
            return Err(ModelError::Input(format!(
                "output buffer holds {} values for {} rows",
                out.len(),
                input.rows()
            )));
        }
        self.score(input, out);
        Ok(())
    }
}
