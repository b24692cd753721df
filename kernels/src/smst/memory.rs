//! The in-memory trie: the same node shapes as Go's smt (leaf, inner, extension), so that
//! proofs — `SiblingData` included — are byte-identical to Go's for the same sequence of
//! updates and deletes (spec `smst.md` §4).

use super::hash::{
    Digest, EMPTY, MAX_DEPTH, PATH_LEN, Path, bit, ext_encoding, first_diff_bit, flip_bit,
    inner_digest, inner_encoding, leaf_digest, leaf_value_hash, path_of, wrap,
};
use super::proof::{ProofOptions, SparseMerkleClosestProof, SparseMerkleProof};
use super::{ProveError, Root};

#[derive(Debug)]
struct Leaf {
    path: Path,
    /// `value ‖ BE8(weight) ‖ BE8(1)`.
    value_hash: Vec<u8>,
    digest: Option<Digest>,
}

#[derive(Debug)]
struct Inner {
    children: [Option<Node>; 2],
    digest: Option<Digest>,
    /// The children's digests, valid while `digest` is set. Kept here so a proof walk
    /// reads each sibling's digest without visiting the sibling (one cache miss less
    /// per level).
    child_digests: [Digest; 2],
}

#[derive(Debug)]
struct Ext {
    /// Bit range `[start, end)` that this node stands for.
    start: usize,
    end: usize,
    /// Path of the key whose insertion created the node; only bits `[start, end)` matter
    /// for digests, but `SiblingData` serializes all of it.
    path: Path,
    /// Always an inner node.
    child: Node,
    digest: Option<Digest>,
}

impl Ext {
    /// Moves the child out so it can be rebuilt by value; a bare placeholder leaf stands
    /// in until the caller puts a child back.
    fn take_child(&mut self) -> Node {
        std::mem::replace(&mut self.child, Node::leaf([0; 32], Vec::new()))
    }
}

#[derive(Debug)]
enum Node {
    Leaf(Box<Leaf>),
    Inner(Box<Inner>),
    Ext(Box<Ext>),
}

impl Node {
    fn leaf(path: Path, value_hash: Vec<u8>) -> Self {
        Node::Leaf(Box::new(Leaf {
            path,
            value_hash,
            digest: None,
        }))
    }

    /// An inner node whose `bit` side holds `a` and other side `b`.
    fn inner_with(a_bit: u8, a: Node, b: Node) -> Self {
        let children = if a_bit == 0 {
            [Some(a), Some(b)]
        } else {
            [Some(b), Some(a)]
        };
        Node::Inner(Box::new(Inner {
            children,
            digest: None,
            child_digests: [EMPTY; 2],
        }))
    }

    /// Computes (and caches) the digest of this subtree.
    fn hash(&mut self) -> Digest {
        match self {
            Node::Leaf(l) => *l
                .digest
                .get_or_insert_with(|| leaf_digest(&l.path, &l.value_hash)),
            Node::Inner(n) => {
                if let Some(d) = n.digest {
                    return d;
                }
                let [l, r] = &mut n.children;
                n.child_digests = [hash_opt(l), hash_opt(r)];
                let d = inner_digest(&n.child_digests[0], &n.child_digests[1]);
                n.digest = Some(d);
                d
            }
            Node::Ext(e) => {
                if let Some(d) = e.digest {
                    return d;
                }
                let d = wrap(e.child.hash(), &e.path, e.start, e.end);
                e.digest = Some(d);
                d
            }
        }
    }

    /// The cached digest; valid after [`Node::hash`] ran on the root.
    fn digest(&self) -> Digest {
        let d = match self {
            Node::Leaf(l) => l.digest,
            Node::Inner(n) => n.digest,
            Node::Ext(e) => e.digest,
        };
        d.expect("digests are computed before proofs are walked")
    }

    /// The node's own encoding: what Go puts in `SiblingData`.
    fn encoding(&self) -> Vec<u8> {
        match self {
            Node::Leaf(l) => {
                let mut v = Vec::with_capacity(1 + PATH_LEN + l.value_hash.len());
                v.push(0);
                v.extend_from_slice(&l.path);
                v.extend_from_slice(&l.value_hash);
                v
            }
            Node::Inner(n) => {
                let [l, r] = &n.child_digests;
                inner_encoding(l, r).to_vec()
            }
            Node::Ext(e) => {
                ext_encoding(e.start as u8, e.end as u8, &e.path, &e.child.digest()).to_vec()
            }
        }
    }
}

fn hash_opt(n: &mut Option<Node>) -> Digest {
    n.as_mut().map_or(EMPTY, Node::hash)
}

/// An in-memory sparse Merkle sum trie with Go's node shapes. Hashing is lazy: updates
/// only restructure, and digests are computed (and cached) by `root` and the provers.
#[derive(Debug, Default)]
pub struct MemTrie {
    root: Option<Node>,
}

/// Deleting a key that is not in the trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key not found")]
pub struct KeyNotFound;

impl MemTrie {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the leaf of `key` (its path is SHA-256 of the key).
    pub fn update(&mut self, key: &[u8], value: &[u8], weight: u64) {
        self.update_path(path_of(key), leaf_value_hash(value, weight));
    }

    /// Inserts or replaces the leaf at `path` with a prepared value hash
    /// (`value ‖ BE8(weight) ‖ BE8(1)`).
    pub fn update_path(&mut self, path: Path, value_hash: Vec<u8>) {
        let root = self.root.take();
        self.root = Some(insert(root, 0, path, value_hash));
    }

    /// Removes the leaf of `key`; an absent key leaves the trie unchanged.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), KeyNotFound> {
        let path = path_of(key);
        if self.get_path(&path).is_none() {
            return Err(KeyNotFound);
        }
        let root = self.root.take().expect("a present key implies a root");
        self.root = remove(root, 0, &path);
        Ok(())
    }

    /// The value and weight stored for `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<(&[u8], u64)> {
        let vh = self.get_path(&path_of(key))?;
        let n = vh.len() - 16;
        Some((
            &vh[..n],
            u64::from_be_bytes(vh[n..n + 8].try_into().expect("8 bytes")),
        ))
    }

    fn get_path(&self, path: &Path) -> Option<&[u8]> {
        let mut node = self.root.as_ref()?;
        let mut depth = 0;
        loop {
            match node {
                Node::Leaf(l) => return (l.path == *path).then_some(&l.value_hash[..]),
                Node::Inner(n) => {
                    node = n.children[bit(path, depth) as usize].as_ref()?;
                    depth += 1;
                }
                Node::Ext(e) => {
                    if first_diff_bit(&e.path, path, e.start).is_some_and(|i| i < e.end) {
                        return None;
                    }
                    node = &e.child;
                    depth = e.end;
                }
            }
        }
    }

    /// The 48-byte root (hash ‖ total weight ‖ leaf count).
    pub fn root(&mut self) -> Root {
        Root(hash_opt(&mut self.root))
    }

    /// Every leaf as `(path, value_hash)`, sorted by path.
    pub fn leaves(&self) -> Vec<(Path, &[u8])> {
        let mut out = Vec::new();
        let mut stack: Vec<&Node> = self.root.iter().collect();
        while let Some(n) = stack.pop() {
            match n {
                Node::Leaf(l) => out.push((l.path, &l.value_hash[..])),
                Node::Inner(i) => stack.extend(i.children.iter().rev().flatten()),
                Node::Ext(e) => stack.push(&e.child),
            }
        }
        out
    }

    /// Go's `Prove(key)`: a membership or non-membership proof.
    pub fn prove(&mut self, key: &[u8], opts: ProofOptions) -> SparseMerkleProof {
        hash_opt(&mut self.root);
        let path = path_of(key);
        let mut siblings: Vec<Digest> = Vec::new();
        // The encoding of the last sibling taken at an inner-node step, if non-empty.
        let mut sibling_enc: Option<Vec<u8>> = None;
        let mut last_sibling: Option<&Node> = None;
        let mut node = self.root.as_ref();
        let mut depth = 0;
        while let Some(n) = node {
            match n {
                Node::Leaf(_) => break,
                Node::Inner(i) => {
                    let side = bit(&path, depth) as usize;
                    let other = i.children[1 - side].as_ref();
                    siblings.push(i.child_digests[1 - side]);
                    last_sibling = other;
                    sibling_enc = None;
                    node = i.children[side].as_ref();
                    depth += 1;
                }
                Node::Ext(e) => {
                    match first_diff_bit(&e.path, &path, e.start).filter(|&i| i < e.end) {
                        None => {
                            siblings.extend(std::iter::repeat_n(EMPTY, e.end - e.start));
                            node = Some(&e.child);
                            depth = e.end;
                        }
                        Some(miss) => {
                            // Go expands the extension into a chain of inner nodes and walks
                            // it: empty siblings until the mismatch, where the path falls off
                            // into an empty slot and the rest of the chain is the sibling.
                            siblings.extend(std::iter::repeat_n(EMPTY, miss - e.start));
                            let child = e.child.digest();
                            siblings.push(wrap(child, &e.path, miss + 1, e.end));
                            last_sibling = None;
                            sibling_enc = opts.sibling_data.then(|| {
                                if miss + 1 == e.end {
                                    e.child.encoding()
                                } else {
                                    let below = wrap(child, &e.path, miss + 2, e.end);
                                    let (l, r) = if bit(&e.path, miss + 1) == 0 {
                                        (below, EMPTY)
                                    } else {
                                        (EMPTY, below)
                                    };
                                    inner_encoding(&l, &r).to_vec()
                                }
                            });
                            node = None;
                        }
                    }
                }
            }
        }
        let non_membership_leaf_data = match node {
            Some(n @ Node::Leaf(l)) if l.path != path => Some(n.encoding()),
            _ => None,
        };
        siblings.reverse();
        SparseMerkleProof {
            side_nodes: siblings.iter().map(|d| d.to_vec()).collect(),
            non_membership_leaf_data,
            // The last sibling is either a node of the trie or a chain node built above.
            sibling_data: sibling_enc.or_else(|| {
                last_sibling
                    .filter(|_| opts.sibling_data)
                    .map(Node::encoding)
            }),
        }
    }

    /// Go's `ProveClosest(path)`: proof of the leaf whose path is closest to `target`
    /// (walking toward `target`, taking the other branch wherever the preferred one is
    /// empty).
    ///
    /// After deletions Go can panic here (`closest_panic_after_delete`); this prover
    /// returns the logically closest leaf's proof instead, which verifies.
    pub fn prove_closest(
        &mut self,
        target: &[u8],
        opts: ProofOptions,
    ) -> Result<SparseMerkleClosestProof, ProveError> {
        let target: Path = target
            .try_into()
            .map_err(|_| ProveError::PathLength(target.len()))?;
        hash_opt(&mut self.root);
        let Some(mut node) = self.root.as_ref() else {
            return Ok(super::empty_trie_closest_proof(&target));
        };
        let mut working = target;
        let mut flipped = Vec::new();
        let mut siblings: Vec<Digest> = Vec::new();
        let mut last_sibling: Option<&Node> = None;
        let mut depth = 0;
        let leaf = loop {
            match node {
                Node::Leaf(l) => break l,
                Node::Ext(e) => {
                    // Only the extension's branch exists: take it, flipping where the
                    // target disagrees.
                    let mut from = e.start;
                    while let Some(i) =
                        first_diff_bit(&e.path, &working, from).filter(|&i| i < e.end)
                    {
                        flip_bit(&mut working, i);
                        flipped.push(i as i64);
                        from = i + 1;
                    }
                    siblings.extend(std::iter::repeat_n(EMPTY, e.end - e.start));
                    node = &e.child;
                    depth = e.end;
                }
                Node::Inner(i) => {
                    let mut side = bit(&working, depth) as usize;
                    if i.children[side].is_none() {
                        flip_bit(&mut working, depth);
                        flipped.push(depth as i64);
                        side = 1 - side;
                    }
                    let other = &i.children[1 - side];
                    siblings.push(i.child_digests[1 - side]);
                    last_sibling = other.as_ref();
                    node = i.children[side]
                        .as_ref()
                        .expect("an inner node has a non-empty child");
                    depth += 1;
                }
            }
        };
        debug_assert!(depth <= MAX_DEPTH);
        siblings.reverse();
        Ok(SparseMerkleClosestProof {
            path: target.to_vec(),
            flipped_bits: flipped,
            depth: depth as i64,
            closest_path: leaf.path.to_vec(),
            closest_value_hash: Some(leaf.value_hash.clone()),
            closest_proof: Some(SparseMerkleProof {
                side_nodes: siblings.iter().map(|d| d.to_vec()).collect(),
                non_membership_leaf_data: None,
                sibling_data: last_sibling
                    .filter(|_| opts.sibling_data)
                    .map(Node::encoding),
            }),
        })
    }
}

/// Inserts `path` into the subtree `node` at `depth` (spec §4, "Insert").
fn insert(node: Option<Node>, depth: usize, path: Path, value_hash: Vec<u8>) -> Node {
    let Some(node) = node else {
        return Node::leaf(path, value_hash);
    };
    match node {
        Node::Leaf(mut l) => {
            let Some(p) = first_diff_bit(&path, &l.path, depth) else {
                l.value_hash = value_hash;
                l.digest = None;
                return Node::Leaf(l);
            };
            let inner =
                Node::inner_with(bit(&path, p), Node::leaf(path, value_hash), Node::Leaf(l));
            if p > depth {
                Node::Ext(Box::new(Ext {
                    start: depth,
                    end: p,
                    path,
                    child: inner,
                    digest: None,
                }))
            } else {
                inner
            }
        }
        Node::Inner(mut n) => {
            let side = bit(&path, depth) as usize;
            let child = n.children[side].take();
            n.children[side] = Some(insert(child, depth + 1, path, value_hash));
            n.digest = None;
            Node::Inner(n)
        }
        Node::Ext(mut e) => {
            let Some(i) = first_diff_bit(&e.path, &path, e.start).filter(|&i| i < e.end) else {
                let child = e.take_child();
                e.child = insert(Some(child), e.end, path, value_hash);
                e.digest = None;
                return Node::Ext(e);
            };
            let new_leaf = Node::leaf(path, value_hash);
            let ext_bit = bit(&e.path, i);
            if i == e.start {
                // The branch replaces the extension, which shrinks by one bit (or
                // vanishes, leaving its child) and becomes the other side.
                let rest = if e.start + 1 == e.end {
                    e.child
                } else {
                    e.start += 1;
                    e.digest = None;
                    Node::Ext(e)
                };
                Node::inner_with(ext_bit, rest, new_leaf)
            } else {
                // The extension is cut at the mismatch; below the branch the rest of it
                // (same stored path) keeps the old child.
                let old_child = e.take_child();
                let rest = if i + 1 == e.end {
                    old_child
                } else {
                    Node::Ext(Box::new(Ext {
                        start: i + 1,
                        end: e.end,
                        path: e.path,
                        child: old_child,
                        digest: None,
                    }))
                };
                e.end = i;
                e.child = Node::inner_with(ext_bit, rest, new_leaf);
                e.digest = None;
                Node::Ext(e)
            }
        }
    }
}

/// Removes `path` (known to be present) from the subtree `node` at `depth` (spec §4,
/// "Delete"), collapsing nodes upward the way Go does.
fn remove(node: Node, depth: usize, path: &Path) -> Option<Node> {
    match node {
        Node::Leaf(_) => None,
        Node::Inner(mut n) => {
            let side = bit(path, depth) as usize;
            let child = n.children[side].take().expect("the path leads to the leaf");
            n.children[side] = remove(child, depth + 1, path);
            n.digest = None;
            let (slot, only) = match std::mem::take(&mut n.children) {
                [Some(a), Some(b)] => {
                    n.children = [Some(a), Some(b)];
                    return Some(Node::Inner(n));
                }
                [Some(a), None] => (0, a),
                [None, Some(b)] => (1, b),
                [None, None] => return None,
            };
            match only {
                Node::Leaf(_) => Some(only),
                Node::Ext(mut e) => {
                    // The extension grows one level upward and replaces this node.
                    e.start -= 1;
                    e.digest = None;
                    Some(Node::Ext(e))
                }
                Node::Inner(_) => {
                    // The inner node stays, with an empty slot (Go creates no
                    // extension here).
                    n.children[slot] = Some(only);
                    Some(Node::Inner(n))
                }
            }
        }
        Node::Ext(mut e) => {
            let child = e.take_child();
            match remove(child, e.end, path) {
                None => None,
                Some(leaf @ Node::Leaf(_)) => Some(leaf),
                Some(Node::Ext(mut lower)) => {
                    // Two extensions merge; the lower one survives with its stored path.
                    lower.start = e.start;
                    lower.digest = None;
                    Some(Node::Ext(lower))
                }
                Some(inner) => {
                    e.child = inner;
                    e.digest = None;
                    Some(Node::Ext(e))
                }
            }
        }
    }
}
