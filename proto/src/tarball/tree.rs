//! Path rules and the in-memory model of what an archive creates.
//!
//! Safety decisions are taken against this model rather than against the filesystem, so
//! [`super::list_contents`] (which writes nothing), [`super::unpack_contents`] and
//! [`super::create`] agree exactly on what they accept.

use std::collections::HashMap;

use super::error::EntryProblem;

/// Longest path or link target accepted, in bytes: Linux's `PATH_MAX` minus the NUL.
pub(crate) const MAX_PATH_BYTES: usize = 4095;
/// Longest path component accepted, in bytes: `NAME_MAX` on Linux and macOS.
pub(crate) const MAX_COMPONENT_BYTES: usize = 255;
/// Most files, directories (implicit parents included) and links one archive may create.
/// 2^18 is how many bare headers fit in [`super::MAX_UNPACKED_SIZE`]; without a cap, deep
/// paths of implicit parents would let a 128 MiB stream describe tens of millions of
/// directories, in memory here and as inodes on disk.
pub(crate) const MAX_NODES: usize = 1 << 18;

/// Parses an entry path of `contents.tar.gz` the way an extractor would: `.` and empty
/// components (`./a`, `a//b`, `dir/`) are dropped, `..` and absolute paths are refused. An
/// empty result names the root itself.
pub(crate) fn archive_path(bytes: &[u8]) -> Result<Vec<String>, EntryProblem> {
    let text = std::str::from_utf8(bytes).map_err(|_| EntryProblem::NotUtf8)?;
    if text.starts_with('/') {
        return Err(EntryProblem::AbsolutePath);
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(EntryProblem::TooLong {
            limit: MAX_PATH_BYTES,
        });
    }
    let mut components = Vec::new();
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(EntryProblem::ParentComponent),
            name if name.contains('\0') => return Err(EntryProblem::ForbiddenCharacter('\0')),
            name if name.len() > MAX_COMPONENT_BYTES => {
                return Err(EntryProblem::TooLong {
                    limit: MAX_COMPONENT_BYTES,
                })
            }
            name => components.push(name.to_string()),
        }
    }
    Ok(components)
}

/// Parses a path handed to [`super::create`]. Stricter than [`archive_path`]: the path must
/// already be in canonical form (no `.`, no empty components, no trailing `/`), so that the
/// sorted entry order and the names other tools see are exactly the ones given. `\` and drive
/// prefixes are refused because they turn into separators or absolute paths on Windows, where
/// Hex packages are unpacked too (hex_core refuses drive prefixes as well).
pub(crate) fn package_path(path: &str) -> Result<Vec<&str>, EntryProblem> {
    if path.is_empty() {
        return Err(EntryProblem::EmptyPath);
    }
    if path.starts_with('/') {
        return Err(EntryProblem::AbsolutePath);
    }
    if has_drive_prefix(path) {
        return Err(EntryProblem::DrivePath);
    }
    for forbidden in ['\0', '\\'] {
        if path.contains(forbidden) {
            return Err(EntryProblem::ForbiddenCharacter(forbidden));
        }
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(EntryProblem::TooLong {
            limit: MAX_PATH_BYTES,
        });
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" => return Err(EntryProblem::EmptyComponent),
            "." => return Err(EntryProblem::CurrentComponent),
            ".." => return Err(EntryProblem::ParentComponent),
            name if name.len() > MAX_COMPONENT_BYTES => {
                return Err(EntryProblem::TooLong {
                    limit: MAX_COMPONENT_BYTES,
                })
            }
            name => components.push(name),
        }
    }
    Ok(components)
}

/// Checks the text of a symlink target (escape checks happen in [`Tree`]). `strict` adds the
/// [`super::create`]-only rules about `\` and drive prefixes.
pub(crate) fn symlink_target(bytes: &[u8], strict: bool) -> Result<String, EntryProblem> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            return Err(EntryProblem::BadLinkTarget {
                target: String::from_utf8_lossy(bytes).into_owned(),
                why: "is not valid UTF-8",
            })
        }
    };
    let bad = |why| {
        Err(EntryProblem::BadLinkTarget {
            target: text.to_string(),
            why,
        })
    };
    if text.is_empty() {
        return Err(EntryProblem::EmptyLinkTarget);
    }
    if text.starts_with('/') || (strict && (has_drive_prefix(text) || text.starts_with('\\'))) {
        return Err(EntryProblem::AbsoluteLinkTarget {
            target: text.to_string(),
        });
    }
    if text.contains('\0') {
        return bad("contains a NUL byte");
    }
    if strict && text.contains('\\') {
        return bad("contains a `\\`");
    }
    if text.len() > MAX_PATH_BYTES {
        return bad("is longer than 4095 bytes");
    }
    Ok(text.to_string())
}

fn has_drive_prefix(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// What sits at a path of the modelled tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Dir,
    File { executable: bool, size: u64 },
    Symlink { target: String },
}

impl NodeKind {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            NodeKind::Dir => "directory",
            NodeKind::File { .. } => "regular file",
            NodeKind::Symlink { .. } => "symlink",
        }
    }
}

/// One path of the tree. Only the last component is stored: full paths are rebuilt from the
/// parent links when an error message needs one, so memory stays linear in the archive size.
#[derive(Debug)]
struct Node {
    kind: NodeKind,
    parent: usize,
    name: Box<str>,
}

/// What [`Tree::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// Nothing was at the path.
    New,
    /// A regular file was at the path and is replaced (tar semantics: the later entry wins).
    ReplacedFile,
    /// A directory was already at the path (explicitly or as a parent); nothing to do.
    ExistingDir,
}

/// The files, directories and symlinks an archive creates, keyed by component.
#[derive(Debug)]
pub(crate) struct Tree {
    nodes: Vec<Node>,
    /// (parent, name) → child.
    children: HashMap<(usize, Box<str>), usize>,
    symlinks: Vec<usize>,
}

const ROOT: usize = 0;

impl Tree {
    pub(crate) fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir,
                parent: ROOT,
                name: "".into(),
            }],
            children: HashMap::new(),
            symlinks: Vec::new(),
        }
    }

    /// The `/`-joined path of node `id`, for messages.
    fn path_of(&self, mut id: usize) -> String {
        let mut names = Vec::new();
        while id != ROOT {
            names.push(&*self.nodes[id].name);
            id = self.nodes[id].parent;
        }
        names.reverse();
        names.join("/")
    }

    fn child(&self, parent: usize, name: &str) -> Option<usize> {
        // Boxing for the lookup costs an allocation; paths are short and this keeps one map.
        self.children.get(&(parent, Box::from(name))).copied()
    }

    fn add_child(
        &mut self,
        parent: usize,
        name: &str,
        kind: NodeKind,
    ) -> Result<usize, EntryProblem> {
        if self.nodes.len() >= MAX_NODES {
            return Err(EntryProblem::TooManyEntries { limit: MAX_NODES });
        }
        let id = self.nodes.len();
        if matches!(kind, NodeKind::Symlink { .. }) {
            self.symlinks.push(id);
        }
        self.nodes.push(Node {
            kind,
            parent,
            name: name.into(),
        });
        self.children.insert((parent, name.into()), id);
        Ok(id)
    }

    /// Looks `name` up in directory `dir`. A symlink or a regular file there is refused as a
    /// parent: the extractor would follow the symlink, or fail on the file half-way through.
    fn child_dir(&self, dir: usize, name: &str) -> Result<Option<usize>, EntryProblem> {
        let Some(child) = self.child(dir, name) else {
            return Ok(None);
        };
        match &self.nodes[child].kind {
            NodeKind::Dir => Ok(Some(child)),
            NodeKind::Symlink { .. } => Err(EntryProblem::ThroughSymlink {
                symlink: self.path_of(child),
            }),
            NodeKind::File { .. } => Err(EntryProblem::ParentNotDirectory {
                parent: self.path_of(child),
            }),
        }
    }

    /// Walks to the directory `components`, creating missing ones, as an extractor does for
    /// the parents of an entry.
    fn ensure_dir<S: AsRef<str>>(&mut self, components: &[S]) -> Result<usize, EntryProblem> {
        let mut current = ROOT;
        for name in components {
            current = match self.child_dir(current, name.as_ref())? {
                Some(child) => child,
                None => self.add_child(current, name.as_ref(), NodeKind::Dir)?,
            };
        }
        Ok(current)
    }

    /// Walks to the existing directory `components`, if there is one.
    fn find_dir<S: AsRef<str>>(&self, components: &[S]) -> Result<Option<usize>, EntryProblem> {
        let mut current = ROOT;
        for name in components {
            match self.child_dir(current, name.as_ref())? {
                Some(child) => current = child,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Records an entry at `components` (non-empty), refusing the combinations that could
    /// redirect writes: anything over a symlink, a symlink over anything, or a change between
    /// file and directory. A new symlink's target is checked against the tree as it stands;
    /// [`Tree::check_all_symlinks`] repeats the check once the tree is complete.
    pub(crate) fn insert<S: AsRef<str>>(
        &mut self,
        components: &[S],
        kind: NodeKind,
    ) -> Result<Inserted, EntryProblem> {
        let Some((last, parents)) = components.split_last() else {
            return Err(EntryProblem::EmptyPath);
        };
        let parent = self.ensure_dir(parents)?;
        let existing = self.child(parent, last.as_ref());
        let inserted = match existing {
            None => {
                let id = self.add_child(parent, last.as_ref(), kind)?;
                if let NodeKind::Symlink { .. } = self.nodes[id].kind {
                    self.check_symlink(id)?;
                }
                Inserted::New
            }
            Some(id) => match (&self.nodes[id].kind, &kind) {
                (NodeKind::Dir, NodeKind::Dir) => Inserted::ExistingDir,
                (NodeKind::File { .. }, NodeKind::File { .. }) => {
                    self.nodes[id].kind = kind;
                    Inserted::ReplacedFile
                }
                (existing, new) => {
                    return Err(EntryProblem::Conflict {
                        existing: existing.describe(),
                        new: new.describe(),
                    })
                }
            },
        };
        Ok(inserted)
    }

    /// Finds the regular file a hard link named `link` points at: `target` must name a
    /// regular file already in the tree, reached through directories only.
    pub(crate) fn hard_link_source(
        &self,
        link: &[String],
        target: &[u8],
    ) -> Result<(Vec<String>, bool, u64), EntryProblem> {
        let lossy = String::from_utf8_lossy(target).into_owned();
        let refuse = |why| EntryProblem::HardLinkTarget {
            target: lossy.clone(),
            why,
        };
        if target.is_empty() {
            return Err(EntryProblem::EmptyLinkTarget);
        }
        let components = match archive_path(target) {
            Ok(components) => components,
            Err(EntryProblem::AbsolutePath) => {
                return Err(EntryProblem::AbsoluteLinkTarget { target: lossy })
            }
            Err(EntryProblem::ParentComponent) => return Err(refuse("has a `..` component")),
            Err(_) => return Err(refuse("is not a valid path")),
        };
        if components.as_slice() == link {
            return Err(refuse("is the link itself"));
        }
        let Some((last, parents)) = components.split_last() else {
            return Err(refuse("names the package root"));
        };
        let parent = match self.find_dir(parents) {
            Ok(Some(parent)) => parent,
            Ok(None) => return Err(refuse("does not exist earlier in the archive")),
            Err(EntryProblem::ThroughSymlink { .. }) => {
                return Err(refuse("passes through a symlink"))
            }
            Err(_) => return Err(refuse("is not a regular file earlier in the archive")),
        };
        match self.child(parent, last) {
            Some(id) => match self.nodes[id].kind {
                NodeKind::File { executable, size } => Ok((components, executable, size)),
                _ => Err(refuse("is not a regular file")),
            },
            None => Err(refuse("does not exist earlier in the archive")),
        }
    }

    /// Checks that symlink `id` cannot lead outside the root.
    ///
    /// The target is resolved from the link's directory. `..` may not climb above the root,
    /// and no component but the last may be a symlink: the kernel resolves `..` after
    /// following a link (`d -> .` then `e -> d/..` lands above the root although both look
    /// harmless on paper), so walking through a link would make the lexical check meaningless.
    /// A last component that is a symlink is fine: that link is checked the same way.
    fn check_symlink(&self, id: usize) -> Result<(), EntryProblem> {
        let NodeKind::Symlink { target } = &self.nodes[id].kind else {
            return Ok(());
        };
        // Directories from the root down to the link's parent; `None` stands for a path that
        // does not exist in the archive (resolving there fails, which is harmless).
        let mut stack: Vec<Option<usize>> = Vec::new();
        let mut dir = self.nodes[id].parent;
        loop {
            stack.push(Some(dir));
            if dir == ROOT {
                break;
            }
            dir = self.nodes[dir].parent;
        }
        stack.reverse();

        let components: Vec<&str> = target
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for (index, component) in components.iter().enumerate() {
            if *component == ".." {
                if stack.len() <= 1 {
                    return Err(EntryProblem::LinkEscapes {
                        target: target.clone(),
                    });
                }
                stack.pop();
                continue;
            }
            let next = match stack.last().copied().flatten() {
                Some(dir) if self.nodes[dir].kind == NodeKind::Dir => self.child(dir, component),
                _ => None,
            };
            if let Some(next) = next {
                if matches!(self.nodes[next].kind, NodeKind::Symlink { .. })
                    && index + 1 != components.len()
                {
                    return Err(EntryProblem::LinkThroughSymlink {
                        target: target.clone(),
                        symlink: self.path_of(next),
                    });
                }
            }
            stack.push(next);
        }
        Ok(())
    }

    /// Re-checks every symlink against the complete tree, since a link created later can
    /// change where an earlier target leads. Returns the offending link's path on failure.
    pub(crate) fn check_all_symlinks(&self) -> Result<(), (String, EntryProblem)> {
        for &id in &self.symlinks {
            self.check_symlink(id)
                .map_err(|problem| (self.path_of(id), problem))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(tree: &mut Tree, path: &str, target: &str) -> Result<Inserted, EntryProblem> {
        let components = archive_path(path.as_bytes()).unwrap();
        tree.insert(
            &components,
            NodeKind::Symlink {
                target: target.to_string(),
            },
        )
    }

    #[test]
    fn lexical_escapes_are_refused() {
        let mut tree = Tree::new();
        assert!(link(&mut tree, "a/b", "../c").is_ok());
        assert!(matches!(
            link(&mut tree, "a/c", "../../c"),
            Err(EntryProblem::LinkEscapes { .. })
        ));
        assert!(matches!(
            link(&mut tree, "x", "y/../.."),
            Err(EntryProblem::LinkEscapes { .. })
        ));
    }

    #[test]
    fn dotdot_after_a_symlink_is_caught_even_when_the_symlink_comes_later() {
        let mut tree = Tree::new();
        link(&mut tree, "e", "d/..").unwrap();
        link(&mut tree, "d", ".").unwrap();
        let (path, problem) = tree.check_all_symlinks().unwrap_err();
        assert_eq!(path, "e");
        assert!(matches!(problem, EntryProblem::LinkThroughSymlink { .. }));
    }

    #[test]
    fn links_to_links_are_fine() {
        let mut tree = Tree::new();
        link(&mut tree, "a", "b").unwrap();
        link(&mut tree, "b", "c").unwrap();
        link(&mut tree, "dir/x", "../a").unwrap();
        tree.check_all_symlinks().unwrap();
    }

    #[test]
    fn strict_paths() {
        assert_eq!(package_path("a/b").unwrap(), ["a", "b"]);
        for (bad, problem) in [
            ("", EntryProblem::EmptyPath),
            ("/a", EntryProblem::AbsolutePath),
            ("a//b", EntryProblem::EmptyComponent),
            ("a/", EntryProblem::EmptyComponent),
            ("./a", EntryProblem::CurrentComponent),
            ("a/../b", EntryProblem::ParentComponent),
            ("a\\b", EntryProblem::ForbiddenCharacter('\\')),
            ("C:/x", EntryProblem::DrivePath),
        ] {
            assert_eq!(package_path(bad).unwrap_err(), problem, "{bad:?}");
        }
    }
}
