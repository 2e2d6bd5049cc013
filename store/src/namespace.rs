//! The in-memory directory tree, built from manifest entries in one pass.
//!
//! ## Layout
//! Nodes live in one `Vec<Node>` (32 bytes each); names in one byte arena; each directory's
//! children are a contiguous, name-sorted run of node ids in `children`, so `lookup` is a
//! binary search and `readdir` an index. MD5 ETags take 16 bytes in a parallel array; other
//! ETag forms go to a side map. For ImageNet-like keys this is about 72 bytes per object.
//!
//! ## Invariants
//! - Node 0 is the root. A node's id never changes for the life of the [`Namespace`].
//! - Every exposed name is valid UTF-8, 1 to 255 bytes, not `.` or `..`, with no `/` or
//!   ASCII control character, and is not the reserved `.pai-mount` at the root.
//! - A name is unique within its directory. When a key is both a file and a directory prefix
//!   (`a` and `a/b`), the directory wins and the file is counted in `shadowed`.
//! - Keys that break these rules are skipped and counted by reason in [`SkipStats`].

use std::collections::HashMap;

use crate::attrs::Attrs;
use crate::manifest::{tree_cmp, Etag, Manifest, ManifestError, RESERVED_DIR};

/// Longest file name Linux accepts.
pub const NAME_MAX: usize = 255;

const KIND_DIR: u8 = 1;
const KIND_FILE: u8 = 2;
const KIND_DEAD: u8 = 3;
const KIND_LINK: u8 = 4;

const ETAG_NONE: u8 = 0;
const ETAG_MD5: u8 = 1;
const ETAG_MULTIPART: u8 = 2;
const ETAG_OTHER: u8 = 3;

#[derive(Debug, Clone, Copy)]
struct Node {
    name_off: u32,
    name_len: u8,
    kind: u8,
    etag_kind: u8,
    /// Multipart part count (S3 allows at most 10,000 parts).
    parts: u16,
    parent: u32,
    /// Files: size. Directories: children start (low 32 bits) and count (high 32 bits).
    data: u64,
    mtime_ms: i64,
}

/// Why keys were skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkipStats {
    /// A segment is `.` or `..`.
    pub dot_segment: u64,
    /// An empty segment: `a//b`, or a leading `/`.
    pub empty_segment: u64,
    /// A segment longer than 255 bytes.
    pub name_too_long: u64,
    /// A segment that is not valid UTF-8.
    pub invalid_utf8: u64,
    /// A segment with an ASCII control character (not representable as a request path).
    pub control_char: u64,
    /// A file hidden by a directory of the same name.
    pub shadowed: u64,
}

impl SkipStats {
    pub fn total(&self) -> u64 {
        self.dot_segment
            + self.empty_segment
            + self.name_too_long
            + self.invalid_utf8
            + self.control_char
            + self.shadowed
    }
}

/// What a node is, for callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// Attributes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u32,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime_ms: i64,
}

/// The directory tree of one manifest snapshot. Immutable once built.
#[derive(Debug, Default)]
pub struct Namespace {
    nodes: Vec<Node>,
    names: Vec<u8>,
    children: Vec<u32>,
    md5: Vec<[u8; 16]>,
    other_etags: HashMap<u32, Box<str>>,
    /// Subdirectories of each directory that has any (for `st_nlink`).
    subdirs: HashMap<u32, u32>,
    /// Modes, owners and symlink targets of the nodes that have any (rare in datasets, so a
    /// side map keeps the common node small).
    attrs: HashMap<u32, Attrs>,
    files: u64,
    dirs: u64,
    bytes: u64,
    skipped: SkipStats,
    /// A few skipped keys, for the log.
    pub skipped_examples: Vec<(String, &'static str)>,
}

const MAX_EXAMPLES: usize = 5;

/// Builds a [`Namespace`] from keys given in tree order.
pub struct Builder {
    ns: Namespace,
    /// Open directories from the root down: node id, segment, and child list so far.
    stack: Vec<(u32, Vec<u8>, Vec<u32>)>,
    dir_mtime_ms: i64,
}

impl Builder {
    pub fn new(dir_mtime_ms: i64) -> Self {
        Self::with_capacity(dir_mtime_ms, 0)
    }

    /// A builder with room for `objects` entries, so that loading a large manifest does not
    /// double its arrays while growing them (peak memory stays near the final size).
    pub fn with_capacity(dir_mtime_ms: i64, objects: usize) -> Self {
        let mut ns = Namespace::default();
        // Directories are typically a small fraction of the objects; 1% extra covers them.
        let nodes = objects + objects / 100 + 1;
        ns.nodes.reserve_exact(nodes);
        ns.md5.reserve_exact(nodes);
        ns.children.reserve_exact(nodes);
        ns.nodes.push(Node {
            name_off: 0,
            name_len: 0,
            kind: KIND_DIR,
            etag_kind: ETAG_NONE,
            parts: 0,
            parent: 0,
            data: 0,
            mtime_ms: dir_mtime_ms,
        });
        ns.md5.push([0; 16]);
        ns.dirs = 1;
        Self {
            ns,
            stack: vec![(0, Vec::new(), Vec::new())],
            dir_mtime_ms,
        }
    }

    fn skip(&mut self, key: &[u8], why: &'static str) {
        let s = &mut self.ns.skipped;
        match why {
            "dot segment" => s.dot_segment += 1,
            "empty segment" => s.empty_segment += 1,
            "name too long" => s.name_too_long += 1,
            "invalid UTF-8" => s.invalid_utf8 += 1,
            "control character" => s.control_char += 1,
            _ => s.shadowed += 1,
        }
        if self.ns.skipped_examples.len() < MAX_EXAMPLES {
            self.ns
                .skipped_examples
                .push((String::from_utf8_lossy(key).into_owned(), why));
        }
    }

    fn add_node(&mut self, name: &[u8], kind: u8, data: u64, mtime_ms: i64, etag: &Etag) -> u32 {
        let id = self.ns.nodes.len() as u32;
        let parent = self.stack.last().expect("root is never popped").0;
        let (etag_kind, parts, md5) = match etag {
            Etag::None => (ETAG_NONE, 0, [0; 16]),
            Etag::Md5(m) => (ETAG_MD5, 0, *m),
            Etag::Multipart(m, n) if *n <= u32::from(u16::MAX) => (ETAG_MULTIPART, *n as u16, *m),
            Etag::Multipart(..) | Etag::Other(_) => {
                let header = etag.to_header().unwrap_or_default();
                self.ns
                    .other_etags
                    .insert(id, header.trim_matches('"').into());
                (ETAG_OTHER, 0, [0; 16])
            }
        };
        self.ns.nodes.push(Node {
            name_off: self.ns.names.len() as u32,
            name_len: name.len() as u8,
            kind,
            etag_kind,
            parts,
            parent,
            data,
            mtime_ms,
        });
        self.ns.md5.push(md5);
        self.ns.names.extend_from_slice(name);
        self.stack.last_mut().unwrap().2.push(id);
        id
    }

    fn close_top(&mut self) {
        let (id, _, kids) = self.stack.pop().expect("non-empty");
        let start = self.ns.children.len() as u64;
        self.ns.children.extend_from_slice(&kids);
        self.ns.nodes[id as usize].data = start | ((kids.len() as u64) << 32);
    }

    /// Adds one key. Keys must arrive in [`tree_cmp`] order; a key ending in `/` is a
    /// directory marker.
    pub fn push(&mut self, key: &[u8], size: u64, mtime_ms: i64, etag: Etag) {
        self.push_with(key, size, mtime_ms, etag, Attrs::default());
    }

    /// [`Self::push`] with attributes: a marker's go to its directory; a symlink mode makes
    /// the entry a symlink.
    pub fn push_with(&mut self, key: &[u8], size: u64, mtime_ms: i64, etag: Etag, attrs: Attrs) {
        let is_marker = key.ends_with(b"/");
        let body = if is_marker {
            &key[..key.len() - 1]
        } else {
            key
        };
        if body.is_empty() {
            return; // the prefix's own marker
        }
        let segments: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
        for (i, seg) in segments.iter().enumerate() {
            let why = if seg.is_empty() {
                Some("empty segment")
            } else if *seg == b"." || *seg == b".." {
                Some("dot segment")
            } else if seg.len() > NAME_MAX {
                Some("name too long")
            } else if std::str::from_utf8(seg).is_err() {
                Some("invalid UTF-8")
            } else if seg.iter().any(|b| b.is_ascii_control()) {
                Some("control character")
            } else {
                None
            };
            if let Some(why) = why {
                return self.skip(key, why);
            }
            if i == 0 && *seg == RESERVED_DIR.as_bytes() {
                return;
            }
        }
        let dirs = if is_marker {
            &segments[..]
        } else {
            &segments[..segments.len() - 1]
        };
        // Close open directories that are not on this key's path.
        let mut common = 0;
        while common < dirs.len()
            && common + 1 < self.stack.len()
            && self.stack[common + 1].1 == dirs[common]
        {
            common += 1;
        }
        while self.stack.len() > common + 1 {
            self.close_top();
        }
        for seg in &dirs[common..] {
            // A file of the same name came just before (tree order): the directory wins.
            let top = &self.stack.last().unwrap().2;
            if let Some(&last) = top.last() {
                let n = self.ns.nodes[last as usize];
                if matches!(n.kind, KIND_FILE | KIND_LINK) && self.ns.name(last) == *seg {
                    self.stack.last_mut().unwrap().2.pop();
                    self.ns.nodes[last as usize].kind = KIND_DEAD;
                    self.ns.attrs.remove(&last);
                    if n.kind == KIND_FILE {
                        self.ns.files -= 1;
                        self.ns.bytes -= n.data;
                    }
                    let shadowed = [*seg].concat();
                    self.skip(&shadowed, "shadowed by a directory");
                }
            }
            let parent = self.stack.last().expect("the root stays").0;
            let id = self.add_node(seg, KIND_DIR, 0, self.dir_mtime_ms, &Etag::None);
            self.ns.dirs += 1;
            *self.ns.subdirs.entry(parent).or_default() += 1;
            self.stack.push((id, seg.to_vec(), Vec::new()));
        }
        if is_marker {
            let dir = self.stack.last().expect("the root stays").0;
            if !attrs.is_empty() && dir != Namespace::ROOT {
                // A marker with attributes is one a mount saved: its mtime is the directory's.
                self.ns.nodes[dir as usize].mtime_ms = mtime_ms;
                self.ns.attrs.insert(dir, attrs);
            }
            return;
        }
        let name = segments[segments.len() - 1];
        if attrs.is_symlink() {
            let len = attrs.target.as_ref().map_or(0, |t| t.len() as u64);
            let id = self.add_node(name, KIND_LINK, len, mtime_ms, &etag);
            self.ns.attrs.insert(id, attrs);
            return;
        }
        let id = self.add_node(name, KIND_FILE, size, mtime_ms, &etag);
        if !attrs.is_empty() {
            self.ns.attrs.insert(id, attrs);
        }
        self.ns.files += 1;
        self.ns.bytes += size;
    }

    pub fn finish(mut self) -> Namespace {
        while !self.stack.is_empty() {
            self.close_top();
        }
        self.ns.children.shrink_to_fit();
        self.ns.nodes.shrink_to_fit();
        self.ns.names.shrink_to_fit();
        self.ns.md5.shrink_to_fit();
        self.ns
    }
}

impl Namespace {
    /// Builds the tree from a parsed manifest.
    pub fn from_manifest(m: &Manifest<'_>) -> Result<Self, ManifestError> {
        let mut b = Builder::with_capacity(m.header.built_at_ms, m.header.object_count as usize);
        m.for_each(|key, size, mtime, etag, attrs| b.push_with(key, size, mtime, etag, attrs))?;
        Ok(b.finish())
    }

    /// Builds the tree from entries in any order (sorts a copy of the keys).
    pub fn from_entries(entries: &[crate::manifest::Entry], dir_mtime_ms: i64) -> Self {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| tree_cmp(&entries[a].key, &entries[b].key));
        let mut b = Builder::with_capacity(dir_mtime_ms, entries.len());
        for i in order {
            let e = &entries[i];
            b.push_with(&e.key, e.size, e.mtime_ms, e.etag.clone(), e.attrs.clone());
        }
        b.finish()
    }

    pub const ROOT: u32 = 0;

    fn name(&self, id: u32) -> &[u8] {
        let n = &self.nodes[id as usize];
        &self.names[n.name_off as usize..n.name_off as usize + n.name_len as usize]
    }

    /// The node's name (empty for the root). Always valid UTF-8.
    pub fn name_of(&self, id: u32) -> &str {
        std::str::from_utf8(self.name(id)).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files == 0 && self.dirs <= 1
    }

    pub fn info(&self, id: u32) -> Option<NodeInfo> {
        let n = self.nodes.get(id as usize)?;
        let kind = match n.kind {
            KIND_DIR => NodeKind::Dir,
            KIND_FILE => NodeKind::File,
            KIND_LINK => NodeKind::Symlink,
            _ => return None,
        };
        Some(NodeInfo {
            id,
            kind,
            size: if kind == NodeKind::Dir { 0 } else { n.data },
            mtime_ms: n.mtime_ms,
        })
    }

    pub fn parent(&self, id: u32) -> u32 {
        self.nodes.get(id as usize).map_or(0, |n| n.parent)
    }

    /// The children of a directory, in name order; empty for a file.
    /// How many subdirectories directory `id` has.
    pub fn subdirs(&self, id: u32) -> u32 {
        self.subdirs.get(&id).copied().unwrap_or(0)
    }

    pub fn children(&self, id: u32) -> &[u32] {
        match self.nodes.get(id as usize) {
            Some(n) if n.kind == KIND_DIR => {
                let start = (n.data & 0xffff_ffff) as usize;
                let count = (n.data >> 32) as usize;
                &self.children[start..start + count]
            }
            _ => &[],
        }
    }

    /// Finds `name` in directory `dir`.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let kids = self.children(dir);
        kids.binary_search_by(|&k| self.name(k).cmp(name))
            .ok()
            .map(|i| kids[i])
    }

    /// The node's key relative to the prefix (`a/b/c`); for directories without the slash.
    pub fn key_of(&self, id: u32) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != Self::ROOT {
            parts.push(self.name_of(cur));
            cur = self.parent(cur);
        }
        parts.reverse();
        parts.join("/")
    }

    /// The node's mode, owner, group and symlink target, where stored.
    pub fn attrs(&self, id: u32) -> Option<&Attrs> {
        self.attrs.get(&id)
    }

    /// The size of the node's object: a file's size, a symlink's target length.
    pub fn size_of_object(&self, id: u32) -> u64 {
        self.info(id).map_or(0, |i| i.size)
    }

    /// A symlink's target.
    pub fn link_target(&self, id: u32) -> Option<&[u8]> {
        self.attrs.get(&id).and_then(|a| a.target.as_deref())
    }

    /// How many nodes carry attributes.
    pub fn attrs_count(&self) -> usize {
        self.attrs.len()
    }

    /// The node's ETag as a quoted HTTP value.
    pub fn etag_of(&self, id: u32) -> Option<String> {
        let n = self.nodes.get(id as usize)?;
        let md5 = &self.md5[id as usize];
        match n.etag_kind {
            ETAG_MD5 => Etag::Md5(*md5).to_header(),
            ETAG_MULTIPART => Etag::Multipart(*md5, u32::from(n.parts)).to_header(),
            ETAG_OTHER => self.other_etags.get(&id).map(|s| format!("\"{s}\"")),
            _ => None,
        }
    }

    /// Every file node, in tree order.
    pub fn files(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.nodes.len() as u32).filter(|&id| self.nodes[id as usize].kind == KIND_FILE)
    }

    /// The pinned identity of a file, as a reader needs it.
    pub fn pin(&self, id: u32) -> Option<crate::object::PinnedObject> {
        let info = self.info(id).filter(|i| i.kind == NodeKind::File)?;
        Some(crate::object::PinnedObject {
            key: self.key_of(id).into(),
            size: info.size,
            etag: self.etag_of(id).map(Into::into),
        })
    }

    pub fn file_count(&self) -> u64 {
        self.files
    }

    pub fn dir_count(&self) -> u64 {
        self.dirs
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn skipped(&self) -> &SkipStats {
        &self.skipped
    }

    /// Heap bytes held, counted from capacities (what the namespace costs the mount).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.names.capacity()
            + self.children.capacity() * 4
            + self.md5.capacity() * 16
            + self
                .other_etags
                .values()
                .map(|s| s.len() + 4 + 16 + 8)
                .sum::<usize>()
            + self
                .attrs
                .values()
                .map(|a| {
                    std::mem::size_of::<Attrs>() + 4 + a.target.as_ref().map_or(0, |t| t.len())
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
